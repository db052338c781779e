#!/usr/bin/env python3
"""PyTorch's CPU nn.LSTM on wnlstm's default language-model training step, for bench/lm.js.

  /usr/bin/python3 bench/torch_lm.py STREAMS_FILE VOCAB THREADS ROUNDS STEPS_PER_ROUND

STREAMS_FILE holds the batchified training text that bench/lm.js wrote (int32, time-major [L, 50]). The
model is the same: embedding 128, 2 x 128 LSTM, dense to the vocabulary, uniform +-0.08 init, the
forget-gate bias at 1 (TF's forget_bias), RMSprop lr 2e-3 alpha 0.95, global-norm clipping at 5, BPTT 50
with the state carried. Needs Debian's python3-torch with libopenblas0-pthread (else a reference BLAS
runs, 20x slower). Prints one JSON line: { stepsPerSecond: [per round], losses }.
"""
import json
import sys
import time

import numpy as np
import torch

streams_file, vocab, threads, rounds, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(1)
B, T, E, H = 50, 50, 128, 128
streams = torch.from_numpy(np.fromfile(streams_file, dtype=np.int32).astype(np.int64)).view(-1, B)


class LM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, E)
        self.lstm = torch.nn.LSTM(E, H, num_layers=2)
        self.dense = torch.nn.Linear(H, vocab)
        for p in self.parameters():
            torch.nn.init.uniform_(p, -0.08, 0.08)
        with torch.no_grad():
            for layer in range(2):
                getattr(self.lstm, f'bias_ih_l{layer}').zero_()
                getattr(self.lstm, f'bias_hh_l{layer}').zero_()
                getattr(self.lstm, f'bias_ih_l{layer}')[H:2 * H] = 1.0  # gate order i, f, g, o
            self.dense.bias.zero_()

    def forward(self, x, state):
        y, state = self.lstm(self.embedding(x), state)
        return self.dense(y), state


model = LM()
opt = torch.optim.RMSprop(model.parameters(), lr=2e-3, alpha=0.95)
windows = (streams.shape[0] - 1) // T
state = None
k = 0


def step():
    global state, k
    t0 = (k % windows) * T
    k += 1
    x, y = streams[t0:t0 + T], streams[t0 + 1:t0 + 1 + T]
    if state is not None:
        state = tuple(s.detach() for s in state)
    opt.zero_grad()
    logits, state = model(x, state)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    return loss.item()


losses = [step() for _ in range(10)]  # warm-up
rates = []
for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(steps):
        step()
    rates.append(steps / (time.perf_counter() - start))
print(json.dumps({'stepsPerSecond': rates, 'losses': losses, 'threads': threads, 'torch': torch.__version__}))
