#!/usr/bin/env bash
# call FF (1 GPU): decode (split_paged_mma) with the next chunk's rows prefetched into L2 and its table lookup a chunk ahead; to_bf16 four a thread.
# kernel tests, decode bench new / old (HEAD's attention.fatbin) / p2 (prefetch, DMMA_FP8_MINB=2), served fp8 full C=128 N=384.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bFF; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
for v in old p2; do xz -dk .dev/v/$v/attention.fatbin.xz & done
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
for v in new old p2; do
 d=""; [ $v != new ] && d=$PWD/.dev/v/$v
 (cd kernels && KVD_CUDABIN_DIR=$d KVD_BENCH_ONLY=decode- $B/kernels.test -test.timeout 200s -test.run '^$' -test.bench 'GPUAttention/decode-(128x5000-bf16|128x5000-fp8|32x5000-fp8|32x1100-fp8-h2o)/split4/v2/dmma' -test.benchtime 40x) > $R/bench-$v.log 2>&1
 grep -E "^Benchmark" $R/bench-$v.log | awk -v v=$v '{print v, $1, $3, $4, $7, $8}'
done
echo "bench at $(el)s"
(cd kernels && $B/kernels.test -test.run 'GPUAttention|GPUToBF16|GPUBF16Out' -test.count=1 -test.v) > $R/kernels-gpu.log 2>&1; rc=$?
echo "kernels rc=$rc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-gpu.log | head -5; grep -B2 -A8 -- "--- FAIL" $R/kernels-gpu.log | grep -v '^=== ' | head -30
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq"; }
if [ $rc = 0 ]; then
 BIN=$B OUT=$R/fp8-c128-n384 PARTS="wide" WIDE=128 WIDE_N=384 KV_DTYPE=fp8 ONLY=full-sidecar-c128-n384 timeout 200 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-c128-n384 /'
fi
echo "all at $(el)s"
