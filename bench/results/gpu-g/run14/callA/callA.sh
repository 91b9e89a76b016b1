#!/usr/bin/env bash
# call A (1 GPU): widened fp8 prefill blocks (widen_fp8), streamed decode items (one wave of CTAs), bf16 gate_up: kernel tests, then decode/prefill benchmarks new vs KVD_DECODE_STREAM=0 / KVD_FP8_WIDEN=0.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bA; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
(cd kernels && timeout 280 $B/kernels.test -test.run 'GPUAttention|GPUToBF16|GPUBF16Out|GPUElementwise|GPULinear|GPUSparsePrefill|GPUErrors' -test.count=1 -test.v) > $R/kernels-gpu.log 2>&1; rc=$?
echo "kernels rc=$rc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-gpu.log | head -5; grep -B2 -A8 -- "--- FAIL" $R/kernels-gpu.log | grep -v '^=== ' | head -30
grep "widened against" $R/kernels-gpu.log | awk '{print $NF}' | sort -g | tail -1 | sed 's/^/max widened-vs-fp8 rel diff: /'
for v in stream old; do
 e=""; [ $v = old ] && e="KVD_DECODE_STREAM=0"
 (cd kernels && env $e KVD_BENCH_ONLY=decode- timeout 150 $B/kernels.test -test.run '^$' -test.bench 'GPUAttention/decode-(128x5000-bf16|128x5000-fp8|32x5000-fp8|32x1100-fp8-h2o)/split4/v2/dmma' -test.benchtime 40x) > $R/bench-decode-$v.log 2>&1
 grep -E "^Benchmark" $R/bench-decode-$v.log | awk -v v=$v '{print v, $1, $3, $4, $7, $8}'
done
echo "decode bench at $(el)s"
for v in widen fp8k; do
 e=""; [ $v = fp8k ] && e="KVD_FP8_WIDEN=0"
 (cd kernels && env $e KVD_BENCH_ONLY=prefill- timeout 100 $B/kernels.test -test.run '^$' -test.bench 'GPUAttention/prefill-1x5000-(fp8|bf16)/split8/mma/wgmma' -test.benchtime 40x) > $R/bench-prefill-$v.log 2>&1
 grep -E "^Benchmark" $R/bench-prefill-$v.log | awk -v v=$v '{print v, $1, $3, $4, $5, $6}'
done
echo "all at $(el)s"
