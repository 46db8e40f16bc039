#!/usr/bin/env bash
# Runs the GPU suite and benchmarks on the device machine from the .device/ bundle that
# scripts/device-bundle.sh builds (repo root; logs and results under $OUT, or ./device-out):
#   bash bench/gpu/device-run.sh [tests] [sanitize] [bench] [ncu] [ncu-evict] [evict-chunks] [decode]
# ncu: Nsight Compute on one packed decode launch (batch 8 x 32 heads x 4096); ncu-evict: on the selection
# and move kernels of one batch-32 compaction; evict-chunks: compaction at three move-block sizes.
# tests: every test/gpu file (kernels and KVCache model tests against the CPU oracle, packed storage,
# CUDA graph capture), then the kernel and packed tests again with decode grids of two waves; sanitize:
# compute-sanitizer memcheck and racecheck on the quick subset (SH_GPU_QUICK=1); bench: the PyTorch
# baseline then the packed-storage benchmark; decode: the dense decode/compaction/overhead benchmark.
# Each step has its own time limit, so one hang loses one step.
# SH_DEVICE_DIR names the bundle's folder when it is not .device.
# Everything lands in device-out/, packed as $OUT/device-out.tgz when $OUT is set (the device tool brings
# back only a few files).
set -uo pipefail
bundle=${SH_DEVICE_DIR:-.device}
out=device-out
mkdir -p "$out" build/Release
xz -dc $bundle/node.xz > /tmp/node && chmod +x /tmp/node
cp $bundle/build/Release/*.node build/Release/
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$out/gpu.txt" 2>&1
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests sanitize bench decode)
for step in "${steps[@]}"; do
  start=$(date +%s)
  case "$step" in
    tests)
      timeout 300 /tmp/node --test --test-concurrency=1 $bundle/tests/ > "$out/tests.log" 2>&1
      echo "tests: rc $? in $(( $(date +%s) - start )) s"; grep -E "^# (tests|pass|fail)" "$out/tests.log"
      # Twice the split-K blocks of one wave: decode's merge then falls to the last block of each head.
      SCISSORHANDS_DECODE_WAVES=2 timeout 200 /tmp/node --test --test-concurrency=1 $bundle/tests/kernels.test.mjs \
        $bundle/tests/packed.test.mjs > "$out/tests-waves2.log" 2>&1
      echo "tests (two waves): rc $?"; grep -E "^# (tests|pass|fail)" "$out/tests-waves2.log" ;;
    sanitize)
      for tool in memcheck racecheck; do
        SH_GPU_QUICK=1 timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 9 /tmp/node --test --test-concurrency=1 \
          $bundle/tests/packed.test.mjs $bundle/tests/kernels.test.mjs $bundle/tests/head-layout.test.mjs $bundle/tests/graph.test.mjs > "$out/sanitizer-$tool.log" 2>&1
        echo "$tool: rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^# (pass|fail)" "$out/sanitizer-$tool.log"
      done ;;
    bench)
      PYTHONUNBUFFERED=1 timeout 200 python3 bench/gpu/torch_baseline.py > "$out/torch.json" 2> "$out/torch.err"
      echo "torch: rc $?"
      timeout 200 /tmp/node $bundle/bench/packed.mjs --torch "$out/torch.json" --out "$out" > "$out/packed-bench.log" 2>&1
      echo "packed bench: rc $?"; tail -n 15 "$out/packed-bench.log" ;;
    ncu)
      # One packed decode launch of the batch-8 case, profiled (clocks as found).
      timeout 240 ncu --clock-control none -k regex:decode_packed --launch-skip 12 --launch-count 1 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
        --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
        /tmp/node $bundle/bench/packed.mjs --decode-only --quick --case decode.b8.h32.n4096 > "$out/ncu-packed-b8.txt" 2>&1
      echo "ncu: rc $?"; grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Theoretical Occupancy|Warp Cycles Per Issued|Stall" "$out/ncu-packed-b8.txt" | head -20 ;;
    ncu-evict)
      # The selection and move kernels of one batch-32 compaction, profiled (clocks as found).
      timeout 240 ncu --clock-control none -k regex:evict_ --launch-skip 10 --launch-count 2 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
        --section WarpStateStats --section SchedulerStats \
        /tmp/node $bundle/bench/decode.mjs --quick --case compact.b32.n2048 > "$out/ncu-evict-b32.txt" 2>&1
      echo "ncu-evict: rc $?"; grep -E "evict_|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Theoretical Occupancy|Grid Size|Dynamic Shared|Warp Cycles Per Issued|Eligible Warps" "$out/ncu-evict-b32.txt" | head -30 ;;
    evict-chunks)
      # Compaction of batch 32 x 2048 with the move blocks' staging at 72, 36 and 24 KiB (each its own process).
      for bytes in 73728 36864 24576; do
        SCISSORHANDS_EVICT_CHUNK_BYTES=$bytes timeout 100 /tmp/node $bundle/bench/decode.mjs --case compact.b32.n2048 2>&1 | tail -1
        SCISSORHANDS_EVICT_CHUNK_BYTES=$bytes timeout 100 /tmp/node $bundle/bench/decode.mjs --case compact.b1.n4096 2>&1 | tail -1
      done ;;
    decode)
      # PyTorch's figures when the bench step ran first in this call; else the PyTorch columns stay empty.
      torch=(); [ -f "$out/torch.json" ] && torch=(--torch "$out/torch.json")
      timeout 200 /tmp/node $bundle/bench/decode.mjs "${torch[@]}" --out "$out" > "$out/decode-bench.log" 2>&1
      echo "decode bench: rc $?"; tail -n 25 "$out/decode-bench.log" ;;
  esac
done
[ -n "${OUT:-}" ] && tar czf "$OUT/device-out.tgz" -C "$out" .
