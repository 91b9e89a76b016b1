#!/usr/bin/env bash
# run 16 call A (1 GPU): ea3b58e's binaries. Full KV over fp8 at C=256 over 768 (run 15 call D's workload)
# with --async-scheduling, then without; then, if time is left, async at C=128 over 384 with the kernel profile.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bA; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
wait; chmod +x $B/*
f() { grep -E "out tok/s|forward\+sample|host between|exited|no health|ahead" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq\|of 2[0-4][0-9]\.\|of 25[0-5]\." | tail -6; }
BIN=$B OUT=$R/c256 PARTS=async ASYNC_C=256 ASYNC_N=768 KV_DTYPE=fp8 timeout 400 bash tools/gpu/bench.sh > $R/c256.out 2>&1
f < $R/c256.out | sed "s/^/c256 /"
echo "c256 both at $(el)s"
left=$(( 560 - $(el) ))
if [ $left -gt 110 ]; then
KVD_KERNEL_PROFILE=600:100 GW_FLAGS="--async-scheduling" BIN=$B OUT=$R/c128p PARTS=wide WIDE=128 WIDE_N=384 KV_DTYPE=fp8 ONLY=full-sidecar-c128-n384 timeout $left bash tools/gpu/bench.sh > $R/c128p.out 2>&1
f < $R/c128p.out | sed "s/^/c128 async prof /"
fi
echo "all at $(el)s"
