#!/usr/bin/env bash
# call T (x2): flash_mma2 (two m-tiles a warp, 128-row tiles) for prompts over bfloat16 and fp8 pools, first on a card: TestGPUAttention, the prompt benchmark against flash_mma, ncu, a kernel profile; served C=128 with it (and fp8 without: KVD_FLASH_MMA2=0).
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=/tmp/rT; mkdir -p $R
B=/tmp/bT; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq"; }
(
 CUDA_VISIBLE_DEVICES=1 PORT=18081 BIN=$B OUT=$R/fp8-mma2 PARTS="wide" WIDE=128 KV_DTYPE=fp8 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-mma2 /'
 echo "fp8 mma2 at $(el)s"
 CUDA_VISIBLE_DEVICES=1 PORT=18081 KVD_FLASH_MMA2=0 BIN=$B OUT=$R/fp8-mma1 PARTS="wide" WIDE=128 KV_DTYPE=fp8 ONLY=full-sidecar-c128 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-mma1 /'
 echo "fp8 mma1 at $(el)s"
 CUDA_VISIBLE_DEVICES=1 PORT=18081 BIN=$B OUT=$R/bf16-mma2 PARTS="wide" WIDE=128 KV_DTYPE=auto bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/bf16-mma2 /'
 echo "gpu1 at $(el)s"
) > $R/gpu1.txt 2>&1 &
(cd kernels && CUDA_VISIBLE_DEVICES=0 $B/kernels.test -test.run 'GPUAttention' -test.count=1 -test.v) > $R/kernels-gpu.log 2>&1; rc=$?
echo "kernels rc=$rc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-gpu.log | head; grep -B2 -A6 -- "--- FAIL" $R/kernels-gpu.log | grep -v '^=== ' | head -30
tar czf $OUT/r.tgz -C $R .
for i in 1 2; do
(cd kernels && CUDA_VISIBLE_DEVICES=0 KVD_BENCH_ONLY=prefill-1x5000- $B/kernels.test -test.timeout 300s -test.run '^$' -test.bench 'GPUAttention/prefill-1x5000-(bf16|fp8)/split8/mma2?$' -test.benchtime 20x) > $R/bench-prefill-$i.log 2>&1
grep -E "^Benchmark" $R/bench-prefill-$i.log | awk '{print $1, $3, $4, $5, $6, $7, $8}'
done
echo "bench at $(el)s"; tar czf $OUT/r.tgz -C $R .
(cd kernels && CUDA_VISIBLE_DEVICES=0 KVD_BENCH_ONLY=prefill-1x5000-bf16 timeout 200 ncu --kernel-name regex:flash_paged_mma2_bf16_hd128 --launch-skip 2 --launch-count 1 --section SpeedOfLight --section WarpStateStats --section Occupancy --section ComputeWorkloadAnalysis --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio $B/kernels.test -test.run '^$' -test.bench 'GPUAttention/prefill-1x5000-bf16/split8/mma2$' -test.benchtime 3x) > $R/ncu-prefill2.txt 2>&1
echo "ncu rc=$? at $(el)s"
CUDA_VISIBLE_DEVICES=0 timeout 240 $B/forward --model bench/models/llama-3.1-8b --load-format dummy --device cuda --runs 32x5000 --decode 8 --kernel-profile 4 --kv-cache-dtype fp8 > $R/prof-fp8.md 2> $R/prof-fp8.log
echo "prof rc=$? at $(el)s"; head -3 $R/prof-fp8.md | tail -1
tar czf $OUT/r.tgz -C $R .
wait; cat $R/gpu1.txt; tar czf $OUT/r.tgz -C $R .
echo "all at $(el)s"
