#!/usr/bin/env bash
# call S (x2): the committed tree (split_paged_mma, fp8 capped at 3 CTAs an SM, prompt tiles heaviest first): kernel tests (TestGPUWriteKV's fp8 edges first on a card), e2e GPU tests, fp8 decode benchmark; served C=128 over fp8 and bf16, C=32 over fp8.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=/tmp/rS; mkdir -p $R
B=/tmp/bS; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
xz -dc .dev/m16.tar.xz | tar xf - &
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq"; }
(
 CUDA_VISIBLE_DEVICES=1 PORT=18081 BIN=$B OUT=$R/fp8-c128 PARTS="wide" WIDE=128 KV_DTYPE=fp8 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-c128 /'
 echo "fp8 c128 at $(el)s"
 CUDA_VISIBLE_DEVICES=1 PORT=18081 BIN=$B OUT=$R/bf16-c128 PARTS="wide" WIDE=128 KV_DTYPE=auto bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/bf16-c128 /'
 echo "bf16 c128 at $(el)s"
 CUDA_VISIBLE_DEVICES=1 PORT=18081 BIN=$B OUT=$R/fp8-c32 PARTS="wide" WIDE=32 KV_DTYPE=fp8 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-c32 /'
 echo "gpu1 at $(el)s"
) > $R/gpu1.txt 2>&1 &
(cd kernels && CUDA_VISIBLE_DEVICES=0 $B/kernels.test -test.run 'GPUAttention|GPUWriteKV|HeaviestFirst' -test.count=1 -test.v) > $R/kernels-gpu.log 2>&1; rc=$?
echo "kernels rc=$rc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-gpu.log | head; grep -B2 -A6 -- "--- FAIL" $R/kernels-gpu.log | grep -v '^=== ' | head -30
grep "relative error" $R/kernels-gpu.log | awk '{print $NF}' | sort -g | tail -1 | sed 's/^/largest dmma error /'
tar czf $OUT/r.tgz -C $R .
KVD_TEST_BIN_DIR=$B KVD_GPU_REPORT=$R/agreement.md CUDA_VISIBLE_DEVICES=0 timeout 300 bash -c "cd e2e && $B/e2e.test -test.run GPU -test.v -test.count=1" > $R/e2e-gpu.log 2>&1; echo "e2e rc=$? at $(el)s"
grep -E "^(--- |FAIL|ok|PASS)" $R/e2e-gpu.log | head -8
tar czf $OUT/r.tgz -C $R .
(cd kernels && CUDA_VISIBLE_DEVICES=0 KVD_BENCH_ONLY=fp8 $B/kernels.test -test.timeout 300s -test.run '^$' -test.bench 'GPUAttention/decode-(32|128)x.*fp8.*/split4/v2/dmma$' -test.benchtime 20x) > $R/bench-fp8.log 2>&1
grep -E "^Benchmark" $R/bench-fp8.log | awk '{print $1, $3, $4, $5, $6}'
(cd kernels && CUDA_VISIBLE_DEVICES=0 KVD_BENCH_ONLY=prefill-1x5000-bf16 timeout 200 ncu --kernel-name regex:flash_paged_mma_bf16_hd128 --launch-skip 2 --launch-count 1 --section WarpStateStats --page raw --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio $B/kernels.test -test.run "^$" -test.bench "GPUAttention/prefill-1x5000-bf16/split8/mma$" -test.benchtime 3x) > $R/ncu-prefill-stalls.txt 2>&1; echo "ncu stalls rc=$? at $(el)s"
echo "gpu0 at $(el)s"; tar czf $OUT/r.tgz -C $R .
wait; cat $R/gpu1.txt; tar czf $OUT/r.tgz -C $R .
echo "all at $(el)s"
