// The command line: a table of bad invocations, each of which must fail with one clear line on stderr
// and a non-zero exit (2 for a bad command line, 1 for a failure while running), and the good paths:
// help, a tiny training run, sampling from its checkpoint, resuming it.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { saveCheckpoint, loadCheckpoint } from '../lib/core/checkpoint';
import { progressPrinter } from '../lib/lm/cli';

const bin = path.join(__dirname, '..', 'bin', 'wnlstm.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wnlstm-cli-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const wnlstm = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { cwd: tmp, encoding: 'utf8', timeout: 120000 });

const corpus = path.join(tmp, 'corpus.txt');
fs.writeFileSync(corpus, Array.from({ length: 300 }, (_, i) => `a line of text number ${i % 11}`).join('\n'));
const small = path.join(tmp, 'small.txt');
fs.writeFileSync(small, Array.from({ length: 30 }, (_, i) => `line ${i}`).join('\n'));
const tiny = ['--corpus', corpus, '--layers', '1', '--hidden', '16', '--embedding', '8', '--bptt', '10', '--batch', '4', '--eval-every', '10', '--eval-tokens', '300'];

t.test('a tiny run, then sampling and resuming from its checkpoint', async (t) => {
  const r = wnlstm('train', ...tiny, '--steps', '20', '--arms', 'wn', '--checkpoint', 'ck/m', '--out', 'out');
  t.equal(r.status, 0, `trains${r.status ? `: ${r.stderr}` : ''}`);
  t.ok(fs.existsSync(path.join(tmp, 'out', 'metrics.json')) && fs.existsSync(path.join(tmp, 'out', 'loss.svg')), 'writes metrics.json and loss.svg to --out');
  t.match(r.stderr, /\[wn\] step 10\/20 {2}train \d\.\d{3} \(mean since the last evaluation\) {2}valid \d\.\d{3}/, 'progress lines label the mean training loss');
  const s = wnlstm('sample', '--checkpoint', 'ck/m.wn.ckpt', '--length', '40', '--prefix', 'a line', '--seed', '3', '--backend', 'cpu');
  t.equal(s.status, 0, `samples${s.status ? `: ${s.stderr}` : ''}`);
  t.ok(s.stdout.startsWith('a line') && s.stdout.length > 40, 'prints the prefix and the sampled text');
  t.equal(wnlstm('sample', '--checkpoint', 'ck/m.wn.ckpt', '--length', '40', '--prefix', 'a line', '--seed', '3').stdout, s.stdout, 'a seed reproduces a sample');
  const resumed = wnlstm('train', '--resume', 'ck/m.wn.ckpt', '--steps', '30', '--out', 'out2');
  t.equal(resumed.status, 0, `resumes${resumed.status ? `: ${resumed.stderr}` : ''}`);
  t.equal(JSON.parse(fs.readFileSync(path.join(tmp, 'out2', 'metrics.json'), 'utf8')).arms[0].curve.at(-1).step, 30, 'to step 30');
  const noOut = wnlstm('train', ...tiny, '--steps', '10', '--arms', 'plain', '--seed', String(2 ** 32 - 1));
  t.equal(noOut.status, 0);
  const runs = fs.readdirSync(path.join(tmp, 'runs'));
  t.ok(runs.length === 1 && /^train-\d{8}-\d{6}$/.test(runs[0]), `without --out, a new folder under runs/ (${runs.join(', ')})`);
});

t.test('help', async (t) => {
  for (const args of [['help'], [], ['--help']]) {
    const r = wnlstm(...args);
    t.equal(r.status, 0, `wnlstm ${args.join(' ')}: exit 0`);
    t.match(r.stdout, /wnlstm train \[options\]/);
  }
  for (const args of [['train', '--help'], ['help', 'train'], ['train', '-h']]) {
    const r = wnlstm(...args);
    t.equal(r.status, 0, `wnlstm ${args.join(' ')}: exit 0`);
    t.match(r.stdout, /--vocab-size 10000 +word level/, 'lists the options with defaults');
  }
  t.match(wnlstm('sample', '--help').stdout, /--temperature 0.8/);
});

t.test('bad invocations: one line, a non-zero exit, nothing run', async (t) => {
  // A checkpoint whose meta lacks the training position, with a valid checksum.
  const broken = path.join(tmp, 'broken.ckpt');
  fs.mkdirSync(path.join(tmp, 'ck2'));
  spawnSync(process.execPath, [bin, 'train', ...tiny, '--steps', '10', '--arms', 'wn', '--checkpoint', 'ck2/m', '--out', ''], { cwd: tmp });
  const good = loadCheckpoint(path.join(tmp, 'ck2', 'm.wn.ckpt'));
  delete (good.meta as Record<string, unknown>).step;
  saveCheckpoint(broken, good);
  const table: [string[], number, RegExp][] = [
    [['sample', '--length', '-1', '--checkpoint', broken], 2, /--length must be an integer in \[1, 1000000\], got -1/],
    [['sample', '--checkpoint', broken], 1, /training position .* invalid .*ERR_WNLSTM_CHECKPOINT/],
    [['train', '--resume', broken], 1, /ERR_WNLSTM_CHECKPOINT/],
    [['sample', '--checkpoint', 'missing.ckpt'], 1, /cannot read checkpoint missing\.ckpt.*ERR_WNLSTM_CHECKPOINT/],
    [['sample'], 2, /sample needs --checkpoint FILE/],
    [['sample', '--checkpoint', broken, '--temperature', '0'], 2, /--temperature must be a number in \(0, 100\]/],
    [['sample', '--checkpoint', broken, '--top-k', '5'], 2, /Unknown option '--top-k'/],
    [['train', '--out'], 2, /--out <value>' argument missing/],
    [['train', '--checkpoint'], 2, /--checkpoint <value>' argument missing/],
    [['train', '--out', '--steps', '5'], 2, /--out.*ambiguous/],
    [['train', '--level', 'foo'], 2, /--level must be one of char, word, got "foo"/],
    [['train', '--vocab-size', '0'], 2, /--vocab-size must be an integer in \[2, 1000000\]/],
    [['train', '--resume', broken, '--lr', '0.1'], 2, /--lr cannot be changed/],
    [['train', '--resume', broken, '--hidden', '64', '--steps', '5'], 2, /--hidden cannot be changed/],
    [['train', '--steps', 'many'], 2, /--steps needs a number, got 'many'/],
    [['train', '--steps', '1.5'], 2, /--steps must be an integer/],
    [['train', '--lr', '-1'], 2, /--lr must be a number in \(0, 1000\], got -1/],
    [['train', '--dropout', '1'], 2, /--dropout must be a number in \[0, 1\)/],
    [['train', '--arms', 'both'], 2, /--arms must be/],
    [['train', '--optimizer', 'adamax'], 2, /--optimizer must be one of sgd, momentum, adam, adamw, rmsprop, adagrad/],
    [['train', '--stepz', '5'], 2, /Unknown option '--stepz'/],
    [['train', 'extra'], 2, /Unexpected argument 'extra'/],
    [['train', '--data-init=yes'], 2, /--data-init' does not take an argument/],
    [['train', '--hidden', '16384', '--layers', '64'], 1, /too many.*ERR_WNLSTM_SIZE/],
    [['train', '--corpus', small, '--steps', '5'], 1, /the training text has \d+ tokens: too few for batch 50 x \(bptt 50 \+ 1\)/],
    [['train', '--corpus', path.join(tmp, 'nope.txt')], 1, /nope\.txt/],
    [['trian'], 2, /unknown command 'trian' \(did you mean 'train'\?\)/],
    [['help', 'bogus'], 2, /unknown command 'bogus'/],
    [['help', 'toString'], 2, /unknown command 'toString'/],
    [['sample', '--checkpoint', broken, '--backend', 'gpu'], 2, /--backend must be one of auto, cpu, cuda/],
  ];
  for (const [args, code, message] of table) {
    const r = wnlstm(...args);
    const lines = r.stderr.trim().split('\n');
    t.ok(r.status === code && lines.length === 1 && lines[0].startsWith('wnlstm: ') && message.test(lines[0]) && r.stdout === '',
      `wnlstm ${args.join(' ').replace(tmp, '$TMP')}: exit ${r.status}, ${JSON.stringify(r.stderr.trim().replace(tmp, '$TMP'))}`);
  }
  t.notOk(fs.existsSync(path.join(tmp, 'true')) || fs.existsSync(path.join(tmp, '--steps')), 'no folder named after a missing value');
});

t.test('--seeds: each run labelled by its seed, then each arm\'s mean and spread and the gap', async (t) => {
  const r = wnlstm('train', ...tiny, '--steps', '10', '--seeds', '2', '--seed', '3', '--out', 'seeds');
  t.equal(r.status, 0, `trains${r.status ? `: ${r.stderr}` : ''}`);
  t.match(r.stderr, /\[plain seed 4\] step 10\/10/, 'progress names the seed');
  t.match(r.stdout, /weight norm, seed 3: .*\nplain LSTM , seed 3: .*\nweight norm, seed 4: .*\nplain LSTM , seed 4: /, 'one line per run');
  t.match(r.stdout, /weight norm over seeds 3, 4: final validation \d\.\d{4} ± \d\.\d{4} \(min \d\.\d{4}, max \d\.\d{4}\), test /, 'mean ± sample std (min, max)');
  t.match(r.stdout, /gap, plain - weight norm, seed by seed: validation -?\d\.\d{4} ± /, 'the gap');
});

t.test('progress on a terminal shows the step loss and the last validation loss, labelled', async (t) => {
  let out = '';
  const print = progressPrinter({ isTTY: true, write: (s: string) => (out += s) });
  print({ arm: 'wn', seed: 1, seeds: 1, step: 250, steps: 500, loss: 2.5, trainLoss: 2.7, validLoss: 2.6, seconds: 10 });
  t.match(out, /step loss 2\.500 {2}valid 2\.600 \(step 250\)/);
  out = '';
  await new Promise((r) => setTimeout(r, 250)); // the bar redraws at most every 200 ms
  print({ arm: 'wn', seed: 1, seeds: 1, step: 251, steps: 500, loss: 2.4, seconds: 10.1 });
  t.match(out, /step loss 2\.400 {2}valid 2\.600 \(step 250\)/, 'the validation loss stays until the next evaluation');
});
