#!/usr/bin/env python3
"""PyTorch's nn.LSTM (cuDNN) on the GPU machine, for bench/cuda.js, which runs it in the same session.

  python3 bench/cudnn_lstm.py '[{"B": 64, "T": 100, "I": 512, "H": 512}]' REPEATS

Times forward (no grad) and forward+backward of one float32 layer: plain with cuDNN's TF32 off and on, and
with weight norm on both weight matrices (torch.nn.utils.weight_norm, dim 0: one g per gate row, TF's
per-column norm of its kernel) with TF32 off; with CUDA events after 3 warm-up runs, fresh random inputs
before every run. Also measures the device's float32 and TF32 matmul ceilings. Prints one JSON object.
"""
import json
import statistics
import sys
import warnings

import torch


# The hook form recomputes the weights at every call, as the parametrization does; newer PyTorch may drop it.
weight_norm = getattr(torch.nn.utils, "weight_norm", None) or torch.nn.utils.parametrizations.weight_norm


def set_tf32(enabled):
    """TF32 in cuDNN's RNNs and in matmuls: PyTorch 2.9's settings where they exist (it deprecates the old
    ones, and mixing the two is an error), else allow_tf32. Returns the setting as PyTorch reads it back."""
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None and hasattr(rnn, "fp32_precision"):
        mode = "tf32" if enabled else "ieee"
        rnn.fp32_precision = mode
        torch.backends.cuda.matmul.fp32_precision = mode
        return f"cudnn.rnn.fp32_precision={rnn.fp32_precision}"
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    return f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"


def timed(fn, prepare, repeats):
    for _ in range(3):
        prepare()
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        prepare()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def matmul_ceiling(tf32, repeats):
    """TFLOP/s of an 8192^3 float32 matmul (TF32 tensor cores when allowed): the device's measured ceiling."""
    set_tf32(tf32)
    n = 8192
    a, b = torch.randn(n, n, device="cuda"), torch.randn(n, n, device="cuda")
    ms = timed(lambda: torch.matmul(a, b), lambda: None, repeats)
    set_tf32(False)
    return 2 * n ** 3 / ms / 1e9


def main():
    shapes = json.loads(sys.argv[1])
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    warnings.simplefilter("ignore")  # weight_norm makes cuDNN warn about non-contiguous weights
    device = torch.device("cuda")
    results = []
    # (name, weight norm, TF32 allowed in cuDNN)
    variants = [("PyTorch nn.LSTM (cuDNN, fp32)", False, False), ("PyTorch nn.LSTM (cuDNN, TF32)", False, True),
                ("PyTorch weight_norm + cuDNN (fp32)", True, False)]
    for s in shapes:
        B, T, I, H = s["B"], s["T"], s["I"], s["H"]
        for name, norm, tf32 in variants:
            setting = set_tf32(tf32)
            torch.manual_seed(1)
            lstm = torch.nn.LSTM(I, H).to(device)
            if norm:
                for weight in ("weight_ih_l0", "weight_hh_l0"):
                    lstm = weight_norm(lstm, name=weight, dim=0)
            # The input's gradient too, as wnlstm's backward computes it.
            x = torch.empty(T, B, I, device=device, requires_grad=True)
            dy = torch.empty(T, B, H, device=device)

            def prepare():
                with torch.no_grad():
                    x.uniform_(-1, 1)
                    dy.uniform_(-1, 1)
                x.grad = None

            def forward():
                with torch.no_grad():
                    lstm(x)

            def forward_backward():
                lstm.zero_grad(set_to_none=True)
                y, _ = lstm(x)
                y.backward(dy)

            results.append({**s, "impl": name, "pass": "forward", "ms": timed(forward, prepare, repeats), "setting": setting})
            results.append({**s, "impl": name, "pass": "forward+backward", "ms": timed(forward_backward, prepare, repeats),
                            "setting": setting})
            del lstm, x, dy
    print(json.dumps({
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(),
        "ceilings": {"fp32": matmul_ceiling(False, repeats), "tf32": matmul_ceiling(True, repeats)},
        "results": results,
    }))


if __name__ == "__main__":
    main()
