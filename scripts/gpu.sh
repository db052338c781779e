#!/usr/bin/env bash
# The CUDA backend on the GPU machine (../shared/GPU.md), as one prepared run: a session gets about 15
# minutes of device time, the machine's start included, so everything is built here and batched there.
#
#   here:   scripts/gpu.sh pack     builds the addon (machine code for sm_90 included) and dist/, packs Node.js
#                                   (../shared/gpu/prepare) and the package's run-time dependencies into .gpu/,
#                                   then loads dist/ from a copy of the tree without node_modules, as there
#   there:  source .gpu/enter && scripts/gpu.sh run      (device tool: carry .gpu, build/Release and dist)
#   here:   scripts/gpu.sh run --dry-run --out DIR   checks this script: the checks report no device and
#                                   skip, the benchmark runs a tiny grid on the CPU backend
#
# `run` writes to $OUT (or --out DIR), each part under its own time limit (at most 7 minutes in all), so that
# a part cut short still returns what it did:
#   log.txt            the device (nvidia-smi, backendInfo, the addon's machine code); test/cuda-compare.js
#                      --large under each recurrence (per-step kernels, persistent); bench/cuda.js's log
#   sanitizer.txt      compute-sanitizer memcheck, racecheck, initcheck and synccheck over cuda-compare.js --quick
#   cuda.md, cuda.json, cuda-h*.svg       bench/cuda.js: the speed grid beside PyTorch's cuDNN, run alone
# At most 8 files come back; this writes 7.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

pack() {
  set -e
  command -v nvcc >/dev/null || { echo "gpu.sh pack: no nvcc here, so no CUDA backend to carry" >&2; exit 1; }
  npm run build:native
  npm run build:ts
  # The architectures the build compiled for, as the addon names them in its "no code for" reason.
  grep -aq '90-real' build/Release/wnlstm.node ||
    { echo "gpu.sh pack: the addon has no sm_90 machine code (CMAKE_CUDA_ARCHITECTURES)" >&2; exit 1; }
  ../shared/gpu/prepare
  # dist/ requires protobufjs (ONNX export) when it loads: carry it and the packages it depends on.
  rm -rf .gpu/node_modules
  node -e '
    const fs = require("node:fs");
    const seen = new Set();
    const visit = (name) => {
      if (seen.has(name) || name.startsWith("@types/")) return;  // type declarations: nothing to load
      seen.add(name);
      fs.cpSync(`node_modules/${name}`, `.gpu/node_modules/${name}`, { recursive: true });
      Object.keys(require(`./node_modules/${name}/package.json`).dependencies ?? {}).forEach(visit);
    };
    visit("protobufjs");
    console.error(`carried run-time packages: ${[...seen].join(", ")}`);'
  # Load the package as it will load there: the tree that travels, the carried paths, no node_modules.
  local sim
  sim=$(mktemp -d)
  git ls-files -z --cached --others --exclude-standard | tar -cf - --null -T - | tar -xf - -C "$sim"
  mkdir -p "$sim/build" && cp -r build/Release "$sim/build/" && cp -r dist .gpu "$sim/"
  (cd "$sim" && NODE_PATH="$sim/.gpu/node_modules" node -e 'const w = require("."); console.error("loads without node_modules:", w.backendInfo().cuda.reason)')
  rm -rf "$sim"
  du -sh .gpu build/Release dist | tr '\n' ' '; echo '(carried; 64 MiB at most with the tree)'
}

# job FILE SECONDS CMD...: runs CMD under a time limit into FILE, ending it with CMD's exit status and time.
job() {
  local file=$1 limit=$2 start=$SECONDS
  shift 2
  echo "== $* (limit ${limit}s)" > "$file"
  timeout --kill-after=10 "$limit" "$@" >> "$file" 2>&1
  local rc=$?
  echo "== exit $rc$([ $rc = 124 ] && echo ', cut short at the limit') after $((SECONDS - start))s" >> "$file"
}

run() {
  local dry=
  out=${OUT:-}
  while [ $# -gt 0 ]; do
    case $1 in
      --dry-run) dry=--dry-run ;;
      --out) out=$2; shift ;;
    esac
    shift
  done
  [ -n "$out" ] || { echo "gpu.sh run: no \$OUT or --out DIR" >&2; exit 1; }
  mkdir -p "$out"
  export NODE_PATH=$root/.gpu/node_modules${NODE_PATH:+:$NODE_PATH}
  local parts
  parts=$(mktemp -d)
  job "$parts/0-device" 60 bash -c 'nvidia-smi; node -e "console.log(JSON.stringify(require(\".\").backendInfo(), null, 1))";
    cuobjdump --list-elf build/Release/wnlstm.node; date -u'
  # The checks side by side (the CPU backend's references use the machine's cores; the GPU has room for all),
  # each sanitizer tool over the quick cases under the default recurrence, which takes the persistent kernels
  # for the cases without a projection and the per-step kernels for the one with.
  for recurrence in steps persistent; do
    job "$parts/1-compare-$recurrence" 150 env WNLSTM_CUDA_RECURRENCE=$recurrence node test/cuda-compare.js --large &
  done
  if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck initcheck synccheck; do
      job "$parts/$tool" 150 compute-sanitizer --tool "$tool" --print-limit 20 --error-exitcode 3 node test/cuda-compare.js --quick &
    done
  else
    echo "no compute-sanitizer here" > "$parts/memcheck"
  fi
  wait
  cat "$parts"/[01]-* > "$out/log.txt"
  cat "$parts"/*check > "$out/sanitizer.txt"
  grep -h '^== exit\|^{"' "$parts"/* | cut -c1-300
  # The timings alone on the machine.
  job "$parts/2-bench" 240 node bench/cuda.js --out "$out" $dry
  cat "$parts/2-bench" >> "$out/log.txt"
  tail -n 3 "$parts/2-bench"
  rm -rf "$parts"
}

case ${1:-} in
  pack) pack ;;
  run) shift; run "$@" ;;
  *) echo "usage: scripts/gpu.sh pack | run [--dry-run] [--out DIR]" >&2; exit 2 ;;
esac
