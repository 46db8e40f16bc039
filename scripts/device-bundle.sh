#!/usr/bin/env bash
# Builds, here (nvcc, no GPU), everything the GPU machine needs into the ignored .device/ folder:
#   .device/build/Release/scissorhands_{cpu,cuda}.node   the addons (static cudart), built in a private
#                                                         copy (.device/addon) so build/ is left alone
#   .device/tests/*.mjs, .device/bench/*.mjs               test/gpu and bench/gpu bundled by esbuild into
#                                                         plain ES modules (node built-ins + the addons only)
#   .device/node.xz                                       this machine's node binary
# SCISSORHANDS_CUDA_ARCHS defaults to 90 here (the H100/H200 of the device machine). SH_DEVICE_DIR names
# another folder than .device (for a second bundle built from another worktree).
# On the device machine (repo root):
#   xz -dc .device/node.xz > /tmp/node && chmod +x /tmp/node
#   mkdir -p build/Release && cp .device/build/Release/*.node build/Release/
#   /tmp/node --test .device/tests/
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${SH_DEVICE_DIR:-.device}
mkdir -p "$out/addon" "$out/build/Release" "$out/tests" "$out/bench"

# 1. The addons, from a copy of the native sources.
# Timestamps are kept, so a second run recompiles only what changed.
rm -rf "$out/addon/csrc" "$out/addon/scripts"
cp -rp csrc scripts binding.gyp package.json "$out/addon/"
ln -sfn "$root/node_modules" "$out/addon/node_modules"
nodedir="$(npm config get nodedir 2>/dev/null || true)"
gyp="$root/node_modules/.bin/node-gyp"
(cd "$out/addon" && export SCISSORHANDS_CUDA_ARCHS="${SCISSORHANDS_CUDA_ARCHS:-90}" \
  && "$gyp" configure --loglevel=warn ${nodedir:+--nodedir="$nodedir"} && "$gyp" build -j max --loglevel=warn)
cp "$out/addon/build/Release/scissorhands_cpu.node" "$out/addon/build/Release/scissorhands_cuda.node" "$out/build/Release/"

# 2. The GPU tests and benchmarks as self-contained ES modules.
banner="import { createRequire as __shCreateRequire } from 'node:module'; const require = __shCreateRequire(import.meta.url);"
esbuild=node_modules/.bin/esbuild
"$esbuild" test/gpu/*.test.ts --bundle --platform=node --format=esm --target=node20 --log-level=warning \
  --outdir="$out/tests" --out-extension:.js=.mjs "--banner:js=$banner"
"$esbuild" bench/gpu/*.ts --bundle --platform=node --format=esm --target=node20 --log-level=warning \
  --outdir="$out/bench" --out-extension:.js=.mjs "--banner:js=$banner"

# 3. Node for a machine without it.
../shared/scripts/pack-node-for-device.sh "$out"
du -sh "$out/build" "$out/tests" "$out/bench" "$out/node.xz"
