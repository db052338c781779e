#!/usr/bin/env node
// Builds the addon at install time: cmake-js when CMake exists (CUDA too when nvcc exists), else
// node-gyp (CPU only). Offline: cmake-js uses node-api-headers, node-gyp the running Node's headers.
// Skips the build when an addon already loads, unless --force. WNLSTM_BUILDER=node-gyp or cmake-js
// forces one builder.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const force = process.argv.includes('--force');

function loads(file) {
  if (!fs.existsSync(file)) return false;
  const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(file)}).info()`], { stdio: 'ignore' });
  return r.status === 0;
}

function has(cmd) {
  return spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
}

function run(cmd, args) {
  console.error(`wnlstm: ${cmd} ${args.join(' ')}`);
  return spawnSync(cmd, args, { cwd: root, stdio: 'inherit' }).status === 0;
}

const prebuildDir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const prebuilds = fs.existsSync(prebuildDir) ? fs.readdirSync(prebuildDir).filter((f) => f.endsWith('.node')).map((f) => path.join(prebuildDir, f)) : [];
if (!force && (loads(path.join(root, 'build', 'Release', 'wnlstm.node')) || prebuilds.some(loads))) {
  console.error('wnlstm: native addon present and loads; skipping the build (npm run build:native forces it)');
  process.exit(0);
}

const builder = process.env.WNLSTM_BUILDER;
const attempts = [];
const bin = (pkg, file) => { try { return require.resolve(`${pkg}/${file}`, { paths: [root] }); } catch { return null; } };
const cmakeJs = bin('cmake-js', 'bin/cmake-js');
if (builder === 'node-gyp') {
  attempts.push('cmake-js skipped (WNLSTM_BUILDER=node-gyp)');
} else if (has('cmake') && cmakeJs) {
  if (run(process.execPath, [cmakeJs, 'rebuild'])) process.exit(0);
  attempts.push('cmake-js failed');
} else {
  attempts.push(cmakeJs ? 'cmake not found' : 'cmake-js not installed');
}
const nodeGyp = bin('node-gyp', 'bin/node-gyp.js');
if (builder === 'cmake-js') {
  attempts.push('node-gyp skipped (WNLSTM_BUILDER=cmake-js)');
} else if (nodeGyp) {
  // --nodedir: use the headers of the Node that runs us instead of downloading them.
  const nodedir = path.dirname(path.dirname(process.execPath));
  if (run(process.execPath, [nodeGyp, 'rebuild', `--nodedir=${nodedir}`])) process.exit(0);
  attempts.push('node-gyp failed');
} else {
  attempts.push('node-gyp not installed');
}
console.error(`wnlstm: could not build the native addon (${attempts.join('; ')}). ` +
  'It needs a C++17 compiler and CMake >= 3.18 (or node-gyp with python3 and make).');
process.exit(1);
