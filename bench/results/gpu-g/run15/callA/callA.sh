#!/usr/bin/env bash
# call A (1 GPU): the default tree at 6a6d062 (run 14's MLP changes off): served fp8 full KV at C=128 over 384 with KVD_KERNEL_PROFILE=600:100 (the idle table by kernel), the GPU e2e tests, then PARTS=mlp (each MLP change alone).
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bA; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
xz -dc .dev/m16.tar.xz | tar xf - &
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq\|of 2[0-4][0-9]\.\|of 25[0-5]\."; }
KVD_KERNEL_PROFILE=600:100 BIN=$B OUT=$R/prof PARTS="wide" WIDE=128 WIDE_N=384 KV_DTYPE=fp8 ONLY=full-sidecar-c128-n384 timeout 130 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/prof /'
echo "prof at $(el)s"
mkdir -p $R/prof/x && tar xzf $R/prof/bench-wide.tgz -C $R/prof/x
for l in $R/prof/x/logs/*.gateway.log; do sed -n '/kernel profile/,$p' $l > $R/profile.txt; done
KVD_TEST_BIN_DIR=$B KVD_GPU_REPORT=$R/agreement.md timeout 170 bash -c "cd e2e && $B/e2e.test -test.run GPU -test.v -test.count=1" > $R/e2e-gpu.log 2>&1; rc=$?
echo "e2e rc=$rc at $(el)s"; grep -E "^(--- |FAIL|ok|PASS)" $R/e2e-gpu.log | head -8; grep -iE "concurrent sidecar|GPU agrees" $R/e2e-gpu.log | head -8
BIN=$B OUT=$R/mlp PARTS=mlp timeout 250 bash tools/gpu/bench.sh 2>&1 | sed 's/^/mlp /'
echo "all at $(el)s"
echo "== profile (head, idle part)"; head -30 $R/profile.txt; grep -n -i -A25 "idle" $R/profile.txt | head -40
