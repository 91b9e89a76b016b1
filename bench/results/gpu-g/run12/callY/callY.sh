#!/usr/bin/env bash
# call Y (1 GPU): wgmma variants (a: 2 buffers 3 CTAs, b: 2 buffers 2 CTAs, c: 3 buffers 2 CTAs, d: 4 buffers 2 CTAs): ptxas report, prefill A/B, ncu of a, tests of c and d.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=/tmp/rY; mkdir -p $R
B=/tmp/bY; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
wait; chmod +x $B/*
export PATH=$PATH:/usr/local/cuda/bin
for v in a b c d; do ptxas -arch=sm_90a -v -o /dev/null .dev/w/$v/attention_sm90a.ptx > $R/ptxas-$v.txt 2>&1; echo "$v: $(grep -c C7512 $R/ptxas-$v.txt) serialized; $(grep -E 'Used' $R/ptxas-$v.txt | awk '{print $5}' | tr '\n' ' ') regs; $(grep -c 'bytes spill stores' $R/ptxas-$v.txt) spill lines $(grep 'spill stores' $R/ptxas-$v.txt | awk '{print $5}' | tr '\n' ' ')"; grep C7512 $R/ptxas-$v.txt | sed 's/.*function//' ; done
bufs() { case $1 in a|b) echo 2;; c) echo 3;; d) echo 4;; esac; }
for i in 1 2; do for v in a b c d; do
 (cd kernels && KVD_CUDABIN_DIR=$PWD/../.dev/w/$v KVD_WGMMA_BUFS=$(bufs $v) KVD_BENCH_ONLY=prefill-1x5000- $B/kernels.test -test.timeout 120s -test.run '^$' -test.bench 'GPUAttention/prefill-1x5000-(bf16|fp8)/split8/mma/wgmma' -test.benchtime 20x) > $R/bench-$v-$i.log 2>&1
 grep -E "^Benchmark" $R/bench-$v-$i.log | awk -v v=$v '{print v, $1, $3, $4}'
done; done
echo "bench at $(el)s"; tar czf $OUT/r.tgz -C $R .
for dt in bf16 fp8; do
(cd kernels && KVD_BENCH_ONLY=prefill-1x5000-$dt timeout 200 ncu --kernel-name regex:flash_paged_wgmma_${dt}_hd128 --launch-skip 2 --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,lts__t_bytes.sum.per_second,sm__inst_executed_pipe_tensor_op_gmma.sum,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active $B/kernels.test -test.run "^$" -test.bench "GPUAttention/prefill-1x5000-$dt/split8/mma/wgmma$" -test.benchtime 3x) > $R/ncu-$dt.txt 2>&1; echo "ncu $dt rc=$? at $(el)s"
grep -E "Duration|Memory Throughput|L2 Cache Throughput|DRAM Throughput|Compute \(SM\)|Issue Slots Busy|Achieved Occupancy|Registers Per|lts__t_bytes.sum.per_second|gmma_cycles_active|Warp Cycles Per Issued|No Eligible|stalled_(long_scoreboard|barrier|wait|short_scoreboard|math_pipe_throttle|mio_throttle|lg_throttle|dispatch_stall|membar|sleeping|tex_throttle|no_instruction|not_selected|selected|branch_resolving|drain|misc|imc_miss)_per" $R/ncu-$dt.txt | sed 's/  */ /g' | head -40
done
tar czf $OUT/r.tgz -C $R .
for v in c d; do
(cd kernels && KVD_CUDABIN_DIR=$PWD/../.dev/w/$v KVD_WGMMA_BUFS=$(bufs $v) $B/kernels.test -test.run 'GPUAttention' -test.count=1 -test.v) > $R/kernels-$v.log 2>&1; echo "kernels $v rc=$? at $(el)s"; grep -E "^(--- FAIL|FAIL|ok|PASS)" $R/kernels-$v.log | head -3
done
echo "all at $(el)s"; tar czf $OUT/r.tgz -C $R .
