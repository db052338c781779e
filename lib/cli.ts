// `wnlstm train` (the main job) and `wnlstm sample`. Options are TrainOptions' names in kebab case.
import { wnlstmError, isWnlstmError } from './errors';
import { Random } from './init';
import { Arm, DEFAULTS, Progress, readCheckpoint, train, TrainOptions } from './train';

const HELP = `wnlstm: weight-normalized LSTMs for Node.js

  wnlstm train [options]     train a weight-norm and a plain LSTM language model (defaults: Brown corpus,
                             characters, 2x128, RMSProp 2e-3, clip 5, 10000 steps each; ~10 min on 2 cores)
  wnlstm sample --checkpoint FILE [--length 300] [--temperature 0.8] [--prefix TEXT] [--seed 1]

train options (defaults in brackets):
${Object.entries(DEFAULTS).map(([k, v]) => `  --${kebab(k)} ${JSON.stringify(v)}`).join('\n')}
  --arms takes wn, plain or wn,plain; --data-init and other booleans need no value.
`;

function kebab(s: string): string { return s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`); }

export function parseArgs(argv: string[]): { command: string; options: Record<string, string | boolean> } {
  const [command = 'help', ...rest] = argv;
  const options: Record<string, string | boolean> = {};
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (!a.startsWith('--')) throw wnlstmError('ERR_WNLSTM_CONFIG', `unexpected argument '${a}'`);
    const key = a.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (rest[i + 1] !== undefined && !rest[i + 1].startsWith('--')) options[key] = rest[++i];
    else options[key] = true;
  }
  return { command, options };
}

/** Command-line strings to TrainOptions, typed by the defaults. */
export function trainOptions(raw: Record<string, string | boolean>): Partial<TrainOptions> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(raw)) {
    if (!(key in DEFAULTS)) throw wnlstmError('ERR_WNLSTM_CONFIG', `unknown option --${kebab(key)} (see wnlstm help)`);
    const d = DEFAULTS[key as keyof TrainOptions];
    if (typeof d === 'number') {
      const n = Number(value);
      if (value === true || !Number.isFinite(n)) throw wnlstmError('ERR_WNLSTM_CONFIG', `--${kebab(key)} needs a number`);
      out[key] = n;
    } else if (typeof d === 'boolean') out[key] = value === true || value === 'true';
    else if (Array.isArray(d)) {
      const arms = String(value).split(',');
      if (!arms.every((a) => a === 'wn' || a === 'plain')) throw wnlstmError('ERR_WNLSTM_CONFIG', '--arms takes wn, plain or wn,plain');
      out[key] = arms as Arm[];
    } else out[key] = String(value);
  }
  return out as Partial<TrainOptions>;
}

function progressPrinter(): (p: Progress) => void {
  const tty = process.stderr.isTTY;
  let last = 0;
  return (p) => {
    const now = Date.now();
    if (p.validLoss !== undefined && !tty) {
      console.error(`[${p.arm}] step ${p.step}/${p.steps}  train ${p.loss.toFixed(3)}  valid ${p.validLoss.toFixed(3)}  ${p.seconds.toFixed(0)} s`);
    }
    if (!tty || (now - last < 200 && p.step !== p.steps)) return;
    last = now;
    const width = 30, done = Math.round((width * p.step) / p.steps);
    const eta = p.step ? (p.seconds / p.step) * (p.steps - p.step) : 0;
    process.stderr.write(`\r[${p.arm.padEnd(5)}] ${'█'.repeat(done)}${'░'.repeat(width - done)} ${p.step}/${p.steps}  loss ${p.loss.toFixed(3)}  ` +
      `${p.seconds.toFixed(0)} s, ~${eta.toFixed(0)} s left ` + (p.step === p.steps ? '\n' : ''));
  };
}

export function main(argv = process.argv.slice(2)): number {
  try {
    const { command, options } = parseArgs(argv);
    if (command === 'train') {
      const o = trainOptions(options);
      const r = train(o, progressPrinter());
      for (const a of r.arms) {
        const f = a.final;
        console.log(`${a.arm === 'wn' ? 'weight norm' : 'plain LSTM '}: ${a.diverged ? `diverged (${a.diverged}); ` : ''}` +
          `best validation loss ${a.bestValidLoss.toFixed(4)} at step ${a.bestStep}; final validation ${f.validLoss.toFixed(4)} ` +
          `(perplexity ${f.validPerplexity.toFixed(3)}, ${f.validBitsPerToken.toFixed(3)} bits), test ${f.testLoss.toFixed(4)}; ${a.seconds.toFixed(0)} s`);
      }
      if (r.options.out) console.log(`wrote ${r.options.out}/metrics.json and ${r.options.out}/loss.svg`);
      return 0;
    }
    if (command === 'sample') {
      if (typeof options.checkpoint !== 'string') throw wnlstmError('ERR_WNLSTM_CONFIG', 'sample needs --checkpoint FILE');
      const { lm, vocab } = readCheckpoint(options.checkpoint);
      const prefix = vocab.encode(typeof options.prefix === 'string' ? options.prefix : 'The ').subarray(0, -1);
      const ids = lm.sample(prefix.length ? prefix : Int32Array.of(vocab.id('\n')), Number(options.length ?? 300),
        { temperature: Number(options.temperature ?? 0.8), rng: new Random(Number(options.seed ?? 1)) });
      console.log(vocab.decode(prefix) + (vocab.level === 'word' ? ' ' : '') + vocab.decode(ids));
      return 0;
    }
    console.log(HELP);
    return command === 'help' || command === '--help' ? 0 : 1;
  } catch (err) {
    console.error(isWnlstmError(err) ? `wnlstm: ${err.message} (${err.code})` : err);
    return 1;
  }
}
