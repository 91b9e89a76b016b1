#!/usr/bin/env bash
# call V (1 GPU): TestGPUSparsePrefill over the committed kernels (flash_prompt_mma's ex2.approx first on a card).
set -u
R=/tmp/rV; mkdir -p $R; B=/tmp/bV; mkdir -p $B
xz -dc .dev/bin/kernels.test.xz > $B/kernels.test; chmod +x $B/kernels.test
(cd kernels && timeout 170 $B/kernels.test -test.run 'GPUSparsePrefill' -test.count=1 -test.v) > $R/kernels-sparse.log 2>&1; echo "rc=$?"
grep -E "^(--- FAIL|FAIL|ok|PASS|--- PASS)" $R/kernels-sparse.log | head; tar czf $OUT/r.tgz -C $R .
