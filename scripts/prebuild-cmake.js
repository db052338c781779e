#!/usr/bin/env node
// Stands in for node-gyp when prebuildify builds (npm run prebuild): prebuildify passes node-gyp's
// arguments (rebuild --target=... --arch=... --release); this builds with cmake-js instead, so the
// prebuilt binary is the CMake build (with CUDA when nvcc exists), left in build/Release as node-gyp would.
'use strict';
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const args = process.argv.slice(2);
const arch = args.find((a) => a.startsWith('--arch='))?.slice(7);
const cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [path.join(__dirname, '..')] });
const r = spawnSync(process.execPath, [cmakeJs, 'rebuild', ...(arch ? ['--arch', arch] : [])],
  { cwd: path.join(__dirname, '..'), stdio: 'inherit' });
process.exit(r.status ?? 1);
