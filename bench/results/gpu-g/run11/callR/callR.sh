#!/usr/bin/env bash
# call R (x2): prompt tiles heaviest first (flash_paged's order in Go, A/B by KVD_FLASH_ROW_ORDER=1; flash_prompt's in the kernel), tests, an fp8 register cap for split_paged_mma (nvcc 11.8, .dev/fp8m3), ncu of the prompt and decode kernels, a kernel profile of prefill and decode, served C=128.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=/tmp/rR; mkdir -p $R
B=/tmp/bR; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
wait; chmod +x $B/*; xz -dkf .dev/fp8m3/attention.fatbin.xz
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq"; }
(
 CUDA_VISIBLE_DEVICES=1 PORT=18081 BIN=$B OUT=$R/fp8 PARTS="wide" WIDE=128 KV_DTYPE=fp8 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8 /'
 echo "fp8 at $(el)s"
 CUDA_VISIBLE_DEVICES=1 PORT=18081 KVD_FLASH_ROW_ORDER=1 BIN=$B OUT=$R/fp8-roworder PARTS="wide" WIDE=128 KV_DTYPE=fp8 ONLY=full-sidecar-c128 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-roworder /'
 echo "fp8 row order at $(el)s"
 CUDA_VISIBLE_DEVICES=1 PORT=18081 BIN=$B OUT=$R/bf16 PARTS="wide" WIDE=128 KV_DTYPE=auto bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/bf16 /'
 echo "gpu1 at $(el)s"
) > $R/gpu1.txt 2>&1 &
(cd kernels && CUDA_VISIBLE_DEVICES=0 $B/kernels.test -test.run 'GPUAttention|GPUSparsePrefill|HeaviestFirst' -test.count=1 -test.v) > $R/kernels-gpu.log 2>&1; rc=$?
echo "kernels rc=$rc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-gpu.log | head; grep -B2 -A6 -- "--- FAIL" $R/kernels-gpu.log | grep -v '^=== ' | head -30
tar czf $OUT/r.tgz -C $R .
bench() { # name pattern env...
 local n=$1 p=$2; shift 2
 (cd kernels && env CUDA_VISIBLE_DEVICES=0 "$@" $B/kernels.test -test.timeout 300s -test.run '^$' -test.bench "$p" -test.benchtime 20x) > $R/bench-$n.log 2>&1
 grep -E "^Benchmark" $R/bench-$n.log | awk -v n=$n '{print n, $1, $3, $4, $5, $6, $7, $8}'
}
bench heavy 'GPUAttention/prefill-1x5000-(bf16|fp8)/split8/mma$' KVD_BENCH_ONLY=prefill-1x5000-
bench roworder 'GPUAttention/prefill-1x5000-(bf16|fp8)/split8/mma$' KVD_BENCH_ONLY=prefill-1x5000- KVD_FLASH_ROW_ORDER=1
bench heavy2 'GPUAttention/prefill-1x5000-(bf16|fp8)/split8/mma$' KVD_BENCH_ONLY=prefill-1x5000-
bench fp8dmma 'GPUAttention/decode-(32|128)x.*fp8.*/split4/v2/dmma$' KVD_BENCH_ONLY=fp8
bench fp8m3 'GPUAttention/decode-(32|128)x.*fp8.*/split4/v2/dmma$' KVD_BENCH_ONLY=fp8 KVD_CUDABIN_DIR=$PWD/.dev/fp8m3
echo "bench at $(el)s"; tar czf $OUT/r.tgz -C $R .
(cd kernels && CUDA_VISIBLE_DEVICES=0 KVD_BENCH_ONLY=prefill-1x5000-bf16 timeout 200 ncu --kernel-name regex:flash_paged_mma_bf16_hd128 --launch-skip 2 --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section SchedulerStats --section LaunchStats $B/kernels.test -test.run '^$' -test.bench 'GPUAttention/prefill-1x5000-bf16/split8/mma$' -test.benchtime 3x) > $R/ncu-prefill.txt 2>&1
echo "ncu prefill rc=$? at $(el)s"
(cd kernels && CUDA_VISIBLE_DEVICES=0 KVD_BENCH_ONLY=decode-32x5000-fp8 timeout 200 ncu --kernel-name regex:split_paged_mma_fp8_g4 --launch-skip 2 --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section SchedulerStats --section LaunchStats $B/kernels.test -test.run '^$' -test.bench 'GPUAttention/decode-32x5000-fp8/split4/v2/dmma$' -test.benchtime 3x) > $R/ncu-decode-fp8.txt 2>&1
echo "ncu decode rc=$? at $(el)s"; tar czf $OUT/r.tgz -C $R .
for dt in fp8 bfloat16; do
 CUDA_VISIBLE_DEVICES=0 timeout 240 $B/forward --model bench/models/llama-3.1-8b --load-format dummy --device cuda --runs 32x5000 --decode 8 --kernel-profile 4 --kv-cache-dtype $dt > $R/prof-$dt.md 2> $R/prof-$dt.log
 echo "prof $dt rc=$? at $(el)s"
done
tar czf $OUT/r.tgz -C $R .
wait; cat $R/gpu1.txt; tar czf $OUT/r.tgz -C $R .
echo "all at $(el)s"
