#!/usr/bin/env bash
# call Q (x2): split_paged_mma (decode on the tensor cores) first on a card: TestGPUAttention, kernel timings against split_paged_v2 (+ a DMMA_MINB=3 variant built there), served C=128 over fp8 and bf16 with and without it.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=/tmp/rQ; mkdir -p $R
B=/tmp/bQ; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq"; }
V=/tmp/var/m3; mkdir -p $V
(nvcc -fatbin -O3 -gencode arch=compute_90,code=sm_90 -DDMMA_MINB=3 -Xptxas -v -o $V/attention.fatbin kernels/attention.cu > $R/m3-build.log 2>&1; echo "built m3 rc=$? at $(el)s" >> $R/m3-built.txt) &
(
 CUDA_VISIBLE_DEVICES=1 PORT=18081 BIN=$B OUT=$R/bf16-dmma PARTS="wide" WIDE=128 KV_DTYPE=auto bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/bf16-dmma /'
 echo "bf16 dmma at $(el)s"
 CUDA_VISIBLE_DEVICES=1 PORT=18081 KVD_DECODE_MMA=0 BIN=$B OUT=$R/bf16-v2 PARTS="wide" WIDE=128 KV_DTYPE=auto bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/bf16-v2 /'
 echo "gpu1 at $(el)s"
) > $R/gpu1.txt 2>&1 &
(cd kernels && CUDA_VISIBLE_DEVICES=0 $B/kernels.test -test.run 'GPUAttention' -test.count=1 -test.v) > $R/kernels-gpu.log 2>&1; rc=$?
echo "kernels rc=$rc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-gpu.log | head; grep -B2 -A6 -- "--- FAIL" $R/kernels-gpu.log | grep -v '^=== ' | head -30
grep "relative error" $R/kernels-gpu.log | awk '{print $NF}' | sort -g | tail -3 | tr '\n' ' '; echo "(largest dmma errors)"
tar czf $OUT/r.tgz -C $R .
bench() { # name cudabin-dir
 (cd kernels && CUDA_VISIBLE_DEVICES=0 KVD_CUDABIN_DIR=$2 KVD_BENCH_ONLY=decode- $B/kernels.test -test.timeout 300s -test.run '^$' -test.bench 'GPUAttention/decode-(32|128)x.*-(bf16|fp8).*/split4/v2' -test.benchtime 30x) > $R/bench-$1.log 2>&1
 grep -E "^Benchmark" $R/bench-$1.log | awk -v n=$1 '{print n, $1, $3, $4, $5, $6, $7, $8}'
}
bench default ""
echo "bench at $(el)s"; cat $R/m3-built.txt 2>/dev/null
[ -f $V/attention.fatbin ] && bench m3 $V
grep -A1 "split_paged_mma_fp8_g4\|split_paged_mma_bf16_g4" $R/m3-build.log | grep -o "Used [0-9]* registers" | head -2
tar czf $OUT/r.tgz -C $R .
CUDA_VISIBLE_DEVICES=0 BIN=$B OUT=$R/fp8-dmma PARTS="wide" WIDE=128 KV_DTYPE=fp8 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-dmma /'
echo "fp8 dmma at $(el)s"; tar czf $OUT/r.tgz -C $R .
CUDA_VISIBLE_DEVICES=0 KVD_DECODE_MMA=0 BIN=$B OUT=$R/fp8-v2 PARTS="wide" WIDE=128 KV_DTYPE=fp8 ONLY=full-sidecar-c128 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-v2 /'
echo "gpu0 at $(el)s"; tar czf $OUT/r.tgz -C $R .
wait; cat $R/gpu1.txt; tar czf $OUT/r.tgz -C $R .
echo "all at $(el)s"
