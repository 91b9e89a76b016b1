#!/usr/bin/env python3
"""HF transformers on the serving benchmark's workload: the baseline issue G
compares kvd against, on the same card.

Random-token prompts of --input-len tokens, --output-len new tokens each,
greedy, EOS ignored (as bench/serve sends them). Two ways:

  generate        model.generate with a static cache, one batch of prompts
                  at once, for each size in --batches (one that does not
                  fit is reported and skipped), timed after a warm-up run
                  of the same shapes; TTFT is a max_new_tokens=1 call on
                  the same batch.
  generate_batch  continuous batching (model.generate_batch) with paged SDPA
                  (attn_implementation "paged|sdpa", transformers 5.17's name)
                  over --requests prompts.

Measured with it (an H200, transformers 5.17, 5000 in / 500 out, the 8B
shapes with random weights; bench/results/gpu-g.md): generate timed warm,
batch 32, 467.6 output tokens/s; batch 64, 497.8. Timed on the first call,
batch 16 gave 114.9: mostly the compiler.

The model is a directory with weights, or a config.json (random weights,
made on the GPU: kvd's --load-format dummy). Prints a table and writes JSON.

  python3 tools/hf/bench.py --model bench/models/llama-3.1-8b --input-len 5000 --output-len 500 --mode generate
"""
import argparse
import json
import os
import sys
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig


def load(path, attn):
    cfg_path = path if path.endswith(".json") else os.path.join(path, "config.json")
    has_weights = os.path.isdir(path) and any(f.endswith(".safetensors") for f in os.listdir(path))
    if has_weights:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda", attn_implementation=attn)
    cfg = AutoConfig.from_pretrained(os.path.dirname(cfg_path) or ".")
    cfg._attn_implementation = attn
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation=attn)
    # vLLM's dummy loader's scale: small uniform weights, norms of one.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.uniform_(-1, 1).mul_(p.shape[-1] ** -0.5)
    return model.eval()


def prompts(n, length, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, length), generator=g)


def run_generate(model, args, vocab, report):
    fits = 0
    for b in args.batches:
        ids = prompts(b, args.input_len, vocab, args.seed).cuda()
        mask = torch.ones_like(ids)
        common = dict(attention_mask=mask, do_sample=False, cache_implementation="static", pad_token_id=0)
        try:
            # Warm-up at the measured shapes: generate compiles the decode
            # step for a static cache (torch.compile), per shape, on the
            # first call; timing that call measures the compiler (about 2x
            # off at batch 16 on an H200), so the timed run is the second.
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=args.output_len, min_new_tokens=args.output_len, **common)
            torch.cuda.synchronize()
            warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **common)
            torch.cuda.synchronize()
            ttft = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=args.output_len, min_new_tokens=args.output_len, **common)
            torch.cuda.synchronize()
            total = time.perf_counter() - t0
        except torch.OutOfMemoryError:
            print(f"batch {b}: out of memory", file=sys.stderr, flush=True)
            continue
        finally:
            del ids, mask
            torch.cuda.empty_cache()
        fits += 1
        new = (out.shape[1] - args.input_len) * b
        del out
        report({"mode": "generate (static cache)", "batch": b, "requests": b, "output_tokens": new,
                "seconds": total, "output_tok_s": new / total, "ttft_s": ttft, "warmup_s": warm,
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30})
        torch.cuda.reset_peak_memory_stats()
    if not fits:
        raise SystemExit(f"no batch of {args.batches} fits")


def run_generate_batch(model, args, vocab):
    ids = prompts(args.requests, args.input_len, vocab, args.seed).tolist()
    gc = GenerationConfig(max_new_tokens=args.output_len, min_new_tokens=args.output_len, do_sample=False,
                          eos_token_id=-1, pad_token_id=0)
    model.generate_batch(inputs=[p[:16] for p in ids[:2]], generation_config=GenerationConfig(
        max_new_tokens=2, do_sample=False, eos_token_id=-1, pad_token_id=0), progress_bar=False)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = model.generate_batch(inputs=ids, generation_config=gc, progress_bar=False)
    torch.cuda.synchronize()
    total = time.perf_counter() - t0
    new = sum(len(r.generated_tokens) for r in res.values())
    return {"mode": "generate_batch (paged SDPA)", "batch": None, "requests": args.requests, "output_tokens": new,
            "seconds": total, "output_tok_s": new / total, "ttft_s": None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory, or a directory/config.json for random weights")
    ap.add_argument("--mode", choices=["generate", "generate_batch", "both"], default="both")
    ap.add_argument("--input-len", type=int, default=5000)
    ap.add_argument("--output-len", type=int, default=500)
    ap.add_argument("--batches", default="32,64,48",
                    help="generate's batch sizes, comma-separated, each measured in turn")
    ap.add_argument("--requests", type=int, default=64, help="generate_batch's requests")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="", help="write the results here as JSON")
    args = ap.parse_args()
    try:
        args.batches = [int(b) for b in args.batches.split(",")]
        assert args.batches and min(args.batches) > 0
    except (ValueError, AssertionError):
        ap.error(f"--batches {args.batches!r}: want positive integers separated by commas, such as 64,32,16")
    card = torch.cuda.get_device_name()
    meta = {"card": card, "transformers": transformers.__version__, "torch": torch.__version__,
            "input_len": args.input_len, "output_len": args.output_len, "model": args.model}
    print(f"{card}, transformers {transformers.__version__}, {args.input_len} in / {args.output_len} out")
    print("| mode | batch | requests | output tok/s | TTFT s | seconds | warm-up s |\n|---|---|---|---|---|---|---|")
    rows = []

    def report(r):
        rows.append(r)
        ttft = f"{r['ttft_s']:.2f}" if r["ttft_s"] is not None else "-"
        print(f"| {r['mode']} | {r['batch'] or '-'} | {r['requests']} | {r['output_tok_s']:.1f} | {ttft} | {r['seconds']:.1f} | {r.get('warmup_s', 0):.1f} |", flush=True)
        if args.out:  # after each mode, so a later failure keeps what ran
            with open(args.out, "w") as f:
                json.dump({"meta": meta, "results": rows}, f, indent=1)

    if args.mode in ("generate", "both"):
        model = load(args.model, "sdpa")
        run_generate(model, args, model.config.vocab_size, report)
        del model
        torch.cuda.empty_cache()
    if args.mode in ("generate_batch", "both"):
        model = load(args.model, "paged|sdpa")
        report(run_generate_batch(model, args, model.config.vocab_size))


if __name__ == "__main__":
    main()
