#!/usr/bin/env bash
# call BB (1 GPU): the committed tree (wgmma prefill h: runs of keys a thread in the loaders): ptxas report, prefill A/B (mma, a, e, h), kernel tests, served fp8 full and 26/1024 at C=128, e2e GPU tests, served bf16 full at C=128.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=/tmp/rBB; mkdir -p $R
B=/tmp/bBB; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
for v in a e; do xz -dk .dev/w/$v/attention_sm90a.ptx.xz & done
xz -dc .dev/m16.tar.xz | tar xf - &
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
export PATH=$PATH:/usr/local/cuda/bin
ptxas -arch=sm_90a -v -o $R/h.cubin kernels/cudabin/attention_sm90a.ptx > $R/ptxas-h.txt 2>&1; echo "h: $(grep -c C7512 $R/ptxas-h.txt) serialized; $(grep -E 'Used' $R/ptxas-h.txt | awk '{print $5}' | tr '\n' ' ') regs; spills $(grep 'spill stores' $R/ptxas-h.txt | awk '{print $5}' | tr '\n' ' ')"; grep C7512 $R/ptxas-h.txt | sed 's/.*function//'
cuobjdump -sass $R/h.cubin > $R/h.sass 2>&1
(cd kernels && KVD_BENCH_ONLY=prefill-1x5000- $B/kernels.test -test.timeout 120s -test.run '^$' -test.bench 'GPUAttention/prefill-1x5000-(bf16|fp8)/split8/mma' -test.benchtime 20x) > $R/bench-h.log 2>&1
grep -E "^Benchmark" $R/bench-h.log | awk '{print "h", $1, $3, $4, $5, $6}'
for v in a e; do
 (cd kernels && KVD_CUDABIN_DIR=$PWD/../.dev/w/$v KVD_BENCH_ONLY=prefill-1x5000- $B/kernels.test -test.timeout 120s -test.run '^$' -test.bench 'GPUAttention/prefill-1x5000-(bf16|fp8)/split8/mma/wgmma' -test.benchtime 20x) > $R/bench-$v.log 2>&1
 grep -E "^Benchmark" $R/bench-$v.log | awk -v v=$v '{print v, $1, $3, $4}'
done
echo "bench at $(el)s"; tar czf $OUT/r.tgz -C $R .
(cd kernels && $B/kernels.test -test.run 'GPUAttention|GPUSparsePrefill' -test.count=1 -test.v) > $R/kernels-gpu.log 2>&1; rc=$?
echo "kernels rc=$rc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-gpu.log | head -5; grep -B2 -A8 -- "--- FAIL" $R/kernels-gpu.log | grep -v '^=== ' | head -30
tar czf $OUT/r.tgz -C $R .
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq"; }
if [ $rc = 0 ]; then
 BIN=$B OUT=$R/fp8-c128 PARTS="wide" WIDE=128 KV_DTYPE=fp8 timeout 230 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-c128 /'
 echo "fp8 at $(el)s"; tar czf $OUT/r.tgz -C $R .
 KVD_TEST_BIN_DIR=$B KVD_GPU_REPORT=$R/agreement.md timeout 150 bash -c "cd e2e && $B/e2e.test -test.run GPU -test.v -test.count=1" > $R/e2e-gpu.log 2>&1; echo "e2e rc=$? at $(el)s"
 grep -E "^(--- |FAIL|ok|PASS)" $R/e2e-gpu.log | head -8
 tar czf $OUT/r.tgz -C $R .
 left=$(( 575 - $(el) ))
 [ $left -gt 100 ] && BIN=$B OUT=$R/bf16-c128 PARTS="wide" WIDE=128 KV_DTYPE=auto ONLY=full-sidecar-c128 timeout $left bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/bf16-c128 /'
fi
echo "all at $(el)s"; tar czf $OUT/r.tgz -C $R .
