#!/usr/bin/env bash
# Builds a variant of the attention kernels' fat binary for sm_90 (an H100
# or H200) with nvcc's -D flags, into .dev/v/NAME/attention.fatbin, to be
# tested and timed on a GPU machine without rebuilding the Go binaries:
# KVD_CUDABIN_DIR=DIR loads the fat binaries found in DIR instead of the
# embedded ones (kernels/gpu.go). Run here (nvcc 11.8, `make
# cuda-toolchain`) and carry .dev, or on the GPU machine (nvcc 13.0):
#   tools/gpu/variant.sh minb4 -DDMMA_FP8_MINB=4
# then, there (TestGPUAttention has a subtest per prompt shape, head dim,
# group, block size and dtype; all of it takes ~2 minutes on an H200):
#   (cd kernels && KVD_CUDABIN_DIR=$PWD/../.dev/v/minb4 kernels.test \
#      -test.run 'GPUAttention$/.*/hd=128/.*/.*/fp8')
#   (cd kernels && KVD_CUDABIN_DIR=... kernels.test -test.run '^$' \
#      -test.bench 'GPUAttention/decode-(128|256)x5000-fp8/split4/v2/dmma$' -test.benchtime 40x)
# The variant's fat binary holds sm_90 code only: on any other card the
# loader fails and says so. NVCC picks the compiler (default nvcc).
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:?usage: variant.sh NAME [-DFLAG=VALUE ...]}
shift
case $name in
*/* | .*) echo "variant.sh: NAME is a folder name under .dev/v, not a path" >&2; exit 2 ;;
esac
for f in "$@"; do
	case $f in
	-D*) ;;
	*) echo "variant.sh: $f: give nvcc -D flags only (-DNAME=VALUE)" >&2; exit 2 ;;
	esac
done
out=.dev/v/$name
mkdir -p "$out"
"${NVCC:-nvcc}" -fatbin -O3 -gencode arch=compute_90,code=sm_90 "$@" -o "$out/attention.fatbin" kernels/attention.cu
echo "$* $(cat kernels/*.cuh kernels/*.cu | sha256sum | cut -c1-12)" >"$out/FLAGS"
ls -la "$out"
