#!/usr/bin/env python3
"""Train kvd's bundled model: a small Llama-architecture model on the Go
toolchain's own source, with a byte-level BPE tokenizer (Llama-3 pre-tokenizer
pattern) trained by HF tokenizers, exported as a Hugging Face directory.

Runs on the GPU machine in one call (PyTorch, transformers, tokenizers; no
network). The data is the non-test .go files of $(go env GOROOT)/src, carried
as a tar.xz because the GPU machine has no Go:

    cd $(go env GOROOT)/src && find . -name '*.go' ! -name '*_test.go' \\
        ! -path '*/testdata/*' | sort | tar cf - -T - | xz > .dev/gosrc.tar.xz
    python3 tools/train/train.py --data .dev/gosrc.tar.xz --out OUT/model \\
        --minutes 5.5

Whole packages (directories) are held out for evaluation: a deterministic
5% by hash of the directory name, plus a few named ones; the split is written
to the model directory (split.json) with the losses, the loss curve and the
README.
"""
import argparse
import hashlib
import io
import json
import math
import os
import random
import tarfile
import time

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|file_sep|>"]
NAMED_HELDOUT = {"./net/http", "./go/types", "./crypto/tls", "./encoding/json", "./runtime/pprof"}
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def heldout(pkg):
    return pkg in NAMED_HELDOUT or int(hashlib.sha256(pkg.encode()).hexdigest(), 16) % 20 == 0


def load_files(path):
    files = {}
    with tarfile.open(path, "r:xz") as tf:
        for m in tf.getmembers():
            if m.isfile() and m.name.endswith(".go"):
                files[m.name] = tf.extractfile(m).read().decode("utf-8", errors="replace")
    return files


def train_tokenizer(texts, vocab):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - len(SPECIALS), min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(SPECIALS)
    bos = tok.token_to_id(SPECIALS[0])
    tok.post_processor = processors.TemplateProcessing(single=f"{SPECIALS[0]} $A", pair=f"{SPECIALS[0]} $A {SPECIALS[0]} $B",
                                                       special_tokens=[(SPECIALS[0], bos)])
    return tok


def pack(tok, texts, seq, sep):
    """Concatenates documents (each with BOS, then the file, then <|file_sep|>)
    and cuts sequences of seq tokens."""
    ids = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(sep)
    n = len(ids) // seq
    return torch.tensor(ids[: n * seq], dtype=torch.int64).view(n, seq), len(ids)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=6.0, help="training time budget (the lr schedule follows it)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--go-version", default="unknown", help="the Go release the source came from, for the README")
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--name", default="kvd-go-16m", help="the model's name, for the README")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    random.seed(0)
    os.makedirs(args.out, exist_ok=True)

    files = load_files(args.data)
    split = {"train": [], "heldout": []}
    train_texts, held_texts = [], []
    for name in sorted(files):
        pkg = os.path.dirname(name)
        if heldout(pkg):
            held_texts.append(files[name])
            if pkg not in split["heldout"]:
                split["heldout"].append(pkg)
        else:
            train_texts.append(files[name])
            if pkg not in split["train"]:
                split["train"].append(pkg)
    print(f"{len(files)} files: {len(train_texts)} train, {len(held_texts)} held out "
          f"({len(split['heldout'])} packages) [{time.time()-t0:.0f}s]", flush=True)

    tok = train_tokenizer(train_texts, args.vocab)
    print(f"tokenizer: {tok.get_vocab_size()} tokens [{time.time()-t0:.0f}s]", flush=True)
    sep = tok.token_to_id("<|file_sep|>")
    train, n_train = pack(tok, train_texts, args.seq, sep)
    held, n_held = pack(tok, held_texts, args.seq, sep)
    print(f"tokens: {n_train} train ({len(train)} sequences), {n_held} held out [{time.time()-t0:.0f}s]", flush=True)

    vocab = tok.get_vocab_size()
    bos, eot, eos = tok.token_to_id(SPECIALS[0]), tok.token_to_id("<|eot_id|>"), tok.token_to_id("<|end_of_text|>")
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads,
                      max_position_embeddings=args.seq,
                      rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
                      bos_token_id=bos, eos_token_id=[eos, eot])
    dev = "cuda"
    model = LlamaForCausalLM(cfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params/1e6:.1f}M parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    budget = args.minutes * 60
    warm = 0.03
    curve = []
    step, seen, start = 0, 0, time.time()
    model.train()
    gen = torch.Generator().manual_seed(0)
    while True:
        frac = (time.time() - start) / budget
        if frac >= 1:
            break
        lr = args.lr * (frac / warm if frac < warm else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (frac - warm) / (1 - warm))))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(train), (args.batch,), generator=gen)
        x = train[idx].to(dev, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        seen += x.numel()
        if step % 25 == 0 or step == 1:
            curve.append({"step": step, "tokens": seen, "seconds": round(time.time() - start, 1), "lr": lr, "loss": loss.item()})
            print(f"step {step} tokens {seen} loss {loss.item():.4f} lr {lr:.2e} [{time.time()-start:.0f}s]", flush=True)
    train_seconds = time.time() - start

    @torch.no_grad()
    def evaluate(data, n=64):
        model.eval()
        losses = []
        g = torch.Generator().manual_seed(1)
        for i in torch.randint(len(data), (min(n, len(data)),), generator=g):
            x = data[i : i + 1].to(dev)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                losses.append(model(input_ids=x, labels=x).loss.item())
        return sum(losses) / len(losses)

    train_loss, held_loss = evaluate(train), evaluate(held)
    print(f"final: train loss {train_loss:.4f}, held-out loss {held_loss:.4f}", flush=True)

    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(args.out, max_shard_size="15MB", safe_serialization=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[0], eos_token="<|eot_id|>",
                                   model_max_length=args.seq, chat_template=CHAT_TEMPLATE)
    fast.save_pretrained(args.out)
    transformers.GenerationConfig(bos_token_id=bos, eos_token_id=[eos, eot], do_sample=False).save_pretrained(args.out)
    card = torch.cuda.get_device_name()
    stats = {
        "card": card, "torch": torch.__version__, "transformers": transformers.__version__,
        "parameters": n_params, "vocab": vocab, "seq": args.seq, "batch": args.batch, "lr": args.lr,
        "steps": step, "tokens_seen": seen, "train_seconds": round(train_seconds, 1),
        "train_tokens": n_train, "heldout_tokens": n_held,
        "train_loss": round(train_loss, 4), "heldout_loss": round(held_loss, 4),
        "train_files": len(train_texts), "heldout_files": len(held_texts), "go_version": args.go_version,
        "minutes": args.minutes, "name": args.name,
    }
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({"stats": stats, "curve": curve}, f, indent=1)
    with open(os.path.join(args.out, "split.json"), "w") as f:
        json.dump(split, f, indent=1)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(readme(stats, curve, split, cfg))
    print(json.dumps(stats), flush=True)


def readme(s, curve, split, cfg):
    gap_note = ""
    if s["heldout_loss"] - s["train_loss"] > 0.5:
        gap_note = (f"The gap between train and held-out loss ({s['train_loss']} against {s['heldout_loss']}) says the model "
                    "has memorised much of its training set in these epochs: more data, or fewer passes over it, would "
                    "generalise better. It is a real model to measure sparsity on, not a useful assistant.\n\n")
    pts = curve[:: max(1, len(curve) // 12)]
    if pts[-1] is not curve[-1]:
        pts.append(curve[-1])
    rows = "\n".join(f"| {c['step']} | {c['tokens']/1e6:.1f}M | {c['seconds']:.0f} | {c['loss']:.3f} |" for c in pts)
    return f"""# {s['name']}

The model `make run` serves: a {s['parameters']/1e6:.1f}M-parameter Llama-architecture model
(RMSNorm, RoPE θ=500000, GQA with {cfg.num_attention_heads} query heads over {cfg.num_key_value_heads} KV heads,
SwiGLU, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, head dim {cfg.head_dim}, tied embeddings, bf16)
trained from scratch on the Go toolchain's own source. It completes Go code; it is
not an assistant, though its tokenizer has a Llama-3-style chat template.

- **Data**: the {s['train_files'] + s['heldout_files']} non-test `.go` files of `src` of {s['go_version']}
  (outside `testdata`), each file a document (`<|begin_of_text|>` … `<|file_sep|>`). **Held out**: whole packages, {len(split['heldout'])} of them
  ({s['heldout_files']} files, {s['heldout_tokens']/1e6:.2f}M tokens): 5% by hash of the directory, plus
  net/http, go/types, crypto/tls, encoding/json and runtime/pprof; the list is in `split.json`.
- **Tokenizer**: byte-level BPE, {s['vocab']} tokens, Llama-3 pre-tokenizer pattern, trained by HF
  `tokenizers` on the training files only.
- **Training**: {s['steps']} steps of {s['batch']} × {s['seq']} tokens ({s['tokens_seen']/1e6:.0f}M tokens seen, about
  {s['tokens_seen']/max(1,s['train_tokens']):.1f} epochs of {s['train_tokens']/1e6:.1f}M), AdamW (β 0.9/0.95, weight decay 0.1), peak lr {s['lr']},
  3% warm-up then cosine to 10% over a fixed time budget, bf16 autocast, gradient clip 1.0;
  {s['train_seconds']:.0f} s on one {s['card']} (torch {s['torch']}, transformers {s['transformers']}).
- **Loss** (mean token cross-entropy, nats, 64 sequences of {s['seq']}): train **{s['train_loss']}**, held-out packages **{s['heldout_loss']}**.

| step | tokens | seconds | train loss |
| --- | --- | --- | --- |
{rows}

{gap_note}Reproduce (on a machine with PyTorch, transformers and tokenizers; see the docstring for
making the data archive): `python3 tools/train/train.py --data gosrc.tar.xz --out models/{s['name']} --minutes {s['minutes']} --go-version {s['go_version']}`.
The full curve is in `training.json`; this file is written by that script.
"""


if __name__ == "__main__":
    main()
