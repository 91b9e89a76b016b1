#!/usr/bin/env bash
# call B (1 GPU): the tree with LinearAdd (o and down projections into the residual, beta = 1), widened fp8 prefill blocks, streamed decode items, bf16 gate_up; and a variant attention.fatbin with DMMA_FP8_ASYNC=1 (fp8 decode chunks staged by cp.async).
# kernel tests (the variant's GPUAttention too), decode bench default vs async, then served fp8 C=128 N=384: full KV and 26/1024 (default, KVD_KERNEL_PROFILE=600:100), full KV with the async variant.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bB; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
xz -dk .dev/v/async/attention.fatbin.xz &
wait; chmod +x $B/*
V=$PWD/.dev/v/async
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
(cd kernels && timeout 100 $B/kernels.test -test.run 'GPULinear|GPUBF16Out|GPUElementwise' -test.count=1 -test.v) > $R/kernels-gpu.log 2>&1; rc=$?
echo "kernels rc=$rc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-gpu.log | head -5; grep -B2 -A8 -- "--- FAIL" $R/kernels-gpu.log | grep -v '^=== ' | head -20
(cd kernels && KVD_CUDABIN_DIR=$V KVD_GPU_GROUPS=1,4,8 timeout 150 $B/kernels.test -test.run 'GPUAttention|GPUSparsePrefill' -test.count=1 -test.v) > $R/kernels-async.log 2>&1; arc=$?
echo "async kernels rc=$arc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-async.log | head -5; grep -B2 -A8 -- "--- FAIL" $R/kernels-async.log | grep -v '^=== ' | head -20
for v in default async; do
 d=""; [ $v = async ] && d=$V
 (cd kernels && KVD_CUDABIN_DIR=$d KVD_BENCH_ONLY=decode- timeout 100 $B/kernels.test -test.run '^$' -test.bench 'GPUAttention/decode-(128x5000-fp8|32x5000-fp8|32x1100-fp8-h2o)/split4/v2/dmma' -test.benchtime 40x) > $R/bench-decode-$v.log 2>&1
 grep -E "^Benchmark" $R/bench-decode-$v.log | awk -v v=$v '{print v, $1, $3, $4, $7, $8}'
done
echo "bench at $(el)s"
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq"; }
if [ $rc = 0 ]; then
 KVD_KERNEL_PROFILE=600:100 BIN=$B OUT=$R/new PARTS="wide" WIDE=128 WIDE_N=384 KV_DTYPE=fp8 timeout 220 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/new /'
 echo "new at $(el)s"
 if [ $arc = 0 ]; then
  KVD_CUDABIN_DIR=$V BIN=$B OUT=$R/async PARTS="wide" WIDE=128 WIDE_N=384 KV_DTYPE=fp8 ONLY=full-sidecar-c128-n384 timeout 115 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/async /'
 fi
fi
mkdir -p $R/new/x && tar xzf $R/new/bench-wide.tgz -C $R/new/x
for l in $R/new/x/logs/*.gateway.log; do echo "== $(basename $l)"; grep -A14 'kernel profile' $l | head -16; done
echo "all at $(el)s"
