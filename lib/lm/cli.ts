// `wnlstm train` (the main job), `wnlstm sample` and `wnlstm help`. Options are TrainOptions' names in
// kebab case; every value is checked (type, range, allowed values) before anything runs, and every
// failure is one line on stderr: exit code 2 for a bad command line, 1 for a failure while running.
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { isWnlstmError } from '../core/errors';
import { Random } from '../core/init';
import * as fs from 'node:fs';
import { BackendName } from '../nn/cell';
import { checkOption, checkValue, DEFAULTS, mergeResults, OptionSpec, Progress, readCheckpoint, refusedWithResume, RESUME_OPTIONS, Spread, train,
  TRAIN_OPTIONS, TrainOptions, TrainResult, writeReport } from './train';

const kebab = (s: string) => s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
const camel = (s: string) => s.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** A bad command line (exit code 2), as opposed to a failure while running (1). */
class UsageError extends Error {}
const usage = (message: string) => new UsageError(message);

const SAMPLE_OPTIONS: Record<string, OptionSpec & { help: string; default?: unknown }> = {
  checkpoint: { type: 'string', help: 'a checkpoint written by wnlstm train --checkpoint (required)' },
  length: { type: 'integer', min: 1, max: 1_000_000, default: 300, help: 'tokens to sample' },
  temperature: { type: 'number', min: 0, max: 100, minExclusive: true, default: 0.8, help: 'softmax temperature' },
  prefix: { type: 'string', default: 'The ', help: 'text to start from' },
  seed: { type: 'integer', min: 0, max: 2 ** 32 - 1, default: 1, help: 'seed of the sampling' },
  backend: { ...TRAIN_OPTIONS.backend, default: "the checkpoint's" },
};

function describe(spec: OptionSpec): string {
  switch (spec.type) {
    case 'integer': case 'number': return `${spec.type === 'integer' ? 'integer' : 'number'} in ` +
      `${'minExclusive' in spec && spec.minExclusive ? '(' : '['}${spec.min}, ${spec.max}${'maxExclusive' in spec && spec.maxExclusive ? ')' : ']'}`;
    case 'choice': return spec.values.join('|');
    case 'arms': return 'wn|plain|wn,plain';
    case 'boolean': return 'flag';
    case 'string': return 'text';
  }
}

function optionLines(specs: Record<string, OptionSpec & { help: string }>, defaults: Record<string, unknown>): string {
  return Object.entries(specs).map(([key, spec]) => {
    const d = defaults[key];
    const shown = spec.type === 'boolean' ? '' : ` ${Array.isArray(d) ? d.join(',') : d === '' ? "''" : String(d ?? '')}`;
    return `  --${kebab(key)}${shown}`.padEnd(30) + `${spec.help} (${describe(spec)})`;
  }).join('\n');
}

const HELP: Record<string, string> = {
  main: `wnlstm: weight-normalized LSTMs for Node.js

  wnlstm train [options]    train a weight-norm and a plain LSTM language model and compare them
  wnlstm merge DIR... --out DIR
                            one report from the reports of runs made apart (seeds in separate processes,
                            runs resumed in another session)
  wnlstm sample [options]   print text sampled from a checkpoint
  wnlstm help [command]     this text, or a command's options ('wnlstm train --help' too)
`,
  merge: `wnlstm merge DIR... --out DIR: reads the metrics.json that wnlstm train wrote in each DIR and writes one
metrics.json and loss.svg with all their runs and a summary over them (mean and spread per arm, the gap seed by
seed) to --out. The runs must share the corpus and every option but the seed, the arms and where they were
written; no run may come twice.
`,
  train: `wnlstm train [options]: trains each arm (weight norm, plain) in turn, printing progress, and writes
metrics.json and loss.svg to --out (default: a new folder runs/train-<date>-<time>).
Defaults: the Brown corpus, characters, 2 x 128 units, RMSProp 2e-3, clip 5, 10000 steps per arm
(about 6.5 min on 2 cores).

Options, with their defaults:
${optionLines(TRAIN_OPTIONS, { ...DEFAULTS, out: 'runs/train-<date>-<time>' } as Record<string, unknown>)}

With --resume FILE the run continues with the checkpoint's options: only ${RESUME_OPTIONS.slice(1).map((k) => `--${kebab(k)}`).join(', ')} may be given.
`,
  sample: `wnlstm sample --checkpoint FILE [options]: prints --length tokens sampled after --prefix.

Options, with their defaults:
${optionLines(SAMPLE_OPTIONS, Object.fromEntries(Object.entries(SAMPLE_OPTIONS).map(([k, s]) => [k, s.default])))}
`,
};

/** Parses `--name value` / `--name=value` against the specs; unknown options, missing values and
 * stray arguments are usage errors. Returns the values typed and checked. */
function parseOptions(command: string, args: string[], specs: Record<string, OptionSpec>, check: (key: string, value: unknown) => unknown) {
  const config = Object.fromEntries([
    ...Object.entries(specs).map(([key, spec]) => [kebab(key), { type: spec.type === 'boolean' ? 'boolean' : 'string' }]),
    ['help', { type: 'boolean', short: 'h' }],
  ]) as Record<string, { type: 'string' | 'boolean'; short?: string }>;
  // `--length -1` means the value -1 (parseArgs would take it for an option): the range check then says why not.
  args = args.flatMap((a, i) => (/^-[\d.]/.test(a) && /^--[^=]+$/.test(args[i - 1] ?? '') ? [] :
    /^--[^=]+$/.test(a) && /^-[\d.]/.test(args[i + 1] ?? '') ? [`${a}=${args[i + 1]}`] : [a]));
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args, options: config, strict: true, allowPositionals: false });
  } catch (err) {
    throw usage(`${command}: ${(err as Error).message.replace(/\s*\n\s*/g, ' ')}`);
  }
  const values: Record<string, unknown> = {};
  for (const [name, raw] of Object.entries(parsed.values)) {
    if (name === 'help') { values.help = raw; continue; }
    const key = camel(name), spec = specs[key];
    let value: unknown = raw;
    if (spec.type === 'integer' || spec.type === 'number') {
      value = typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
      if (Number.isNaN(value)) throw usage(`--${name} needs a number, got '${String(raw)}'`);
    } else if (spec.type === 'arms') {
      value = String(raw).split(',');
    }
    try {
      values[key] = check(key, value);
    } catch (err) {
      throw usage(`--${name} ${(err as Error).message.replace(/^.*? must be/, 'must be')}`);
    }
  }
  return values;
}

/** Progress on a terminal: a bar with the step's loss and the last validation loss; otherwise one line
 * per evaluation, with the mean training loss since the previous one. */
const label = (p: Progress) => (p.seeds > 1 ? `${p.arm} seed ${p.seed}` : p.arm);

export function progressPrinter(stream: { isTTY?: boolean; write(s: string): unknown } = process.stderr): (p: Progress) => void {
  const tty = stream.isTTY;
  let last = 0, valid = '';
  return (p) => {
    if (p.validLoss !== undefined) {
      valid = `valid ${p.validLoss.toFixed(3)} (step ${p.step})`;
      if (!tty) {
        stream.write(`[${label(p)}] step ${p.step}/${p.steps}  train ${p.trainLoss!.toFixed(3)} (mean since the last evaluation)  ` +
          `valid ${p.validLoss.toFixed(3)}  ${p.seconds.toFixed(0)} s\n`);
      }
    }
    const now = Date.now();
    if (!tty || (now - last < 200 && p.step !== p.steps)) return;
    last = now;
    const width = 30, done = Math.round((width * p.step) / p.steps);
    const eta = p.step ? (p.seconds / p.step) * (p.steps - p.step) : 0;
    stream.write(`\r[${label(p).padEnd(5)}] ${'█'.repeat(done)}${'░'.repeat(width - done)} ${p.step}/${p.steps}  ` +
      `step loss ${p.loss.toFixed(3)}  ${valid}  ${p.seconds.toFixed(0)} s, ~${eta.toFixed(0)} s left ` + (p.step === p.steps ? '\n' : ''));
    if (p.step === p.steps) valid = '';
  };
}

function runTrain(args: string[]): number {
  const values = parseOptions('train', args, TRAIN_OPTIONS, (k, v) => checkOption(k, v, 'option'));
  if (values.help) { console.log(HELP.train); return 0; }
  delete values.help;
  const options = values as Partial<TrainOptions>;
  if (options.resume) {
    const refused = refusedWithResume(Object.keys(options));
    if (refused.length) {
      throw usage(`--resume continues the checkpoint's run with its own options: ${refused.map((k) => `--${kebab(k)}`).join(', ')} ` +
        `cannot be changed (only ${RESUME_OPTIONS.slice(1).map((k) => `--${kebab(k)}`).join(', ')} can)`);
    }
  }
  if (options.out === undefined) { // a new folder: runs/train-<date>-<time>, or with -2, -3... if taken
    const stamp = path.join('runs', `train-${new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15)}`);
    options.out = stamp;
    for (let n = 2; fs.existsSync(options.out); n++) options.out = `${stamp}-${n}`;
  }
  printResult(train(options, progressPrinter()));
  return 0;
}

function runMerge(args: string[]): number {
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args, options: { out: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: true });
  } catch (err) {
    throw usage(`merge: ${(err as Error).message.replace(/\s*\n\s*/g, ' ')}`);
  }
  if (parsed.values.help) { console.log(HELP.merge); return 0; }
  const out = parsed.values.out as string | undefined;
  if (!out) throw usage('merge needs --out DIR');
  if (parsed.positionals.length < 2) throw usage('merge needs the folders of at least two reports');
  const results = parsed.positionals.map((dir) => {
    const file = path.join(dir, 'metrics.json');
    try {
      return JSON.parse(fs.readFileSync(file, 'utf8')) as TrainResult;
    } catch (err) {
      throw usage(`merge: cannot read ${file}: ${(err as Error).message}`);
    }
  });
  const r = mergeResults(results);
  r.options.out = out;
  writeReport(out, r);
  printResult(r);
  return 0;
}

function printResult(r: TrainResult): void {
  const name = (arm: string) => (arm === 'wn' ? 'weight norm' : 'plain LSTM ');
  for (const a of r.arms) {
    const f = a.final;
    console.log(`${name(a.arm)}${r.options.seeds > 1 ? `, seed ${a.seed}` : ''}: ${a.diverged ? `diverged (${a.diverged}); ` : ''}` +
      `best validation loss ${a.bestValidLoss.toFixed(4)} at step ${a.bestStep}; final validation ${f.validLoss.toFixed(4)} ` +
      `(perplexity ${f.validPerplexity.toFixed(3)}, ${f.validBitsPerToken.toFixed(3)} bits), test ${f.testLoss.toFixed(4)}; ${a.seconds.toFixed(0)} s`);
  }
  if (r.options.seeds > 1) {
    const show = (s: Spread) => `${s.mean.toFixed(4)} ± ${s.std.toFixed(4)} (min ${s.min.toFixed(4)}, max ${s.max.toFixed(4)})`;
    for (const a of r.summary.arms) {
      console.log(`${name(a.arm)} over seeds ${a.seeds.join(', ')}: final validation ${show(a.validLoss)}, test ${show(a.testLoss)}` +
        (a.diverged ? `; ${a.diverged} diverged` : ''));
    }
    if (r.summary.gap) console.log(`gap, plain - weight norm, seed by seed: validation ${show(r.summary.gap.validLoss)}, test ${show(r.summary.gap.testLoss)}`);
  }
  if (r.options.out) console.log(`wrote ${path.join(r.options.out, 'metrics.json')} and ${path.join(r.options.out, 'loss.svg')}`);
}

function runSample(args: string[]): number {
  const values = parseOptions('sample', args, SAMPLE_OPTIONS, (k, v) => checkValue(SAMPLE_OPTIONS[k], k, v));
  if (values.help) { console.log(HELP.sample); return 0; }
  const o = { ...Object.fromEntries(Object.entries(SAMPLE_OPTIONS).map(([k, s]) => [k, s.default])), ...values } as
    { checkpoint?: string; length: number; temperature: number; prefix: string; seed: number; backend?: BackendName };
  if (!o.checkpoint) throw usage('sample needs --checkpoint FILE (written by wnlstm train --checkpoint PREFIX)');
  const { lm, vocab } = readCheckpoint(o.checkpoint, { backend: values.backend as BackendName | undefined });
  try {
    const prefix = vocab.encode(o.prefix).subarray(0, -1);
    const ids = lm.sample(prefix.length ? prefix : Int32Array.of(vocab.id('\n')), o.length,
      { temperature: o.temperature, rng: new Random(o.seed) });
    console.log(vocab.decode(prefix) + (vocab.level === 'word' ? ' ' : '') + vocab.decode(ids));
  } finally {
    lm.dispose();
  }
  return 0;
}

/** Runs the command line; returns the exit code. */
export function main(argv = process.argv.slice(2)): number {
  const [command = 'help', ...rest] = argv;
  try {
    if (command === 'train') return runTrain(rest);
    if (command === 'merge') return runMerge(rest);
    if (command === 'sample') return runSample(rest);
    if (command === 'help' || command === '--help' || command === '-h') {
      const topic = rest[0];
      if (topic !== undefined && !(Object.hasOwn(HELP, topic) && topic !== 'main')) throw usage(`help: unknown command '${topic}' (commands: train, merge, sample, help)`);
      console.log(HELP[topic ?? 'main']);
      return 0;
    }
    const near = ['train', 'merge', 'sample', 'help'].find((c) => editDistance(c, command) <= 2);
    throw usage(`unknown command '${command}'${near ? ` (did you mean '${near}'?)` : ''}; the commands are train, merge, sample and help`);
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`wnlstm: ${err.message} (see wnlstm help${['train', 'merge', 'sample'].includes(command) ? ` ${command}` : ''})`);
      return 2;
    }
    console.error(isWnlstmError(err) ? `wnlstm: ${err.message} (${err.code})`
      : `wnlstm: internal error: ${(err as Error)?.message ?? String(err)} (please report it)`);
    return 1;
  }
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
  }
  return d[a.length][b.length];
}

