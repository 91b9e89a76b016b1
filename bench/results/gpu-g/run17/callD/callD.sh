#!/usr/bin/env bash
# run 17 call D (1 GPU): call C's binaries (the transposed decode tiles by default): 26/1024 served at C=256 over 1024 (ratio to call C's full KV, 2580.2).
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bD; mkdir -p $B
for f in .dev/bin/gateway.xz .dev/bin/kvd.xz .dev/bin/serve.xz; do xz -dc $f > $B/$(basename $f .xz) & done
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
BIN=$B OUT=$R/s26 PARTS=wide WIDE=256 WIDE_N=1024 KV_DTYPE=fp8 ONLY=grid-26-1024-c256-n1024 timeout 245 bash tools/gpu/bench.sh > $R/s26.out 2>&1
grep -E "out tok/s|exited|no health" $R/s26.out | tail -2 | sed "s/^/26-1024 /"
echo "all at $(el)s"
tar czf $OUT/r.tgz -C $R . 2>/dev/null
