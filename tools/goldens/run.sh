#!/usr/bin/env bash
# Remake every HF golden file on the GPU machine (python3 with torch,
# transformers and tokenizers; no Go needed) and pack them into one archive:
#
#   bash tools/goldens/run.sh OUTDIR      # writes OUTDIR/goldens.tgz and logs
#
# Unpack at the repository root with `tar xzf goldens.tgz`.
set -euo pipefail
out=${1:?usage: run.sh OUTDIR}
cd "$(dirname "$0")/../.."
stage=$(mktemp -d)
export PYTHONUNBUFFERED=1
python3 -c 'import torch, transformers, tokenizers; print("torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__)'
mkdir -p "$stage/gateway/tokenizer/testdata" "$stage/gateway/model/testdata/golden"
python3 tools/goldens/tokenizer_goldens.py --out "$stage/gateway/tokenizer/testdata"
python3 tools/goldens/model_goldens.py --model gateway/model/testdata/tiny-llama3 --out "$stage/gateway/model/testdata/golden"
mkdir -p "$stage/gateway/model/testdata/golden-kvd-go-16m"
python3 tools/goldens/model_goldens.py --model models/kvd-go-16m --out "$stage/gateway/model/testdata/golden-kvd-go-16m"
tar czf "$out/goldens.tgz" -C "$stage" gateway
tar tzvf "$out/goldens.tgz"
