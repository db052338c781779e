// The published package: `npm pack` (its prepack script puts this checkout's addon into prebuilds/),
// installed into an empty project whose PATH has node and npm but no compiler, cmake, make or python.
// The install must use the prebuild, and the package must load and run. The pack runs in a copy of the
// checkout (its scripts rewrite dist/, which other tests are loading); dependencies come from npm's
// cache (the project's own install filled it).
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { WeightNormLSTMCell } from '../lib/index';

const root = path.join(__dirname, '..');
const built = path.join(root, 'build', 'Release', 'wnlstm.node');

t.test('npm pack carries the prebuilt addon; installing it compiles nothing', { timeout: 300000 }, async (t) => {
  if (!fs.existsSync(built)) {
    t.fail('no build/Release/wnlstm.node: npm ci builds it');
    return;
  }
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'wnlstm-pack-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));

  const stage = path.join(work, 'stage');
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  for (const entry of [...pkg.files, 'package.json', 'tsconfig.json', 'build/Release/wnlstm.node']) {
    const from = path.join(root, entry);
    if (fs.existsSync(from) && entry !== 'prebuilds') fs.cpSync(from, path.join(stage, entry), { recursive: true, preserveTimestamps: true });
  }
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(stage, 'node_modules'));
  const pack = spawnSync('npm', ['pack', '--pack-destination', work], { cwd: stage, encoding: 'utf8' });
  t.equal(pack.status, 0, `npm pack${pack.status ? `: ${pack.stderr.slice(-1500)}` : ''}`);
  t.notMatch(pack.stderr, /wnlstm: (cmake-js|node-gyp)/, 'prepack reused the current build');
  const tarball = pack.stdout.trim().split('\n').pop()!;
  const listing = execFileSync('tar', ['-tvzf', path.join(work, tarball)], { encoding: 'utf8' });
  const prebuilt = new RegExp(`(\\d+) \\S+ \\S+ package/prebuilds/${process.platform}-${process.arch}/wnlstm\\.napi\\.node`).exec(listing);
  t.ok(prebuilt, `the tarball carries prebuilds/${process.platform}-${process.arch}/wnlstm.napi.node`);
  t.ok(prebuilt && Number(prebuilt[1]) < fs.statSync(built).size, `stripped (${prebuilt?.[1]} bytes, the build ${fs.statSync(built).size})`);
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
  t.notOk(fs.existsSync(path.join(app, 'node_modules', 'wnlstm', 'build')), 'nothing was built');

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

  // Without a loadable addon, the error says how to build it from the user's project.
  fs.rmSync(path.join(app, 'node_modules', 'wnlstm', 'prebuilds'), { recursive: true });
  const probe = "try { require('wnlstm'); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }";
  const failed = JSON.parse(spawnSync(path.join(bin, 'node'), ['-e', probe], { cwd: app, env, encoding: 'utf8' }).stdout.trim() || '{}');
  t.equal(failed.code, 'ERR_WNLSTM_LOAD');
  t.match(failed.message, /npm rebuild wnlstm/, 'names the npm command');
  const script = /node "([^"]+)" --force/.exec(failed.message)?.[1];
  t.ok(script && fs.existsSync(script) && script.startsWith(path.join(app, 'node_modules', 'wnlstm')),
    `and the installed build script (${script})`);
});
