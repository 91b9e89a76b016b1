#!/usr/bin/env python3
"""Make the forward-pass golden files: HF transformers' float32 logits and
greedy continuations for a model directory (the committed tiny test model).

Run on the GPU machine (it has transformers; the tiny model runs on its CPU):

    python3 tools/goldens/model_goldens.py \
        --model gateway/model/testdata/tiny-llama3 \
        --out gateway/model/testdata/golden

Writes golden.json (prompts, greedy tokens, versions) and logits_<i>.f32
(little-endian float32, [rows, vocab_size] for the prompt's last rows, from
logits_from on) that gateway/model's TestHFGoldens compares against.
"""
import argparse
import json
import os
import random

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, LlamaForCausalLM

TEXTS = [
    "The key-value cache",
    "func (p *Pool) Get() (int32, error) {\n\tif len(p.free) == 0 {",
    "Le cache garde les clés et les valeurs 🙂",
]
ID_LENGTHS = [1, 9, 64, 333]
GREEDY_TOKENS = 24
# Logits are kept for at most this many final positions of a prompt, so the
# committed goldens stay small (a row is vocab_size floats).
MAX_ROWS = 64


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)

    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    vocab = model.config.vocab_size

    rng = random.Random(1234)
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    prompts += [[rng.randrange(vocab) for _ in range(n)] for n in ID_LENGTHS]

    out = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model": os.path.basename(os.path.normpath(args.model)),
        "vocab_size": vocab,
        "cases": [],
    }
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            x = torch.tensor([ids])
            logits = model(x).logits[0].float().numpy()
            first = max(0, len(ids) - MAX_ROWS)
            name = f"logits_{i}.f32"
            logits[first:].astype("<f4").tofile(os.path.join(args.out, name))
            seq = list(ids)
            for _ in range(GREEDY_TOKENS):
                nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
                seq.append(nxt)
            out["cases"].append({
                "ids": ids,
                "text": TEXTS[i] if i < len(TEXTS) else None,
                "logits": name,
                "logits_from": first,
                "greedy": seq[len(ids):],
            })
            print(f"case {i}: {len(ids)} tokens, greedy {seq[len(ids):][:8]}...")
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
