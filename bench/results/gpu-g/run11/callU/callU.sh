#!/usr/bin/env bash
# call U (1 GPU): flash_mma variants built by nvcc 11.8 (sm_90): ex2.approx.ftz for the probabilities (vx), two CTAs an SM (vc), both (vxc), the baseline (v0); TestGPUAttention with vx; served fp8 full KV at C=128 with the best.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=/tmp/rU; mkdir -p $R
B=/tmp/bU; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
for v in v0 vx vc vxc; do xz -dkf .dev/$v/attention.fatbin.xz & done
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
(cd kernels && KVD_CUDABIN_DIR=$PWD/../.dev/vx $B/kernels.test -test.run 'GPUAttention' -test.count=1 -test.v) > $R/kernels-gpu-vx.log 2>&1; rc=$?
echo "kernels (vx) rc=$rc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-gpu-vx.log | head -3
for i in 1 2; do for v in v0 vx vc vxc; do
 (cd kernels && KVD_CUDABIN_DIR=$PWD/../.dev/$v KVD_BENCH_ONLY=prefill-1x5000- $B/kernels.test -test.timeout 120s -test.run '^$' -test.bench 'GPUAttention/prefill-1x5000-(bf16|fp8)/split8/mma$' -test.benchtime 20x) > $R/bench-$v-$i.log 2>&1
 grep -E "^Benchmark" $R/bench-$v-$i.log | awk -v v=$v '{print v, $1, $3, $4, $7, $8}'
done; done
echo "bench at $(el)s"; tar czf $OUT/r.tgz -C $R .
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq"; }
KVD_CUDABIN_DIR=$PWD/.dev/vx BIN=$B OUT=$R/fp8-vx PARTS="wide" WIDE=128 KV_DTYPE=fp8 ONLY=full-sidecar-c128 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-vx /'
echo "all at $(el)s"; tar czf $OUT/r.tgz -C $R .
