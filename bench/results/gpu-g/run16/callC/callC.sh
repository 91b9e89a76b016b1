#!/usr/bin/env bash
# run 16 call C (1 GPU): the tree with async scheduling and 8192 tokens a step (on an H200) by default, uncommitted.
# The GPU e2e tests; full KV over fp8 at C=256 over 1024 (defaults); then 26/1024 at C=256 over 768 if time is left.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bC; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
xz -dc .dev/m16.tar.xz | tar xf - &
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
KVD_TEST_BIN_DIR=$B KVD_GPU_REPORT=$R/agreement.md timeout 200 bash -c "cd e2e && $B/e2e.test -test.run GPU -test.v -test.count=1" > $R/e2e-gpu.log 2>&1; rc=$?
echo "e2e rc=$rc at $(el)s"; grep -E "^(--- |FAIL|ok|PASS)" $R/e2e-gpu.log | head -8; grep -iE "concurrent sidecar|GPU agrees|not a near-tie|scheduled ahead|seeds" $R/e2e-gpu.log | head -14
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq\|of 2[0-4][0-9]\.\|of 25[0-5]\." | tail -3; }
left=$(( 585 - $(el) ))
BIN=$B OUT=$R/full PARTS=wide WIDE=256 WIDE_N=1024 KV_DTYPE=fp8 ONLY=full-sidecar-c256-n1024 timeout $left bash tools/gpu/bench.sh > $R/full.out 2>&1
f < $R/full.out | sed "s/^/full /"
echo "full at $(el)s"
left=$(( 585 - $(el) ))
if [ $left -gt 150 ]; then
BIN=$B OUT=$R/s26 PARTS=wide WIDE=256 WIDE_N=768 KV_DTYPE=fp8 ONLY=grid-26-1024-c256-n768 timeout $left bash tools/gpu/bench.sh > $R/s26.out 2>&1
f < $R/s26.out | sed "s/^/26-1024 /"
fi
echo "all at $(el)s"
