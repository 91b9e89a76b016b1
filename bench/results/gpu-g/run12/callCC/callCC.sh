#!/usr/bin/env bash
# call CC (1 GPU): the tree of call BB, steady state: fp8 full KV and 26/1024 at C=128 over 384 requests (three waves' worth).
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=/tmp/rCC; mkdir -p $R
B=/tmp/bCC; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq"; }
BIN=$B OUT=$OUT/fp8-c128-n384 PARTS="wide" WIDE=128 WIDE_N=384 KV_DTYPE=fp8 timeout 300 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-c128-n384 /'
echo "all at $(el)s"; tar czf $OUT/r.tgz -C $R .
