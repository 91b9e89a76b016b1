#!/usr/bin/env bash
# `make gpu-bench`: issue G's measurements on a GPU machine, in parts that
# each fit one device call (PARTS, default all of them, in this order):
#   sidecar  the GPU sidecar's e2e test (two processes over CUDA IPC, against
#            embedded), then the 8B serving workload through both, full KV;
#   grid     the seed's grid through the sidecar: sparse layers {22,26,31} x
#            windows {1536,1280,1024}, the pool as large as the card allows;
#   capped   full KV and the grid again with weights + KV in a 24 GB card;
#   floor    the decode step against its floor (bytes read / copy bandwidth);
#   hf       HF transformers on the same card and workload (tools/hf/bench.py);
#   accuracy issue E's accuracy table on the GPU, full sample counts;
#   wide     full KV and 26/1024 at concurrency WIDE (default 64), WIDE_N
#            requests (default WIDE);
#   slo      the most tokens/s with p99 TTFT under 2 s (serve -search);
#   bf16     a bfloat16 pool: full KV and 26/1024, uncapped and capped;
#   mlp      the GPU e2e tests with each of the MLP's two defaults off
#            (KVD_GATEUP_BF16=0, KVD_FUSED_RESIDUAL=0), for the agreement
#            between a batch and its requests one by one with each;
#   async    full KV with and without --async-scheduling (ASYNC_C, ASYNC_N);
#   ipc, select, evict, attn, mma, fused  diagnostics and trials (see each below).
# Every serving run is bench/serve at INPUT in / OUTPUT out tokens (random
# ids, ignore_eos), closed loop at concurrency C over N requests, on the 8B
# shapes with dummy weights. Results (JSON per run) and logs go to
# $OUT/bench-PARTS.tgz, rewritten after every run, and each run prints a line as
# it ends, so a cut-off call keeps what ran.
set -uo pipefail
cd "$(dirname "$0")/../.."
# One archive per set of parts, so two calls with the same OUT keep both.
TGZ=${OUT:-/tmp/kvd-bench}/bench-$(echo ${PARTS:-all} | tr ' ' '-').tgz
OUT=$(mktemp -d)
mkdir -p "$(dirname "$TGZ")"
PARTS=${PARTS:-sidecar grid capped floor hf accuracy}
M8=${M8:-bench/models/llama-3.1-8b}
INPUT=${INPUT:-5000}
OUTPUT=${OUTPUT:-500}
C=${C:-32}
N=${N:-32}
CAPPED_C=${CAPPED_C:-16}
CAPPED_N=${CAPPED_N:-16}
CAPPED_KV=${CAPPED_KV:-6GiB} # a 24 GiB card less 16 GB of bf16 weights and ~2.5 GiB of context and activations
# The gateway's step on such a card: 2048 tokens, its default below 70 GiB
# (8192 on the H200 the runs use).
CAPPED_GW="--max-num-batched-tokens 2048"
DEVICE=${DEVICE:-cuda}
FORMAT=${FORMAT:-dummy}
VOCAB=${VOCAB:-128000}
GRID_LAYERS=${GRID_LAYERS:-22 26 31}
GRID_WINDOWS=${GRID_WINDOWS:-1536 1280 1024}
# The pool's dtype unless a run names another (a later flag wins):
# float32, as runs 1-6 measured, though kvd's auto is bfloat16 on a GPU;
# KV_DTYPE=auto measures kvd's default.
KV_DTYPE=${KV_DTYPE:-float32}
mkdir -p "$OUT/logs"
export KVD_STEP_TIMING=${KVD_STEP_TIMING:-100}
# KVD_KERNEL_PROFILE=FROM:N, when set, reaches every gateway started here:
# steps FROM..FROM+N-1 of each served run profiled kernel by kernel, the
# table in logs/NAME.gateway.log.
if command -v go >/dev/null && [ -z "${BIN:-}" ]; then
	tools/gpu/build.sh >/dev/null
fi
if [ -z "${BIN:-}" ]; then
	BIN=$(mktemp -d)
	for f in .dev/bin/*.xz; do xz -dc "$f" >"$BIN/$(basename "$f" .xz)"; done
	chmod +x "$BIN"/*
fi
SOCK=$(mktemp -u /tmp/kvd-bench.XXXX.sock)
PORT=${PORT:-18080}
BASE=http://127.0.0.1:$PORT
pids=()

# Pool size for the uncapped runs: the card's memory less the weights and
# room for two CUDA contexts and the largest step's activations (8192 +
# 256 tokens by default on an H200: ~6 GiB).
if [ -z "${KV:-}" ]; then
	total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
	KV=$(( ${total:-40000} * 1048576 / 1073741824 - 16 - 14 ))GiB
fi

stop() {
	for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do
		for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null
	done
	pids=()
}
trap stop EXIT

# up NAME MODE KVMEM [policy flags...]: starts kvd + gateway (sidecar) or the
# gateway alone (embedded) on the 8B model and waits until it serves;
# GW_FLAGS adds gateway flags.
up() {
	local name=$1 mode=$2 mem=$3
	shift 3
	local gw=(--model "$M8" --load-format "$FORMAT" --skip-tokenizer-init --listen 127.0.0.1:$PORT --max-num-seqs 256 --max-model-len $((INPUT + OUTPUT + 64)) --device "$DEVICE" --log-level warn)
	if [ "$mode" = sidecar ]; then
		"$BIN/kvd" serve --socket "$SOCK" --model "$M8" --device "$DEVICE" --kv-memory "$mem" --kv-cache-dtype "$KV_DTYPE" "$@" >"$OUT/logs/$name.kvd.log" 2>&1 &
		pids+=($!)
		gw+=(--kvd-socket "$SOCK")
	else
		gw+=(--embedded --kv-memory "$mem" --kv-cache-dtype "$KV_DTYPE" "$@")
	fi
	gw+=(${GW_FLAGS:-}) # last: a later flag wins
	"$BIN/gateway" serve "${gw[@]}" >"$OUT/logs/$name.gateway.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 1200); do
		curl -sf "$BASE/health" >/dev/null 2>&1 && return 0
		for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "$name: a process exited"; tail -n 5 "$OUT/logs/$name".*.log; stop; return 1; }; done
		sleep 0.1
	done
	echo "$name: no health after 120 s"
	stop
	return 1
}

# serve NAME C N: one warm-up prompt, then the measured run.
serve() {
	local name=$1 c=$2 n=$3
	curl -s "$BASE/v1/completions" -H 'Content-Type: application/json' \
		-d "{\"prompt\": [$(seq -s, 1000 $((1000 + INPUT - 1)))], \"max_tokens\": 2, \"ignore_eos\": true}" >/dev/null
	"$BIN/serve" -base "$BASE" -input-len "$INPUT" -output-len "$OUTPUT" -vocab "$VOCAB" -concurrency "$c" -num-prompts "$n" -warmup 0 \
		-out "$OUT/$name.json" >"$OUT/logs/$name.serve.txt" 2>&1
	local rc=$?
	python3 - "$OUT/$name.json" "$name" <<'PY' || tail -n 3 "$OUT/logs/$name.serve.txt"
import json, sys
r = json.load(open(sys.argv[1]))[0]
print(f"{sys.argv[2]}: {r['OutputTokensPerSec']:.1f} out tok/s, TTFT p50 {r['TTFT']['P50']/1e3:.2f} s p99 {r['TTFT']['P99']/1e3:.2f} s, TPOT p50 {r['TPOT']['P50']:.1f} ms, {r['Completed']} ok {r['Failed']} failed {r.get('FirstError', '')}")
PY
	return $rc
}

# one NAME MODE KVMEM C N [policy flags...]; ONLY, when set, names the
# runs to make (the others are skipped), for a call short of time.
one() {
	local name=$1 mode=$2 mem=$3 c=$4 n=$5
	shift 5
	if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then
		return 0
	fi
	local t0=$SECONDS
	up "$name" "$mode" "$mem" "$@" || return 1
	echo "$name: up in $((SECONDS - t0)) s"
	serve "$name" "$c" "$n"
	grep -h "step timing" "$OUT/logs/$name.gateway.log" | tail -n 2
	grep -hE "eviction timing|evict timing" "$OUT/logs/$name.kvd.log" 2>/dev/null | tail -n 2 | sed 's/^.*msg=//' 
	curl -s "$BASE/metrics" | grep -E "^kvd_(kv_blocks|gpu_memory_used)" >"$OUT/logs/$name.metrics.txt"
	[ "$mode" = sidecar ] && "$BIN/kvd" status --socket "$SOCK" --json >"$OUT/logs/$name.status.json" 2>&1
	stop
	save
}

save() { tar czf "$TGZ" -C "$OUT" .; }

grid() {
	local prefix=$1 mode=$2 mem=$3 c=$4 n=$5
	for layers in $GRID_LAYERS; do
		for w in $GRID_WINDOWS; do
			one "$prefix-$layers-$w" "$mode" "$mem" "$c" "$n" --sparse-layers "$layers" --window "$w"
		done
	done
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/card.csv"
echo "KV pool uncapped $KV, capped $CAPPED_KV; $INPUT in / $OUTPUT out; C=$C N=$N (capped C=$CAPPED_C N=$CAPPED_N)"
for part in $PARTS; do
	echo "=== $part"
	case $part in
	mlp)
		if [ ! -x "$BIN/e2e.test" ]; then
			echo "mlp: no e2e.test in $BIN"
			continue
		fi
		for v in KVD_GATEUP_BF16 KVD_FUSED_RESIDUAL; do
			(cd e2e && env "$v=0" KVD_TEST_BIN_DIR="$BIN" "$BIN/e2e.test" -test.run 'GPUSidecar|GPUMatchesCPU' -test.v -test.count=1) >"$OUT/logs/e2e-$v.log" 2>&1
			echo "$v=0: e2e exit $?"
			save
			grep -E "^--- |concurrent sidecar|GPU agrees" "$OUT/logs/e2e-$v.log" | head -12
		done
		save
		;;
	sidecar)
		if [ -x "$BIN/e2e.test" ]; then
			(cd e2e && KVD_TEST_BIN_DIR="$BIN" "$BIN/e2e.test" -test.run GPUSidecar -test.v -test.count=1) >"$OUT/logs/e2e-sidecar.log" 2>&1
			echo "e2e GPUSidecar: exit $?"
			grep -E "^(---|ok|FAIL|PASS)|identical|gpu_sidecar_test" "$OUT/logs/e2e-sidecar.log" | head -20
		fi
		one full-embedded embedded "$KV" "$C" "$N"
		one full-sidecar sidecar "$KV" "$C" "$N"
		;;
	grid) grid grid sidecar "$KV" "$C" "$N" ;;
	wide)
		# Full KV and the 26-layer / 1024 preset with WIDE requests at
		# once (default 64): the pool holds more than C=32 sequences.
		# WIDE_N requests in all (default WIDE: one wave); more than WIDE
		# measures the steady state, where new prompts fill the places of
		# finished requests instead of the batch draining at the end.
		wn=${WIDE_N:-${WIDE:-64}} sfx=""
		[ "$wn" != "${WIDE:-64}" ] && sfx="-n$wn"
		one "full-sidecar-c${WIDE:-64}$sfx" sidecar "$KV" "${WIDE:-64}" "$wn"
		one "grid-26-1024-c${WIDE:-64}$sfx" sidecar "$KV" "${WIDE:-64}" "$wn" --sparse-layers 26 --window 1024
		;;
	async)
		# Full KV with async scheduling (the default: each step scheduled
		# and reserved while the one before runs) and without, ASYNC_C at
		# once (256) over ASYNC_N requests (4 x ASYNC_C: nearer the steady
		# state than 3 x; ~210 s each at 256 over fp8 on an H200).
		ac=${ASYNC_C:-256}
		an=${ASYNC_N:-$((4 * ac))}
		one "full-sidecar-c$ac-n$an-async" sidecar "$KV" "$ac" "$an"
		GW_FLAGS="${GW_FLAGS:-} --async-scheduling=false" one "full-sidecar-c$ac-n$an-sync" sidecar "$KV" "$ac" "$an" # the gateway's flag (one's own go to kvd here)
		;;
	ipc)
		# The sidecar's decode against embedded: the pool shared as a VMM
		# file descriptor (the default) and by a legacy IPC handle.
		one full-embedded embedded "$KV" "$C" "$N"
		one full-sidecar sidecar "$KV" "$C" "$N"
		one full-sidecar-handle sidecar "$KV" "$C" "$N" --cuda-ipc handle
		;;
	fused)
		# The sparse layers' passes against what they replaced, 26 / 1024
		# and 31 / 1024 over the bfloat16 pool, uncapped: score_paged's
		# second read of K and float32 prompt tiles (KVD_SCORE_PAGED=1
		# KVD_PROMPT_F32=1), then H2O's scores from the decode pass, then
		# bf16 prompt tiles too (the defaults); the observation window's
		# votes with the split kernels (KVD_OBS_SPLIT=1) in all three.
		for L in 26 31; do
			KVD_OBS_SPLIT=1 KVD_SCORE_PAGED=1 KVD_PROMPT_F32=1 KV_DTYPE=bfloat16 one "fused-base-$L-1024-bf16" sidecar "$KV" "$C" "$N" --sparse-layers $L --window 1024
			KVD_OBS_SPLIT=1 KVD_PROMPT_F32=1 KV_DTYPE=bfloat16 one "grid-$L-1024-bf16-fused" sidecar "$KV" "$C" "$N" --sparse-layers $L --window 1024
			KVD_OBS_SPLIT=1 KV_DTYPE=bfloat16 one "grid-$L-1024-bf16-fused-p16" sidecar "$KV" "$C" "$N" --sparse-layers $L --window 1024
		done
		;;
	select)
		# The 26-layer / 1024 preset with SnapKV's choice on the device (the
		# default) and on the host (KVD_HOST_SELECT=1).
		one grid-26-1024 sidecar "$KV" "$C" "$N" --sparse-layers 26 --window 1024
		KVD_HOST_SELECT=1 one grid-26-1024-hostselect sidecar "$KV" "$C" "$N" --sparse-layers 26 --window 1024
		;;
	evict)
		# kvd's eviction chosen and compacted on the device (the default)
		# against the host's choice (KVD_HOST_EVICT=1), 26 layers / 1024.
		one grid-26-1024 sidecar "$KV" "$C" "$N" --sparse-layers 26 --window 1024
		KVD_HOST_EVICT=1 one grid-26-1024-hostevict sidecar "$KV" "$C" "$N" --sparse-layers 26 --window 1024
		;;
	slo)
		# vLLM's question: the most output tokens/s whose p99 TTFT stays
		# under SLO_BOUND (2 s), concurrency 1, 2, 4, ... (bench/serve
		# -search, SLO_N requests at each), full KV and 26 / 1024.
		for cfg in full "${SLO_SPARSE:-26/1024}"; do
			name=slo-${cfg/\//-}
			if [ "$cfg" = full ]; then set --; else set -- --sparse-layers "${cfg%/*}" --window "${cfg#*/}"; fi
			up "$name" sidecar "$KV" "$@" || continue
			"$BIN/serve" -base "$BASE" -input-len "$INPUT" -output-len "$OUTPUT" -vocab "$VOCAB" -num-prompts "${SLO_N:-16}" -warmup 1 \
				-search -ttft-bound "${SLO_BOUND:-2s}" -out "$OUT/$name.json" 2>&1 | tee "$OUT/logs/$name.serve.txt" | grep -E "^(concurrency|best)" | sed "s/^/$name: /"
			stop
			save
		done
		;;
	bf16)
		# A bfloat16 pool (kvd serve --kv-cache-dtype bfloat16): full KV and
		# 26 / 1024, uncapped, capped, and full KV WIDE at once.
		one full-sidecar-bf16 sidecar "$KV" "$C" "$N" --kv-cache-dtype bfloat16
		one grid-26-1024-bf16 sidecar "$KV" "$C" "$N" --sparse-layers 26 --window 1024 --kv-cache-dtype bfloat16
		GW_FLAGS="${GW_FLAGS:-} $CAPPED_GW" one capped-26-1024-bf16 sidecar "$CAPPED_KV" "$CAPPED_C" "$CAPPED_N" --sparse-layers 26 --window 1024 --kv-cache-dtype bfloat16
		GW_FLAGS="${GW_FLAGS:-} $CAPPED_GW" one capped-full-bf16 sidecar "$CAPPED_KV" "$CAPPED_C" "$CAPPED_N" --kv-cache-dtype bfloat16
		one "full-sidecar-c${WIDE:-64}-bf16" sidecar "$KV" "${WIDE:-64}" "${WIDE:-64}" --kv-cache-dtype bfloat16
		;;
	attn)
		# The attention kernels' tests and timings, then full KV and
		# 26 / 1024 with split_paged (KVD_ATTN_V1=1) against the default
		# split_paged_v2.
		(cd kernels && "$BIN/kernels.test" -test.run GPUAttention -test.bench GPUAttention -test.benchtime 20x) >"$OUT/attn-bench.txt" 2>&1
		grep -E "^(Benchmark|--- |ok|FAIL|PASS)" "$OUT/attn-bench.txt"
		KVD_ATTN_V1=1 one full-sidecar-attnv1 sidecar "$KV" "$C" "$N"
		one full-sidecar sidecar "$KV" "$C" "$N"
		KVD_ATTN_V1=1 one grid-26-1024-attnv1 sidecar "$KV" "$C" "$N" --sparse-layers 26 --window 1024
		one grid-26-1024 sidecar "$KV" "$C" "$N" --sparse-layers 26 --window 1024
		;;
	mma)
		# Prompts' attention on the TF32 kernels (KVD_FLASH_TF32=1) against
		# the default bf16 m16n8k16 ones: full KV and 26 / 1024, float32 and
		# bfloat16 pools.
		KVD_FLASH_TF32=1 one full-sidecar-tf32 sidecar "$KV" "$C" "$N"
		KVD_FLASH_TF32=1 one grid-26-1024-tf32 sidecar "$KV" "$C" "$N" --sparse-layers 26 --window 1024
		one full-sidecar-mma sidecar "$KV" "$C" "$N"
		one grid-26-1024-mma sidecar "$KV" "$C" "$N" --sparse-layers 26 --window 1024
		one full-sidecar-bf16-mma sidecar "$KV" "$C" "$N" --kv-cache-dtype bfloat16
		one grid-26-1024-bf16-mma sidecar "$KV" "$C" "$N" --sparse-layers 26 --window 1024 --kv-cache-dtype bfloat16
		;;
	capped)
		GW_FLAGS="${GW_FLAGS:-} $CAPPED_GW" one capped-full sidecar "$CAPPED_KV" "$CAPPED_C" "$CAPPED_N"
		GW_FLAGS="${GW_FLAGS:-} $CAPPED_GW" grid capped sidecar "$CAPPED_KV" "$CAPPED_C" "$CAPPED_N"
		;;
	floor)
		(cd kernels && "$BIN/kernels.test" -test.run '^$' -test.bench 'GPU$/copy' -test.benchtime 20x) >"$OUT/copy.txt" 2>&1
		grep -E "^Benchmark" "$OUT/copy.txt"
		"$BIN/forward" --model "$M8" --load-format dummy --device cuda --runs 16x5000,32x5000 --decode 32 >"$OUT/floor.md" 2>"$OUT/logs/floor.log"
		cat "$OUT/floor.md"
		;;
	hf)
		timeout "${HF_TIMEOUT:-420}" python3 tools/hf/bench.py --model "$M8" --input-len "$INPUT" --output-len "$OUTPUT" --mode "${HF_MODE:-both}" --batches "${HF_BATCHES:-32,64,48}" --requests "${HF_REQUESTS:-64}" --out "$OUT/hf.json" 2>"$OUT/logs/hf.log"
		echo "hf: exit $?"
		;;
	accuracy)
		# ACC_SAMPLES (default the 100-per-task set); ACC_PARALLEL
		# gateways at once (each its own CUDA context: the GPU time-slices
		# them), each sent ACC_CONCURRENCY samples at once to batch;
		# ACC_RESUME=FILE goes on from an earlier call's accuracy-raw.json;
		# ACC_TIMEOUT seconds stops it in time to archive what it scored;
		# ACC_EXTRA adds harness flags (-kv-cache-dtype-also bfloat16: full
		# KV and 26/1024 again over a bfloat16 pool, paired with the rest);
		# ACC_CONFIGS runs only those configurations (-configs, as -list
		# numbers them), to split a run over GPUs: one call per GPU, each
		# with its CUDA_VISIBLE_DEVICES, then accuracy -merge the raw files.
		timeout -s INT "${ACC_TIMEOUT:-0}" "$BIN/accuracy" -samples "${ACC_SAMPLES:-bench/accuracy/samples-100.json.gz}" -gateway "$BIN/gateway" \
			-parallel "${ACC_PARALLEL:-5}" -concurrency "${ACC_CONCURRENCY:-16}" -device cuda \
			-raw-out "$OUT/accuracy-raw.json" ${ACC_RESUME:+-resume "$ACC_RESUME"} ${ACC_CONFIGS:+-configs "$ACC_CONFIGS"} ${ACC_EXTRA:-} -out "$OUT/accuracy-gpu.md" >"$OUT/logs/accuracy.log" 2>&1
		echo "accuracy: exit $?"
		tail -3 "$OUT/logs/accuracy.log"
		;;
	*) echo "unknown part $part" ;;
	esac
	save
done
save
