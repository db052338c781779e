// The published package: `npm pack` with a prebuilt binary, installed into an empty project whose PATH
// has node and npm but no compiler, cmake, make or python. The install must use the prebuild, and the
// package must load and run. Dependencies come from npm's cache (the project's own install filled it).
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { WeightNormLSTMCell } from '../lib/index';

const root = path.join(__dirname, '..');
// A prebuild from `npm run prebuild` when there is one, else this checkout's build stands in for it.
const prebuildDir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const addon = [...(fs.existsSync(prebuildDir) ? fs.readdirSync(prebuildDir).filter((f) => f.endsWith('.node')).map((f) => path.join(prebuildDir, f)) : []),
  path.join(root, 'build', 'Release', 'wnlstm.node')].find((f) => fs.existsSync(f)) ?? '';

t.test('npm pack, then install with no compiler on PATH', { timeout: 300000 }, async (t) => {
  if (!fs.existsSync(addon)) {
    t.skip('no prebuild and no build/Release/wnlstm.node');
    return;
  }
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'wnlstm-pack-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));

  // Stage the package as `npm run prebuild && npm pack` would leave it: sources, dist, prebuilds/.
  const stage = path.join(work, 'stage');
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  for (const entry of [...pkg.files, 'package.json']) {
    const from = path.join(root, entry);
    if (fs.existsSync(from) && entry !== 'prebuilds') fs.cpSync(from, path.join(stage, entry), { recursive: true });
  }
  const prebuilds = path.join(stage, 'prebuilds', `${process.platform}-${process.arch}`);
  fs.mkdirSync(prebuilds, { recursive: true });
  fs.copyFileSync(addon, path.join(prebuilds, 'wnlstm.napi.node'));
  const tarball = execFileSync('npm', ['pack', '--ignore-scripts', '--pack-destination', work], { cwd: stage, encoding: 'utf8' }).trim().split('\n').pop()!;
  const listing = execFileSync('tar', ['-tzf', path.join(work, tarball)], { encoding: 'utf8' });
  t.match(listing, /package\/prebuilds\/[^/]+\/wnlstm\.napi\.node/, 'the tarball carries the prebuild');
  t.match(listing, /package\/dist\/index\.js/, 'and the compiled TypeScript');
  t.notMatch(listing, /package\/build\//, 'but no build folder');

  // PATH with node and npm only.
  const bin = path.join(work, 'bin');
  fs.mkdirSync(bin);
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.symlinkSync('/bin/sh', path.join(bin, 'sh')); // npm runs scripts with sh
  const npmCli = fs.realpathSync(execFileSync('/bin/sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim());
  fs.writeFileSync(path.join(bin, 'npm'), `#!/bin/sh\nexec "${process.execPath}" "${npmCli}" "$@"\n`, { mode: 0o755 });
  const env = { ...process.env, PATH: bin };
  for (const tool of ['g++', 'c++', 'cmake', 'make', 'python3']) {
    t.not(spawnSync('/bin/sh', ['-c', `command -v ${tool}`], { env }).status, 0, `${tool} is not on PATH`);
  }

  const app = path.join(work, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), '{"name":"app","version":"1.0.0","private":true}\n');
  const install = spawnSync(path.join(bin, 'npm'), ['install', '--prefer-offline', '--no-audit', '--no-fund', '--foreground-scripts', path.join(work, tarball)],
    { cwd: app, env, encoding: 'utf8' });
  t.equal(install.status, 0, `npm install of the tarball${install.status ? `: ${install.stderr.slice(-1500)}` : ''}`);
  t.match(install.stderr + install.stdout, /skipping the build/, 'the install used the prebuild instead of compiling');

  const smoke = `const w = require('wnlstm');
    const cell = new w.WeightNormLSTMCell(8, { inputSize: 4, initializer: 0.5 });
    const s = cell.step(new Float32Array(4).fill(1));
    console.log(JSON.stringify({ h0: s.h[0], backend: cell.backend, isa: w.backendInfo().cpu.isa }));`;
  const run = spawnSync(path.join(bin, 'node'), ['-e', smoke], { cwd: app, env, encoding: 'utf8' });
  t.equal(run.status, 0, `the installed package runs${run.status ? `: ${run.stderr}` : ''}`);
  const out = JSON.parse(run.stdout.trim() || '{}');
  const local = new WeightNormLSTMCell(8, { inputSize: 4, initializer: 0.5 }).step(new Float32Array(4).fill(1)).h[0];
  t.equal(out.h0, local, `the same result as this checkout (h[0] = ${out.h0})`);
  t.equal(out.backend, 'cpu');
});
