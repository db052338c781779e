// The README's example runs as written (with require('wnlstm') pointed at this checkout).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

t.test('README example', async (t) => {
  const root = path.join(__dirname, '..');
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const example = readme.match(/```js\n([\s\S]*?)```/)?.[1];
  t.ok(example, 'the README has a js example');
  const code = example!.replace("require('wnlstm')", `require(${JSON.stringify(root)})`);
  const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8' });
  t.equal(r.status, 0, `runs${r.status ? `: ${r.stderr}` : ''}`);
  t.match(r.stdout, /'norm_1'/, 'prints the gradient names');
});
