#!/usr/bin/env bash
# call DD (1 GPU): b6bbee2, steady state at C=256: fp8 full KV and 26/1024 over 768 requests (three waves' worth).
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
B=/tmp/bDD; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $OUT/card.csv 2>&1
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq\|of 25[0-5]\.\|of 1[0-9][0-9]\.[0-9] seq"; }
BIN=$B OUT=$OUT/fp8-c256-n768 PARTS="wide" WIDE=256 WIDE_N=768 KV_DTYPE=fp8 timeout 570 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-c256-n768 /'
echo "all at $(el)s"
