#!/usr/bin/env bash
# Builds, on a machine with Go, what tools/gpu/test.sh runs on a GPU machine
# without Go: the gateway, bench/forward and the test binaries (cgo on, so
# the CUDA shim is in; no CUDA headers needed), xz-compressed into .dev/bin
# to fit the GPU machine's 64 MiB transfer.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .dev/bin
rm -f .dev/bin/*
flags=(-trimpath -ldflags=-s\ -w)
CGO_ENABLED=1 go build "${flags[@]}" -o .dev/bin/ ./gateway ./bench/forward
for p in kernels kernels/cuda e2e; do
	CGO_ENABLED=1 go test -c "${flags[@]}" -o ".dev/bin/$(basename $p).test" "./$p"
done
xz -T0 -6 .dev/bin/*
ls -la .dev/bin
