# kvd — `make help` lists the targets.
GO      ?= go
BIN     := bin
MODEL   ?= models/kvd-go-16m
PROMPT  ?= // Max returns the larger of x and y.\nfunc Max(x, y int) int {

.PHONY: help build run generate tiny test bench lint goldens clean

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

goldens: ## list what the GPU machine must run to remake the HF golden files
	@echo "on the GPU machine: bash tools/goldens/run.sh OUTDIR, then here: tar xzf OUTDIR/goldens.tgz"

clean: ## remove build outputs and the generated tiny model
	rm -rf $(BIN) models/tiny
