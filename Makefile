# kvd — `make help` lists the targets.
GO      ?= go
BIN     := bin
MODEL   ?= models/kvd-go-16m
PROMPT  ?= // Max returns the larger of x and y.\nfunc Max(x, y int) int {

.PHONY: help build run generate tiny test bench lint goldens clean kernels cuda-toolchain gpu-test gpu-bench

# The CUDA kernels: one fat binary per .cu family, machine code for sm_80
# (A100) and sm_90 (H100/H200) plus compute_80 PTX for newer cards, built
# by a pinned nvcc (Debian 12's CUDA 11.8: any driver from 520 on runs it).
# attention_sm90a.cu's wgmma kernels are PTX marked for sm_90a, which the
# driver compiles on an H100 or H200 (11.8's ptxas cannot assemble wgmma).
NVCC         ?= nvcc
NVCC_VERSION := 11.8
CUDA_GENCODE := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=compute_80
CUDA_FAMILIES := elementwise cache attention sampling

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/kvd and bin/gateway
	$(GO) build -o $(BIN)/ ./kvd ./gateway

models/tiny/config.json:
	$(GO) run ./tools/mktiny -out models/tiny

tiny: models/tiny/config.json ## write the tiny random test model (serve it with MODEL=models/tiny)

run: build $(MODEL)/config.json ## serve the bundled model on 127.0.0.1:8080 (kvd + gateway; Ctrl-C stops both)
	tools/run.sh $(MODEL)

generate: build $(MODEL)/config.json ## complete PROMPT once from the bundled model, no server
	$(BIN)/gateway generate --model $(MODEL) --prompt "$$(printf '$(PROMPT)')" --max-tokens 32

test: ## vet and run every test (what CI runs)
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

bench: ## CPU micro-benchmarks: prefill/decode tokens/s, tokenizer, kvd step round trip
	$(GO) test -run '^$$' -bench . -benchtime 3x ./gateway/model/ ./gateway/tokenizer/
	$(GO) test -run '^$$' -bench StepRoundTrip -benchtime 5000x ./kvd/api/
	$(GO) run ./bench/sparsity -decode 512 -batch 4

lint: ## gofmt and vet
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

kernels: ## rebuild kernels/cudabin from kernels/*.cu with the pinned nvcc (no GPU needed; make cuda-toolchain installs it)
	@$(NVCC) --version | grep -q 'release $(NVCC_VERSION)' || { echo "make kernels wants nvcc $(NVCC_VERSION) (make cuda-toolchain installs it); found: $$($(NVCC) --version 2>&1 | tail -1)"; exit 1; }
	@for f in $(CUDA_FAMILIES); do echo "nvcc $$f.cu"; $(NVCC) -fatbin -O3 $(CUDA_GENCODE) -o kernels/cudabin/$$f.fatbin kernels/$$f.cu || exit 1; done
	@echo "nvcc attention_sm90a.cu (PTX, marked for sm_90a)"
	@$(NVCC) -ptx -O3 -arch=compute_90 -o kernels/cudabin/attention_sm90a.ptx.tmp kernels/attention_sm90a.cu
	@sed -e 's/^\.version 7\.8$$/.version 8.0/' -e 's/^\.target sm_90$$/.target sm_90a/' kernels/cudabin/attention_sm90a.ptx.tmp > kernels/cudabin/attention_sm90a.ptx
	@rm kernels/cudabin/attention_sm90a.ptx.tmp
	@grep -qx '.target sm_90a' kernels/cudabin/attention_sm90a.ptx && grep -qx '.version 8.0' kernels/cudabin/attention_sm90a.ptx || { echo "attention_sm90a.ptx: no .version 8.0 / .target sm_90a after sed"; exit 1; }
	cat kernels/*.cuh kernels/*.cu | sha256sum | cut -d' ' -f1 > kernels/cudabin/SOURCES.sha256

cuda-toolchain: ## install the nvcc that make kernels is pinned to (Debian's nvidia-cuda-toolkit 11.8)
	tools/cuda-toolchain.sh

gpu-test: ## on a GPU machine: kernels vs CPU, memcheck, GPU vs CPU over HTTP, first timings (logs in OUT=/tmp/kvd-gpu)
	tools/gpu/test.sh

gpu-bench: ## on a GPU machine: issue G's serving runs, PARTS="sidecar grid capped floor hf accuracy" (results in OUT=/tmp/kvd-bench)
	tools/gpu/bench.sh

goldens: ## list what the GPU machine must run to remake the HF golden files
	@echo "on the GPU machine: bash tools/goldens/run.sh OUTDIR, then here: tar xzf OUTDIR/goldens.tgz"

clean: ## remove build outputs and the generated tiny model
	rm -rf $(BIN) models/tiny
