#!/usr/bin/env bash
# `make gpu-test`: everything issue F asks of the GPU, in one go.
#   1. the CUDA shim's own tests (driver, cuBLAS, errors);
#   2. every kernel against the CPU backend over the grid of sizes;
#   3. compute-sanitizer memcheck over the kernels at the small sizes;
#   4. GPU against CPU through HTTP on the bundled model, every policy, and
#      the GPU sidecar (kvd's pool over CUDA IPC) against embedded;
#   5. first timings: the bundled model and Llama-3.1-8B's shapes (dummy).
# With Go on the machine it builds first; without (the lent GPU machine) it
# runs what tools/gpu/build.sh left in .dev/bin. Logs and tables go to
# $OUT (default /tmp/kvd-gpu); the summary is printed last.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
OUT=${OUT:-/tmp/kvd-gpu}
logs=$OUT/logs
mkdir -p "$logs"
if command -v go >/dev/null; then
	tools/gpu/build.sh >/dev/null
fi
bin=$(mktemp -d)
for f in .dev/bin/*.xz; do xz -dc "$f" >"$bin/$(basename "$f" .xz)"; done
chmod +x "$bin"/*
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu --format=csv | tee "$logs/card.csv"
# PARTS picks parts (all by default): a device call carries at most 64
# MiB, so the binaries of all five may need two calls (build.sh's subsets:
# "cuda.test kernels.test" for shim, kernels and memcheck; "gateway kvd
# e2e.test" for e2e; "forward" for timing).
PARTS=${PARTS:-shim kernels memcheck e2e timing}
want() { [[ " $PARTS " == *" $1 "* ]]; }
declare -A rc
if want shim; then
	(cd kernels/cuda && "$bin/cuda.test" -test.v -test.count=1) >"$logs/cuda.log" 2>&1
	rc[shim]=$?
fi
if want kernels; then
	(cd kernels && "$bin/kernels.test" -test.run GPU -test.v -test.count=1) >"$logs/kernels.log" 2>&1
	rc[kernels]=$?
	(cd kernels && "$bin/kernels.test" -test.run '^$' -test.bench GPU -test.benchtime 20x) >"$OUT/ceilings.txt" 2>&1
fi
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if ! want memcheck; then
	:
elif [ -n "$san" ]; then
	(cd kernels && KVD_GPU_QUICK=1 "$san" --tool memcheck --error-exitcode 9 "$bin/kernels.test" \
		-test.run 'GPU(Elementwise|Linear|Attention|WriteKV|SparsePrefill|Evict)' -test.count=1) >"$logs/memcheck.log" 2>&1
	rc[memcheck]=$?
else
	echo "no compute-sanitizer" >"$logs/memcheck.log"
	rc[memcheck]=missing
fi
if want e2e; then
	(cd e2e && KVD_TEST_BIN_DIR="$bin" KVD_GPU_REPORT="$OUT/agreement.md" "$bin/e2e.test" -test.run 'GPUMatchesCPU|GPUSidecar' -test.v -test.count=1) >"$logs/e2e.log" 2>&1
	rc[e2e]=$?
fi
if want timing; then
	{
		"$bin/forward" --model models/kvd-go-16m --device cuda --runs 1x512,32x512 --decode 64
		"$bin/forward" --model bench/models/llama-3.1-8b --load-format dummy --device cuda --runs 1x512,32x512,1x5000,8x5000 --decode 32 --cpuprofile "$OUT/decode.pprof" | tail -n +3
	} >"$OUT/timing.md" 2>"$logs/timing.log"
	rc[timing]=$?
fi
grep -sE "^(---|===|ok|FAIL|PASS)|relative error|differ|kept tokens" "$logs/kernels.log" | grep -v "^=== RUN" | tail -40
grep -sE "ERROR SUMMARY|========= " "$logs/memcheck.log" | tail -5
grep -sE "^Benchmark" "$OUT/ceilings.txt"
grep -sE "^(---|ok|FAIL)|identical" "$logs/e2e.log"
cat "$OUT/agreement.md" 2>/dev/null
cat "$OUT/timing.md" 2>/dev/null
ok=0
for k in $PARTS; do
	echo "$k: exit ${rc[$k]:-not run}"
	[ "${rc[$k]:-1}" = 0 ] || [ "$k" = memcheck ] || ok=1
done
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$logs"
cd "$root"
exit $ok
