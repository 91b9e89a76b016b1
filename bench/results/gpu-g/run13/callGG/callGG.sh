#!/usr/bin/env bash
# call GG (1 GPU): the tree to be committed (fp8 wgmma prefill over f16 tiles, to_bf16 four a thread, decode as HEAD): e2e GPU tests, then fp8 full KV and 26/1024 at C=128 over 384 requests with KVD_KERNEL_PROFILE=600:100.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bGG; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
xz -dc .dev/m16.tar.xz | tar xf - &
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
KVD_TEST_BIN_DIR=$B KVD_GPU_REPORT=$R/agreement.md timeout 170 bash -c "cd e2e && $B/e2e.test -test.run GPU -test.v -test.count=1" > $R/e2e-gpu.log 2>&1; rc=$?
echo "e2e rc=$rc at $(el)s"; grep -E "^(--- |FAIL|ok|PASS)" $R/e2e-gpu.log | head -8
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq"; }
KVD_KERNEL_PROFILE=600:100 BIN=$B OUT=$R/fp8-c128-n384 PARTS="wide" WIDE=128 WIDE_N=384 KV_DTYPE=fp8 timeout 260 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-c128-n384 /'
for l in $R/fp8-c128-n384/logs/*.gateway.log; do echo "== $l"; grep -A12 'kernel profile' $l | head -14; done
echo "all at $(el)s"
