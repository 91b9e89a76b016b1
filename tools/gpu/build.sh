#!/usr/bin/env bash
# Builds, on a machine with Go, what tools/gpu/test.sh and bench.sh run on a
# GPU machine without Go: the commands and test binaries (cgo on, so the
# CUDA shim is in; no CUDA headers needed), xz-compressed into .dev/bin.
# The device call carries at most 64 MiB with the tracked files (53 MB
# after run 7), so name a subset when all of them do not fit; the script
# prints the sum. tools/gpu/aside.sh out moves the tracked files a call
# never reads (goldens, results, the embedded fat binaries: ~20 MB) aside
# for the call, and tools/gpu/aside.sh back puts them back:
#   tools/gpu/build.sh                      # everything
#   tools/gpu/build.sh gateway kvd serve e2e.test
set -euo pipefail
cd "$(dirname "$0")/../.."
all=(gateway kvd forward serve accuracy kernels.test cuda.test e2e.test)
want=("$@")
[ ${#want[@]} -eq 0 ] && want=("${all[@]}")
mkdir -p .dev/bin
rm -f .dev/bin/*
flags=(-trimpath -ldflags=-s\ -w)
for w in "${want[@]}"; do
	case $w in
	gateway | kvd) pkg=./$w ;;
	forward | serve | accuracy) pkg=./bench/$w ;;
	kernels.test) pkg=./kernels ;;
	cuda.test) pkg=./kernels/cuda ;;
	e2e.test) pkg=./e2e ;;
	*) echo "build.sh: unknown target $w (want: ${all[*]})" >&2; exit 2 ;;
	esac
	case $w in
	*.test) CGO_ENABLED=1 go test -c "${flags[@]}" -o ".dev/bin/$w" "$pkg" ;;
	*) CGO_ENABLED=1 go build "${flags[@]}" -o ".dev/bin/$w" "$pkg" ;;
	esac
done
xz -T0 -9e .dev/bin/*
ls -la .dev/bin
# What a device call with carry [".dev"] would send: the working tree
# (tracked files present, untracked ones not ignored) and .dev.
sent=$( { git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null; find .dev -type f -exec stat -c %s {} +; } | awk '{s += $1} END {print s}')
echo "a device call would carry $((sent / 1048576)) MiB of the 64 allowed"
[ "$sent" -le $((64 << 20)) ] || echo "build.sh: over 64 MiB: build fewer targets, or move tracked files the call does not need aside" >&2
