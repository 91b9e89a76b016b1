#!/usr/bin/env bash
# call EE (1 GPU): fp8 wgmma prefill with f16 tiles widened in the P.V shadow (2 CTAs/SM): ptxas report, prefill bench bf16+fp8, kernel tests, served fp8 full at C=128 N=384.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bEE; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
export PATH=$PATH:/usr/local/cuda/bin
ptxas -arch=sm_90a -v -o $R/n.cubin kernels/cudabin/attention_sm90a.ptx > $R/ptxas.txt 2>&1; echo "ptxas: $(grep -c C7512 $R/ptxas.txt) serialized; $(grep -E 'Used' $R/ptxas.txt | awk '{print $5}' | tr '\n' ' ') regs; spills $(grep 'spill stores' $R/ptxas.txt | awk '{print $5}' | tr '\n' ' ')"; grep C7512 $R/ptxas.txt | sed 's/.*function//'
cuobjdump -sass $R/n.cubin > $R/n.sass 2>&1; rm -f $R/n.cubin
(cd kernels && KVD_BENCH_ONLY=prefill-1x5000- $B/kernels.test -test.timeout 120s -test.run '^$' -test.bench 'GPUAttention/prefill-1x5000-(bf16|fp8)/split8/mma' -test.benchtime 20x) > $R/bench.log 2>&1
grep -E "^Benchmark" $R/bench.log | awk '{print $1, $3, $4, $5, $6}'
echo "bench at $(el)s"
(cd kernels && $B/kernels.test -test.run 'GPUAttention|GPUSparsePrefill' -test.count=1 -test.v) > $R/kernels-gpu.log 2>&1; rc=$?
echo "kernels rc=$rc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-gpu.log | head -5; grep -B2 -A8 -- "--- FAIL" $R/kernels-gpu.log | grep -v '^=== ' | head -30
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq"; }
if [ $rc = 0 ]; then
 BIN=$B OUT=$R/fp8-c128-n384 PARTS="wide" WIDE=128 WIDE_N=384 KV_DTYPE=fp8 ONLY=full-sidecar-c128-n384 timeout 200 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-c128-n384 /'
fi
echo "all at $(el)s"
