#!/usr/bin/env bash
# The CUDA backend on the GPU machine (../shared/GPU.md), as one prepared run: a session gets about 15
# minutes of device time, the machine's start included, so everything is built here and batched there.
#
#   here:   scripts/gpu.sh pack     builds the addon (machine code for sm_90 included) and dist/, packs Node.js
#                                   (../shared/gpu/prepare) and the package's run-time dependencies into .gpu/,
#                                   then loads dist/ from a copy of the tree without node_modules, as there
#   there:  source .gpu/enter && bash scripts/gpu.sh run      (device tool: carry .gpu, build/Release and dist;
#                                   timeout_s about 540)
#   here:   scripts/gpu.sh run --dry-run --out DIR   checks this script: the checks report no device and
#                                   skip, the benchmark runs a tiny grid on the CPU backend
#
# `run` writes to $OUT (or --out DIR), each part under its own time limit (8 minutes in all at the worst), so that
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

# job FILE SECONDS CMD...: runs CMD under a time limit, appending its output to FILE, then its exit status
# and time (124: cut short at the limit; 137: killed 10 s later).
job() {
  local file=$1 limit=$2 start=$SECONDS
  shift 2
  echo "== $* (limit ${limit}s)" >> "$file"
  timeout --kill-after=10 "$limit" "$@" >> "$file" 2>&1
  local rc=$?
  echo "== exit $rc$(case $rc in 124|137) echo ', cut short at the limit' ;; esac) after $((SECONDS - start))s" >> "$file"
}

# check CMD...: CMD in the background while the checks run together, else in the foreground.
check() {
  if [ -n "$together" ]; then "$@" & else "$@"; fi
}

run() {
  local dry=
  out=${OUT:-}
  while [ $# -gt 0 ]; do
    case $1 in
      --dry-run) dry=--dry-run ;;
      --out) out=${2:?--out needs a folder}; shift ;;
    esac
    shift
  done
  [ -n "$out" ] || { echo "gpu.sh run: no \$OUT or --out DIR" >&2; exit 1; }
  mkdir -p "$out" && out=$(cd "$out" && pwd)
  export NODE_PATH=$root/.gpu/node_modules${NODE_PATH:+:$NODE_PATH}
  export PATH=$PATH:${CUDA_HOME:-/usr/local/cuda}/bin  # compute-sanitizer and cuobjdump, where PATH lacks them
  local parts mode
  parts=$(mktemp -d)
  job "$out/log.txt" 60 bash -c 'nvidia-smi; node -e "console.log(JSON.stringify(require(\".\").backendInfo(), null, 1))";
    cuobjdump --list-elf build/Release/wnlstm.node; date -u'
  # The checks side by side (the CPU backend's references use the machine's cores; the GPU has room for all),
  # unless the GPU takes one process at a time. Each sanitizer tool runs the quick cases under the default
  # recurrence, which takes the persistent kernels for the cases without a projection, the per-step kernels
  # for the one with.
  mode=$(nvidia-smi --query-gpu=compute_mode --format=csv,noheader 2>/dev/null | head -n 1)
  together=1 compare_limit=150 sanitizer_limit=150
  if [ -n "$mode" ] && [ "$mode" != Default ]; then
    together= compare_limit=90 sanitizer_limit=40
    echo "compute mode $mode: the checks one at a time, with shorter limits" | tee -a "$out/log.txt"
  fi
  for recurrence in steps persistent; do
    check job "$parts/1-compare-$recurrence" $compare_limit env WNLSTM_CUDA_RECURRENCE=$recurrence node test/cuda-compare.js --large
  done
  if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck initcheck synccheck; do
      check job "$parts/$tool" $sanitizer_limit compute-sanitizer --tool "$tool" --print-limit 20 --error-exitcode 3 node test/cuda-compare.js --quick
    done
  else
    echo "no compute-sanitizer here" > "$parts/memcheck"
  fi
  wait
  cat "$parts"/1-* >> "$out/log.txt"
  cat "$parts"/*check > "$out/sanitizer.txt"
  for f in "$parts"/*; do echo "${f##*/}: $(grep '^{"' "$f" | cut -c1-200) $(tail -n 1 "$f")"; done
  rm -rf "$parts"
  # The timings alone on the machine, logged straight into $OUT.
  job "$out/log.txt" 240 node bench/cuda.js --out "$out" $dry
  tail -n 1 "$out/log.txt"
}

case ${1:-} in
  pack) pack ;;
  run) shift; run "$@" ;;
  *) echo "usage: scripts/gpu.sh pack | run [--dry-run] [--out DIR]" >&2; exit 2 ;;
esac
