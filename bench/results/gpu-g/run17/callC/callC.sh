#!/usr/bin/env bash
# run 17 call C (1 GPU): the tree with the transposed decode tiles (swap) as the default, uncommitted, fat binaries by make kernels (nvcc 11.8).
# Tests (TestGPUAttention at head dim 128 over fp8 and bfloat16), the decode benchmark against the old fat binary (HEAD c1c257e's, KVD_CUDABIN_DIR),
# then full KV served at C=256 over 1024 with the new default, then with the old kernel.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bC; mkdir -p $B /tmp/v/old
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
xz -dc .dev/vx/old.fatbin.xz > /tmp/v/old/attention.fatbin &
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
(cd kernels && timeout 150 $B/kernels.test -test.run 'GPUAttention$/.*/hd=128/.*/.*/(fp8|bfloat16)' -test.v) > $R/test-new.log 2>&1; rc=$?
echo "test new rc=$rc $(grep -c -- '--- PASS' $R/test-new.log) pass $(grep -c -- '--- FAIL' $R/test-new.log) fail at $(el)s"
for v in new old new; do
  d=""; [ $v = old ] && d=/tmp/v/old
  (cd kernels && KVD_CUDABIN_DIR=$d timeout 60 $B/kernels.test -test.run '^$' -test.bench 'GPUAttention/decode-(256x5000-fp8|128x5000-fp8|128x5000-bf16|32x1100-fp8-h2o)/split4/v2/dmma$' -test.benchtime 40x) >> $R/bench-$v.log 2>&1
  echo "bench $v at $(el)s: $(grep -P 'ns/op' $R/bench-$v.log | tail -4 | awk '{split($1,a,"/"); printf "%s %.1f us; ", a[2], $3/1000}')"
done
f() { grep -E "out tok/s|exited|no health" | tail -2; }
for v in new old; do
  left=$(( 590 - $(el) ))
  [ $left -lt 235 ] && { echo "no time for $v ($left s left)"; continue; }
  d=""; [ $v = old ] && d=/tmp/v/old
  KVD_CUDABIN_DIR=$d BIN=$B OUT=$R/full-$v PARTS=wide WIDE=256 WIDE_N=1024 KV_DTYPE=fp8 ONLY=full-sidecar-c256-n1024 timeout $left bash tools/gpu/bench.sh > $R/full-$v.out 2>&1
  f < $R/full-$v.out | sed "s/^/full $v /"; echo "at $(el)s"
done
echo "all at $(el)s"
tar czf $OUT/r.tgz -C $R . 2>/dev/null
