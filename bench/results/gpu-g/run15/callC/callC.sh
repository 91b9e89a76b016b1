#!/usr/bin/env bash
# call C (1 GPU): 769d03d (upload stream, fused residual by default): TestGPUUploadOrder with and without the upload stream, every GPU kernel test, then served fp8 full KV C=128 N=384 with KVD_CPUPROFILE (gateway and kvd) and KVD_KERNEL_PROFILE=600:100.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bC; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
wait; chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/card.csv 2>&1
for u in 1 0; do
 (cd kernels && KVD_UPLOAD_STREAM=$u timeout 60 $B/kernels.test -test.run 'UploadOrder' -test.count=1 -test.v) > $R/upload-$u.log 2>&1
 echo "UploadOrder KVD_UPLOAD_STREAM=$u rc=$?"; grep -E "^(--- |FAIL|ok)|upload" $R/upload-$u.log | head -4
done
(cd kernels && timeout 170 $B/kernels.test -test.run 'GPU' -test.count=1 -test.v) > $R/kernels-gpu.log 2>&1; rc=$?
echo "kernels GPU rc=$rc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-gpu.log | head -6; grep -c -- "--- PASS" $R/kernels-gpu.log
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq\|of 2[0-4][0-9]\.\|of 25[0-5]\."; }
KVD_CPUPROFILE=$R/cpu-%s.pprof KVD_KERNEL_PROFILE=600:100 BIN=$B OUT=$R/prof PARTS="wide" WIDE=128 WIDE_N=384 KV_DTYPE=fp8 ONLY=full-sidecar-c128-n384 timeout 130 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/default /'
echo "prof at $(el)s"
mkdir -p $R/prof/x && tar xzf $R/prof/bench-wide.tgz -C $R/prof/x
for l in $R/prof/x/logs/*.gateway.log; do sed -n '/kernel profile/,$p' $l > $R/profile.txt; done
rm -rf $R/prof/x
ls -la $R/*.pprof
echo "== profile"; head -3 $R/profile.txt; grep -A8 "device idle" $R/profile.txt | head -10
