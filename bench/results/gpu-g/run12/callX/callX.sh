#!/usr/bin/env bash
# call X (1 GPU): wgmma prefill (flash_wgmma.cuh, attention_sm90a.ptx JIT by the driver): ptxas report, building-block check, kernel tests, prefill A/B, served fp8 and bf16 full KV at C=128.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=/tmp/rX; mkdir -p $R
B=/tmp/bX; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
export PATH=$PATH:/usr/local/cuda/bin
ptxas -arch=sm_90a -v -o $R/sm90a.cubin kernels/cudabin/attention_sm90a.ptx > $R/ptxas.txt 2>&1; echo "ptxas rc=$?"
grep -E "error|wgmma|spill|Used" $R/ptxas.txt | sed 's/^ptxas info    : //' | grep -v "^Function properties" | head -24
nvcc -arch=sm_90a -O2 -o $R/wgcheck .dev/wgcheck.cu > $R/wgcheck-build.txt 2>&1 || { echo "wgcheck build failed"; grep -v "#550\|detected during\|instantiation\|here$" $R/wgcheck-build.txt | head; }
[ -x $R/wgcheck ] && $R/wgcheck 2>&1 | tail -12
tar czf $OUT/r.tgz -C $R .
(cd kernels && $B/kernels.test -test.run 'GPUAttention|GPUSparsePrefill' -test.count=1 -test.v) > $R/kernels-gpu.log 2>&1; rc=$?
echo "kernels rc=$rc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-gpu.log | head -5; grep -B2 -A8 -- "--- FAIL" $R/kernels-gpu.log | grep -v '^=== ' | head -30
tar czf $OUT/r.tgz -C $R .
for i in 1 2; do
 (cd kernels && KVD_BENCH_ONLY=prefill-1x5000- $B/kernels.test -test.timeout 120s -test.run '^$' -test.bench 'GPUAttention/prefill-1x5000-(bf16|fp8)/split8/mma' -test.benchtime 20x) > $R/bench-$i.log 2>&1
 grep -E "^Benchmark" $R/bench-$i.log | awk '{print $1, $3, $4, $5, $6}'
done
echo "bench at $(el)s"; tar czf $OUT/r.tgz -C $R .
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq"; }
if [ $rc = 0 ]; then
 BIN=$B OUT=$R/fp8-c128 PARTS="wide" WIDE=128 KV_DTYPE=fp8 ONLY=full-sidecar-c128 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-c128 /'
 echo "fp8 at $(el)s"; tar czf $OUT/r.tgz -C $R .
 BIN=$B OUT=$R/bf16-c128 PARTS="wide" WIDE=128 KV_DTYPE=auto ONLY=full-sidecar-c128 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/bf16-c128 /'
 echo "bf16 at $(el)s"; tar czf $OUT/r.tgz -C $R .
fi
echo "all at $(el)s"
