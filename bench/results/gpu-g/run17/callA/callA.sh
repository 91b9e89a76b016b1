#!/usr/bin/env bash
# run 17 call A (1 GPU): fp8 decode variants (ksector, bits1 = V widened by bit ops, bits2 = K and V), built here by nvcc 11.8 (sm_90),
# tested and timed against the default; ncu of the default (and bits2) at 256 x 5000; then full KV served at C=256 over 1024 (defaults, repeat of run 16 call C).
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bA; mkdir -p $B /tmp/v
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
for f in .dev/vx/*.xz; do n=$(basename $f .fatbin.xz); mkdir -p /tmp/v/$n; xz -dc $f > /tmp/v/$n/attention.fatbin & done
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
dir() { [ $1 = default ] && echo "" || echo /tmp/v/$1; }
for v in default ksector bits1 bits2; do
  (cd kernels && KVD_CUDABIN_DIR=$(dir $v) timeout 120 $B/kernels.test -test.run 'GPUAttention$' -test.v) > $R/test-$v.log 2>&1
  echo "test $v rc=$? $(grep -c -- '--- FAIL' $R/test-$v.log) fails at $(el)s"
done
for v in default ksector bits1 bits2 default; do
  (cd kernels && KVD_CUDABIN_DIR=$(dir $v) KVD_BENCH_ONLY=fp8 timeout 150 $B/kernels.test -test.run '^$' -test.bench 'GPUAttention/decode-(256x5000-fp8|32x1100-fp8-h2o)/split4/v2/dmma$' -test.benchtime 40x) >> $R/bench-$v.log 2>&1
  echo "bench $v at $(el)s: $(grep -oE 'decode-[0-9a-z-]+/split4/v2/dmma[^ ]* +[0-9]+ +[0-9]+ ns/op' $R/bench-$v.log | tail -2 | awk '{print $1, $3/1000 " us"}' | tr '\n' ' ')"
done
M='regex:sm__inst_executed_pipe_.*\.avg\.pct_of_peak_sustained_active,regex:sm__pipe_.*_cycles_active\.avg\.pct_of_peak_sustained_active,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,dram__bytes_read.sum.per_second'
for v in default bits2; do
  (cd kernels && KVD_CUDABIN_DIR=$(dir $v) KVD_BENCH_ONLY=decode-256x5000-fp8 timeout 150 ncu --kernel-name regex:split_paged_mma_fp8_g4 --launch-skip 2 --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section SchedulerStats --section InstructionStats --metrics "$M" $B/kernels.test -test.run '^$' -test.bench 'GPUAttention/decode-256x5000-fp8/split4/v2/dmma$' -test.benchtime 3x) > $R/ncu-$v.txt 2>&1
  echo "ncu $v rc=$? at $(el)s"; grep -E "DRAM Throughput|Issue Slots Busy|Eligible Warps|No Eligible|Registers Per|Achieved Occ" $R/ncu-$v.txt | head -7
done
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq\|of 2[0-4][0-9]\.\|of 25[0-5]\." | tail -3; }
left=$(( 590 - $(el) ))
BIN=$B OUT=$R/full PARTS=wide WIDE=256 WIDE_N=1024 KV_DTYPE=fp8 ONLY=full-sidecar-c256-n1024 timeout $left bash tools/gpu/bench.sh > $R/full.out 2>&1
f < $R/full.out | sed "s/^/full /"
echo "all at $(el)s"
tar czf $OUT/r.tgz -C $R . 2>/dev/null
