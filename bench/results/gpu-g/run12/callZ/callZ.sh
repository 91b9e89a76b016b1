#!/usr/bin/env bash
# call Z (1 GPU): wgmma e (row cursor in the loaders, rescale only when a max moved, row sums reduced at the end) against a; kernel tests; ncu; SASS; served fp8 full and 26/1024 at C=128.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=/tmp/rZ; mkdir -p $R
B=/tmp/bZ; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
wait; chmod +x $B/*
export PATH=$PATH:/usr/local/cuda/bin
for v in a e; do ptxas -arch=sm_90a -v -o $R/$v.cubin .dev/w/$v/attention_sm90a.ptx > $R/ptxas-$v.txt 2>&1; echo "$v: $(grep -c C7512 $R/ptxas-$v.txt) serialized; $(grep -E 'Used' $R/ptxas-$v.txt | awk '{print $5}' | tr '\n' ' ') regs; spills $(grep 'spill stores' $R/ptxas-$v.txt | awk '{print $5}' | tr '\n' ' ')"; grep C7512 $R/ptxas-$v.txt | sed 's/.*function//' ; done
cuobjdump -sass $R/e.cubin > $R/e.sass 2>&1; cuobjdump -sass $R/a.cubin > $R/a.sass 2>&1; ls -la $R/*.sass
for i in 1 2; do for v in a e; do
 (cd kernels && KVD_CUDABIN_DIR=$PWD/../.dev/w/$v KVD_BENCH_ONLY=prefill-1x5000- $B/kernels.test -test.timeout 120s -test.run '^$' -test.bench 'GPUAttention/prefill-1x5000-(bf16|fp8)/split8/mma/wgmma' -test.benchtime 20x) > $R/bench-$v-$i.log 2>&1
 grep -E "^Benchmark" $R/bench-$v-$i.log | awk -v v=$v '{print v, $1, $3, $4}'
done; done
echo "bench at $(el)s"; tar czf $OUT/r.tgz -C $R .
(cd kernels && $B/kernels.test -test.run 'GPUAttention|GPUSparsePrefill' -test.count=1 -test.v) > $R/kernels-gpu.log 2>&1; rc=$?
echo "kernels rc=$rc at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-gpu.log | head -5; grep -B2 -A8 -- "--- FAIL" $R/kernels-gpu.log | grep -v '^=== ' | head -30
tar czf $OUT/r.tgz -C $R .
(cd kernels && KVD_BENCH_ONLY=prefill-1x5000-bf16 timeout 200 ncu --kernel-name regex:flash_paged_wgmma_bf16_hd128 --launch-skip 2 --launch-count 1 --section SpeedOfLight --section InstructionStats --section WarpStateStats --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,lts__t_bytes.sum.per_second,smsp__inst_executed.sum,smsp__sass_inst_executed_op_shared_ld.sum $B/kernels.test -test.run "^$" -test.bench "GPUAttention/prefill-1x5000-bf16/split8/mma/wgmma$" -test.benchtime 3x) > $R/ncu-bf16.txt 2>&1; echo "ncu rc=$? at $(el)s"
grep -E "Duration|Issue Slots Busy|Executed Instructions |Warp Cycles Per Issued|lts__t_bytes.sum.per_second|smsp__inst_executed.sum|stalled_(barrier|wait|long_scoreboard|short_scoreboard|math_pipe_throttle|dispatch_stall|not_selected)_per" $R/ncu-bf16.txt | sed 's/  */ /g' | head -20
tar czf $OUT/r.tgz -C $R .
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq"; }
if [ $rc = 0 ]; then
 BIN=$B OUT=$R/fp8-c128 PARTS="wide" WIDE=128 KV_DTYPE=fp8 bash tools/gpu/bench.sh 2>&1 | f | sed 's/^/fp8-c128 /'
 echo "fp8 at $(el)s"; tar czf $OUT/r.tgz -C $R .
fi
echo "all at $(el)s"
