#!/usr/bin/env bash
# run 16 call B (1 GPU): ea3b58e + --max-num-batched-tokens' default by device (8192 on an H200), uncommitted.
# Full KV over fp8 at C=256 over 768, all with --async-scheduling: the new default (8192 a step), then 4096, then 2048 (the old default).
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=$OUT/r; mkdir -p $R
B=/tmp/bB; mkdir -p $B
for f in .dev/bin/*.xz; do xz -dc $f > $B/$(basename $f .xz) & done
wait; chmod +x $B/*
f() { grep -E "out tok/s|forward\+sample|exited|no health" | grep -v "of [0-9.]*[1-9] sequences\|of 3[0-1]\.\|of 12[0-7]\.\|of [0-9][0-9]\.[0-9] seq\|of 2[0-4][0-9]\.\|of 25[0-5]\." | tail -4; }
for t in 8192 4096 2048; do
  left=$(( 585 - $(el) )); [ $left -gt 120 ] || break
  fl="--async-scheduling"; [ $t = 8192 ] || fl="$fl --max-num-batched-tokens $t"
  GW_FLAGS="$fl" BIN=$B OUT=$R/t$t PARTS=wide WIDE=256 WIDE_N=768 KV_DTYPE=fp8 ONLY=full-sidecar-c256-n768 timeout $left bash tools/gpu/bench.sh > $R/t$t.out 2>&1
  grep -h "tokens per step" $R/t$t/logs/*.gateway.log 2>/dev/null | head -1 | sed "s/^/t$t /"
  f < $R/t$t.out | sed "s/^/t$t /"
  echo "t$t at $(el)s"
done
