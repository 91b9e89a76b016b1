#!/usr/bin/env bash
# call B (1 GPU): 6a6d062 + uploads on their own stream (KVD_UPLOAD_STREAM, default on): TestGPUSidecar; served fp8 full KV C=128 N=384 with KVD_KERNEL_PROFILE=600:100; e2e GPUSidecar|GPUMatchesCPU with KVD_FUSED_RESIDUAL=1; served with KVD_FUSED_RESIDUAL=1.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bB; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
xz -dc .dev/m16.tar.xz | tar xf - &
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
KVD_TEST_BIN_DIR=$B timeout 60 bash -c "cd e2e && $B/e2e.test -test.run GPUSidecar -test.v -test.count=1" > $R/e2e-sidecar.log 2>&1; rc=$?
echo "e2e sidecar rc=$rc at $(el)s"; grep -E "^(--- |FAIL|ok|PASS)" $R/e2e-sidecar.log | head -4; grep -iE "concurrent sidecar|identical" $R/e2e-sidecar.log | head -8
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq\|of 2[0-4][0-9]\.\|of 25[0-5]\."; }
if [ $rc = 0 ]; then
KVD_KERNEL_PROFILE=600:100 BIN=$B OUT=$R/prof PARTS="wide" WIDE=128 WIDE_N=384 KV_DTYPE=fp8 ONLY=full-sidecar-c128-n384 timeout 130 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/upstream /'
echo "prof at $(el)s"
mkdir -p $R/prof/x && tar xzf $R/prof/bench-wide.tgz -C $R/prof/x
for l in $R/prof/x/logs/*.gateway.log; do sed -n '/kernel profile/,$p' $l > $R/profile.txt; done
rm -rf $R/prof/x
fi
KVD_FUSED_RESIDUAL=1 KVD_TEST_BIN_DIR=$B KVD_GPU_REPORT=$R/agreement-fused.md timeout 170 bash -c "cd e2e && $B/e2e.test -test.run 'GPUSidecar|GPUMatchesCPU' -test.v -test.count=1" > $R/e2e-fused.log 2>&1; frc=$?
echo "e2e fused rc=$frc at $(el)s"; grep -E "^(--- |FAIL|ok|PASS)" $R/e2e-fused.log | head -4; grep -iE "concurrent sidecar|GPU agrees" $R/e2e-fused.log | head -8
KVD_FUSED_RESIDUAL=1 BIN=$B OUT=$R/fused PARTS="wide" WIDE=128 WIDE_N=384 KV_DTYPE=fp8 ONLY=full-sidecar-c128-n384 timeout 120 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fused /'
echo "all at $(el)s"
echo "== profile"; head -3 $R/profile.txt; grep -A14 "device idle" $R/profile.txt | head -16; grep "step timing" $R/profile.txt | head -3
