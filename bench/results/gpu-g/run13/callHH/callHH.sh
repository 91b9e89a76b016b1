#!/usr/bin/env bash
# call HH (1 GPU): TestGPUSidecar three times with the new sm_90a PTX (fp8 prefill over f16 tiles) and three with HEAD's (bf16 tiles), for the spread of its concurrent-agreement rate.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bHH; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
xz -dk .dev/old/attention_sm90a.ptx.xz &
xz -dc .dev/m16.tar.xz | tar xf - &
wait; chmod +x $B/*
for v in new old; do
 d=""; [ $v = old ] && d=$PWD/.dev/old
 KVD_CUDABIN_DIR=$d KVD_TEST_BIN_DIR=$B timeout 70 bash -c "cd e2e && $B/e2e.test -test.run GPUSidecar -test.v -test.count=3" > $R/e2e-$v.log 2>&1; echo "$v rc=$? at $(el)s"
 grep -E "concurrent|^--- |FAIL|^ok|PASS|KVD_CUDABIN" $R/e2e-$v.log | sed "s/^/$v /" | head -12
done
echo "all at $(el)s"
