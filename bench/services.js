#!/usr/bin/env node
// What a Node service sees: the event-loop delay while the default language model trains, with
// train() on the main thread and with trainAsync() in a worker; and streaming throughput with many
// concurrent sessions over one model. Writes bench/results/services.md.
//   node bench/services.js [--steps 300] [--no-write]
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { monitorEventLoopDelay } = require('node:perf_hooks');
const { train, trainAsync, LanguageModel, LanguageModelSession } = require('..');

const args = process.argv.slice(2);
const steps = Number(args[args.indexOf('--steps') + 1]) || 300;
const write = !args.includes('--no-write');
const options = { steps, evalEvery: steps, evalTokens: 20000, arms: ['wn'], out: '' };

async function delayDuring(run) {
  const h = monitorEventLoopDelay({ resolution: 10 });
  // A timer as a service would have one: it can only fire when the loop is free.
  let ticks = 0;
  const timer = setInterval(() => ticks++, 10);
  h.enable();
  const start = Date.now();
  await run();
  const seconds = (Date.now() - start) / 1000;
  h.disable();
  clearInterval(timer);
  // A loop that never turned records no sample: then it was blocked for the whole run.
  const blocked = h.count === 0;
  return { seconds, maxMs: blocked ? seconds * 1000 : h.max / 1e6, p99Ms: blocked ? seconds * 1000 : h.percentile(99) / 1e6, ticks,
    expectedTicks: Math.floor(seconds * 100) };
}

async function main() {
  const sync = await delayDuring(async () => { train(options); });
  const worker = await delayDuring(() => trainAsync(options));

  // Streaming: S sessions, each fed one token at a time, all over one 2x128 model.
  const lm = new LanguageModel({ vocabSize: 86, embeddingSize: 128, hiddenSize: 128, layers: 2, norm: true, seed: 1 });
  const streaming = [];
  for (const sessions of [1, 16, 64]) {
    const all = Array.from({ length: sessions }, () => new LanguageModelSession(lm));
    const tokens = 200;
    const start = process.hrtime.bigint();
    for (let t = 0; t < tokens; t++) for (const s of all) s.next([t % 86]);
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    const batched = new LanguageModelSession(lm, sessions); // the same streams as one batch
    const b0 = process.hrtime.bigint();
    for (let t = 0; t < tokens; t++) batched.next(new Array(sessions).fill(t % 86));
    const batchedMs = Number(process.hrtime.bigint() - b0) / 1e6;
    streaming.push({ sessions, tokensPerSecond: (sessions * tokens) / (ms / 1000), batchedTokensPerSecond: (sessions * tokens) / (batchedMs / 1000) });
  }

  const row = (name, r) => `| ${name} | ${r.seconds.toFixed(1)} s | ${r.maxMs.toFixed(1)} ms | ${r.p99Ms.toFixed(1)} ms | ${r.ticks} of ${r.expectedTicks} |`;
  const md = `# wnlstm services benchmark\n\nCommand: \`node bench/services.js --steps ${steps}\`. Date: ${new Date().toISOString().slice(0, 10)}. ` +
    `Machine: ${os.cpus()[0].model}, ${os.cpus().length} cores.\n\n` +
    `Event-loop delay while the default model (Brown, characters, 2x128, batch 50 x 50 steps) trains ${steps} steps ` +
    `(perf_hooks.monitorEventLoopDelay, and a 10 ms interval timer):\n\n` +
    `| how | time | max delay | p99 delay | 10 ms timer fired |\n|---|---|---|---|---|\n` +
    `${row('train() on the main thread', sync)}\n${row('trainAsync() in a worker thread', worker)}\n\n` +
    `Streaming inference, next-token probabilities from a 2x128 weight-norm char model, 200 tokens per stream:\n\n` +
    `| streams | separate sessions (tokens/s) | one session, streams as a batch (tokens/s) |\n|---|---|---|\n` +
    streaming.map((s) => `| ${s.sessions} | ${s.tokensPerSecond.toFixed(0)} | ${s.batchedTokensPerSecond.toFixed(0)} |`).join('\n') + '\n';
  console.log(md);
  if (write) fs.writeFileSync(path.join(__dirname, 'results', 'services.md'), md);
}

main().catch((err) => { console.error(err); process.exit(1); });
