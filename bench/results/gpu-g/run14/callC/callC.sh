#!/usr/bin/env bash
# call C (1 GPU): 66fe794's binaries; variant attention fat binaries (sm_90 only, built here by nvcc 11.8): nc2 = fp8 decode loading two chunks a warp before computing them (DMMA_FP8_NC=2, DMMA_FP8_MINB=2), nc2m3 = the same capped at three CTAs an SM.
# kernel tests over nc2, decode bench default / nc2 / nc2m3, then served fp8 full KV at C=128 over 384 requests with the faster variant.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bC; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
for v in nc2 nc2m3; do xz -dk .dev/v/$v/attention.fatbin.xz & done
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
(cd kernels && KVD_CUDABIN_DIR=$PWD/../.dev/v/nc2 timeout 150 $B/kernels.test -test.run 'GPUAttention|GPUSparsePrefill' -test.count=1 -test.v) > $R/kernels-nc2.log 2>&1; rc=$?
echo "nc2 kernels rc=$rc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-nc2.log | head -5; grep -B2 -A8 -- "--- FAIL" $R/kernels-nc2.log | grep -v '^=== ' | head -20
for v in default nc2 nc2m3; do
 d=""; [ $v != default ] && d=$PWD/.dev/v/$v
 (cd kernels && KVD_CUDABIN_DIR=$d KVD_BENCH_ONLY=decode- timeout 100 $B/kernels.test -test.run '^$' -test.bench 'GPUAttention/decode-(128x5000-fp8|32x5000-fp8|32x1100-fp8-h2o)/split4/v2/dmma' -test.benchtime 40x) > $R/bench-decode-$v.log 2>&1
 grep -E "^Benchmark" $R/bench-decode-$v.log | awk -v v=$v '{print v, $1, $3, $4, $7, $8}'
done
echo "bench at $(el)s"
best=$(for v in default nc2 nc2m3; do awk -v v=$v '/decode-128x5000-fp8/ {print $3, v}' $R/bench-decode-$v.log; done | sort -n | head -1 | awk '{print $2}')
echo "fastest at 128x5000: $best"
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq"; }
d=""; [ "$best" != default ] && d=$PWD/.dev/v/$best
if [ $rc = 0 ] || [ "$best" = default ]; then
 KVD_CUDABIN_DIR=$d KVD_KERNEL_PROFILE=600:100 BIN=$B OUT=$R/served PARTS="wide" WIDE=128 WIDE_N=384 KV_DTYPE=fp8 ONLY=full-sidecar-c128-n384 timeout 120 bash tools/gpu/bench.sh 2>&1 | f | sed "s/^/$best /"
fi
mkdir -p $R/x && tar xzf $R/served/bench-wide.tgz -C $R/x 2>/dev/null
for l in $R/x/logs/*.gateway.log; do echo "== $(basename $l)"; grep -A8 'kernel profile' $l | head -10; done
echo "all at $(el)s"
