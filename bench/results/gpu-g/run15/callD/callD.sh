#!/usr/bin/env bash
# call D (1 GPU): the tree committed as HEAD after 769d03d (bf16 gate/up by default, TestGPUSidecar's near-tie check, TestGPUMatchesCPU's three seeds over fp8): the GPU e2e tests; then served fp8 full KV at C=256 over 768 and C=128 over 384 (with KVD_GATEUP_BF16=0 if the e2e tests failed).
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bD; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
xz -dc .dev/m16.tar.xz | tar xf - &
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
KVD_TEST_BIN_DIR=$B KVD_GPU_REPORT=$R/agreement.md timeout 200 bash -c "cd e2e && $B/e2e.test -test.run GPU -test.v -test.count=1" > $R/e2e-gpu.log 2>&1; rc=$?
echo "e2e rc=$rc at $(el)s"; grep -E "^(--- |FAIL|ok|PASS)" $R/e2e-gpu.log | head -8; grep -iE "concurrent sidecar|GPU agrees|not a near-tie|seeds" $R/e2e-gpu.log | head -12
G=""; [ $rc = 0 ] || G="KVD_GATEUP_BF16=0"
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq\|of 2[0-4][0-9]\.\|of 25[0-5]\."; }
env $G BIN=$B OUT=$R/c256 PARTS="wide" WIDE=256 WIDE_N=768 KV_DTYPE=fp8 ONLY=full-sidecar-c256-n768 timeout 200 bash tools/gpu/bench.sh 2>&1 | f | sed "s/^/c256 $G /"
echo "c256 at $(el)s"
env $G BIN=$B OUT=$R/c128 PARTS="wide" WIDE=128 WIDE_N=384 KV_DTYPE=fp8 ONLY=full-sidecar-c128-n384 timeout 120 bash tools/gpu/bench.sh 2>&1 | f | sed "s/^/c128 $G /"
echo "all at $(el)s"
