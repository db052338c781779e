#!/usr/bin/env node
// Runs before `npm pack` and `npm publish`: compiles the TypeScript and puts this machine's addon into
// prebuilds/<platform>-<arch>/wnlstm.napi.node, so that installing the tarball compiles nothing. The addon
// is build/Release/wnlstm.node, rebuilt first when it is missing, older than a native source, or lacks
// the CUDA backend on a machine with nvcc.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const built = path.join(root, 'build', 'Release', 'wnlstm.node');

function run(cmd, args) {
  console.error(`wnlstm prepack: ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

function newestSource() {
  let newest = 0;
  const visit = (p) => {
    const s = fs.statSync(p);
    if (s.isDirectory()) for (const e of fs.readdirSync(p)) visit(path.join(p, e));
    else newest = Math.max(newest, s.mtimeMs);
  };
  for (const p of ['native', 'CMakeLists.txt', 'binding.gyp']) visit(path.join(root, p));
  return newest;
}

function cudaCompiled() {
  const r = spawnSync(process.execPath, ['-p', `require(${JSON.stringify(built)}).info().cuda.compiled`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() === 'true' : null;
}

run(process.execPath, [require.resolve('typescript/bin/tsc', { paths: [root] }), '-p', 'tsconfig.json']);
const hasNvcc = spawnSync('nvcc', ['--version'], { stdio: 'ignore' }).status === 0;
const stale = !fs.existsSync(built) || fs.statSync(built).mtimeMs < newestSource() || cudaCompiled() !== hasNvcc;
if (stale) run(process.execPath, [path.join(__dirname, 'build-native.js'), '--force']);
if (cudaCompiled() === null) {
  console.error('wnlstm prepack: the built addon does not load; nothing packed');
  process.exit(1);
}

const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
fs.rmSync(dir, { recursive: true, force: true });
fs.mkdirSync(dir, { recursive: true });
const prebuilt = path.join(dir, 'wnlstm.napi.node');
fs.copyFileSync(built, prebuilt);
// Debug symbols are a third of the file; the tarball does not need them.
if (process.platform === 'linux' && spawnSync('strip', ['--strip-unneeded', prebuilt], { stdio: 'inherit' }).status !== 0) {
  console.error('wnlstm prepack: strip failed; packing the unstripped addon');
}
console.error(`wnlstm prepack: ${path.relative(root, prebuilt)} (${(fs.statSync(prebuilt).size / 2 ** 20).toFixed(1)} MiB, ` +
  `${cudaCompiled() ? 'with' : 'without'} the CUDA backend)`);
