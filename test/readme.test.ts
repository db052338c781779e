// Every js example of the README runs as written, from the repository root, where require('wnlstm')
// resolves to this package through its `exports` (as it would in a user's project). The HTTP service
// example is a server: test/service-example.test.ts drives it.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const root = path.join(__dirname, '..');
const examples = [...fs.readFileSync(path.join(root, 'README.md'), 'utf8').matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
const run = (code: string) => spawnSync(process.execPath, ['-e', code], { cwd: root, encoding: 'utf8', timeout: 60000 });

t.test('the README has its examples', async (t) => {
  t.equal(examples.length, 5, 'five js examples: a cell, a first model, tensors, training, an HTTP service');
  t.ok(examples.every((code) => code.includes("require('wnlstm')")), 'each requires the package by name');
});

t.test('the cell example', async (t) => {
  const r = run(examples.find((code) => code.includes('cell.backward(outputs)'))!);
  t.equal(r.status, 0, `runs${r.status ? `: ${r.stderr}` : ''}`);
  t.match(r.stdout.replace(/\s+/g, ' '), /'kernel', 'bias', 'norm_0', 'norm_1', 'w_i_diag', 'w_f_diag', 'w_o_diag'/, 'prints the gradient names');
});

t.test('the first model learns its rule', async (t) => {
  const r = run(examples.find((code) => code.includes('new SequenceModel('))!);
  t.equal(r.status, 0, `runs${r.status ? `: ${r.stderr}` : ''}`);
  const accuracy = Number(r.stdout.split('\n')[0]);
  t.ok(accuracy >= 0.9, `validation accuracy ${accuracy} >= 0.9`);
  t.match(r.stdout, /loss: [\d.e-]+,\s+accuracy: [\d.]+/, 'the loaded model evaluates');
});

t.test('the tensor example', async (t) => {
  const r = run(examples.find((code) => code.includes('tensor('))!);
  t.equal(r.status, 0, `runs${r.status ? `: ${r.stderr}` : ''}`);
  t.match(r.stdout.replace(/\s+/g, ' '), /^\[ 5, 2, 8 \] \[ \[ (-?\d\.\d+(e-\d+)?,? ){8}\], \[ (-?\d\.\d+(e-\d+)?,? ){8}\] \]/, 'prints the shape and h as 2 x 8 numbers');
});

t.test('the training example learns', async (t) => {
  const r = run(examples.find((code) => code.includes('opt.step()'))!);
  t.equal(r.status, 0, `runs${r.status ? `: ${r.stderr}` : ''}`);
  const mean = Number(/mean output (\S+)/.exec(r.stdout)?.[1]);
  t.ok(Math.abs(mean - 0.5) < 0.05, `mean output ${mean} within 0.05 of the target 0.5`);
});

