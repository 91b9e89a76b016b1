#!/usr/bin/env bash
# run 17 call B (1 GPU): fp8 decode variants built here by nvcc 11.8 (sm_90): bits1/bits2 (E4M3 widened by bit ops: V / K and V),
# swap (K as the mma's A operand, queries as B: half the mma), swapbits (swap + bits2), swap4 (swap capped at 4 CTAs an SM).
# Tests (hd=128 subtests), the decode benchmark (tiled pool), then full KV served at C=256 over 768 with the default and with the fastest variant.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bB; mkdir -p $B /tmp/v
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
for f in .dev/vx/*.xz; do n=$(basename $f .fatbin.xz); mkdir -p /tmp/v/$n; xz -dc $f > /tmp/v/$n/attention.fatbin & done
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
dir() { [ $1 = default ] && echo "" || echo /tmp/v/$1; }
ok=""
for v in swap swapbits swap4; do
  pat='GPUAttention$/.*/hd=128/.*/fp8'; [ $v = swap ] && pat='GPUAttention$/.*/hd=128/.*/(fp8|bfloat16)'
  (cd kernels && KVD_CUDABIN_DIR=$(dir $v) timeout 100 $B/kernels.test -test.run "$pat" -test.v) > $R/test-$v.log 2>&1; rc=$?
  echo "test $v rc=$rc $(grep -c -- '--- PASS' $R/test-$v.log) pass $(grep -c -- '--- FAIL' $R/test-$v.log) fail at $(el)s"
  [ $rc = 0 ] && ok="$ok $v"
done
for v in default bits1 bits2 swap swapbits swap4 default; do
  (cd kernels && KVD_CUDABIN_DIR=$(dir $v) timeout 60 $B/kernels.test -test.run '^$' -test.bench 'GPUAttention/decode-(256x5000-fp8|128x5000-fp8|128x5000-bf16|32x1100-fp8-h2o)/split4/v2/dmma$' -test.benchtime 40x) >> $R/bench-$v.log 2>&1
  echo "bench $v at $(el)s: $(grep -oE 'decode-[0-9a-z-]+/split4/v2/dmma[^ ]* +[0-9]+ +[0-9]+ ns/op' $R/bench-$v.log | tail -4 | awk '{split($1,a,"/"); printf "%s %.1f us; ", a[1], $3/1000}')"
done
best=default; bt=$(grep -oE 'decode-256x5000-fp8/split4/v2/dmma[^ ]* +[0-9]+ +[0-9]+' $R/bench-default.log | tail -1 | awk '{print $3}')
for v in bits1 bits2 $ok; do
  x=$(grep -oE 'decode-256x5000-fp8/split4/v2/dmma[^ ]* +[0-9]+ +[0-9]+' $R/bench-$v.log | tail -1 | awk '{print $3}')
  [ -n "$x" ] && [ "$x" -lt "$bt" ] && { best=$v; bt=$x; }
done
echo "fastest at 256x5000: $best ($bt ns)"
f() { grep -E "out tok/s|exited|no health" | tail -2; }
for v in default $best; do
  left=$(( 590 - $(el) ))
  [ $left -lt 185 ] && { echo "no time for $v ($left s left)"; continue; }
  KVD_CUDABIN_DIR=$(dir $v) BIN=$B OUT=$R/full-$v PARTS=wide WIDE=256 WIDE_N=768 KV_DTYPE=fp8 ONLY=full-sidecar-c256-n768 timeout $left bash tools/gpu/bench.sh > $R/full-$v.out 2>&1
  f < $R/full-$v.out | sed "s/^/full $v /"
  [ $v = default ] && [ $best = default ] && break
done
echo "all at $(el)s"
tar czf $OUT/r.tgz -C $R . 2>/dev/null
