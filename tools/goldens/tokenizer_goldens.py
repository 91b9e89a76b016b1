#!/usr/bin/env python3
"""Write the golden files that gateway/tokenizer's TestGoldens checks.

For each test tokenizer (gateway/tokenizer/testdata/llama3 and .../llama2 by
default) this encodes a list of tricky strings with HF tokenizers
(``Tokenizer.from_file``), with and without special tokens, decodes every
result with and without skip_special_tokens, decodes some hand-picked and
some seeded-random id lists, and renders the chat template with transformers
(``AutoTokenizer.from_pretrained(dir).apply_chat_template(..., tokenize=False)``)
for several conversations. It writes golden_<family>.json next to the
tokenizers (or into --out).

The inputs live only here; the Go test reads them back from the golden files.

Usage (from the repository root, with tokenizers 0.23 and transformers 5.17):

    python3 tools/goldens/tokenizer_goldens.py
    python3 tools/goldens/tokenizer_goldens.py --out /tmp/goldens gateway/tokenizer/testdata/llama3

--dump-inputs FILE writes the inputs (with ids resolved from tokenizer.json
directly) without importing tokenizers or transformers, for checking the
inputs themselves or feeding another implementation.
"""

import argparse
import json
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTDATA = os.path.join(ROOT, "gateway", "tokenizer", "testdata")

LONG_PARAGRAPH = (
    "The harbour master kept two clocks on the wall of her office: one set to the "
    "time of the port and one set to the time of the sea. The first ran on "
    "electricity and was checked against the radio every morning at 07:00; the "
    "second was a brass ship's clock that she wound each Sunday with a key she "
    "kept on a string. When visitors asked why she needed both, she said the port "
    "ran on schedules and the sea ran on tides, and that a good harbour master "
    "listened to each in turn. In 1998 the electric clock stopped during a storm "
    "that cut the power for 31 hours, and the brass one kept going, ticking "
    "steadily while the rain hammered the windows. She didn't say \"I told you "
    "so\", but she'd smile whenever anyone mentioned it. Years later, when the "
    "office was rebuilt in glass and steel, the brass clock was the only thing "
    "from the old building that made it into the new one -- hung, a little "
    "crookedly, above the door marked PRIVATE. Its chime is still heard at noon "
    "(and at midnight, by whoever happens to be on watch)."
)

CODE = (
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n"
    "\tfor i := 0; i < 3; i++ {\n\t\tfmt.Println(\"tick\", i)\n\t}\n}\n"
)

# Strings both families encode. Each exercises something the Go port must
# get exactly right; comments say what when it is not obvious.
COMMON_TEXTS = [
    "",
    "Hello, world!",
    "hello world",
    " leading space",
    "   three leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "   ",
    " ",
    "\n",
    "\t\t",
    "tabs\tand\t\ttabs",
    "line\nbreak",
    "two\n\nbreaks and three\n\n\n",
    "crlf\r\nline\r\n",
    "mixed \t \n whitespace  \n\t ",
    "\n\n\nleading newlines",
    "1234567",
    "3.14159 and 2.71828",
    "12,345,678.90",
    "The year 2024 had 366 days.",
    "Numbers: 0 00 000 0000 00000",
    "superscripts x² y³ and fractions ½ ¾",  # \p{N} includes No
    "circled ① ② ③ and roman Ⅻ",
    "arabic-indic ٣٤٥ digits",
    "I'M don't you'LL they'RE we'VE she'D it'S",
    "'s at the start and rock 'n' roll",
    "it'ſ a long s",  # (?i) in Oniguruma folds ſ to s
    "can't won't shouldn't y'all",
    "héllo wörld ça va",
    "naïve café résumé",
    "Zoë Ångström façade ñ",
    "Ελληνικά κείμενα",
    "Русский текст",
    "עברית",
    "العربية",
    "हिन्दी",
    "ไทย",
    "한국어 텍스트",
    "日本語のテキストです。",
    "中文字符和标点，还有句号。",
    "灯台 海 霧",
    "emoji 🙂🙃",
    "🙂",
    "family 👨‍👩‍👧‍👦 together",
    "flags 🇫🇷🇩🇪🇯🇵",
    "thumbs 👍🏽 up",
    "keycap 1️⃣ and heart ❤️",
    "zero\u200bwidth\u200djoiner",
    "nbsp\u00a0here",
    "ideographic\u3000space",
    "line\u2028separator",
    "next\u0085line",
    "combining e\u0301 and a\u0308",
    "ligature ﬁ ﬂ",
    "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "control \x01\x02\x7f chars",
    "\u201ccurly quotes\u201d and \u2018single\u2019",
    "« guillemets » and „German“",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!???... ---- ____ ====",
    "snake_case camelCase PascalCase kebab-case",
    "path/to/file.go:42:7",
    "https://example.com/a?b=c&d=e#f",
    "email me at keeper@example.org",
    "<html><body>hi</body></html>",
    "{\"json\": [1, 2, 3], \"ok\": true}",
    CODE,
    "    indented four\n        indented eight\n",
    "if (x) {\r\n  y();\r\n}",
    "def f(x):\n    return x * 2\n",
    LONG_PARAGRAPH,
]

FAMILY_TEXTS = {
    "llama3": [
        "hi<|eot_id|>there",
        "<|begin_of_text|>already",
        "<|eot_id|><|eot_id|>",
        "a <|start_header_id|>user<|end_header_id|> b",
        " <|eot_id|> spaced ",
        "<|reserved_special_token_0|>x",
        "<|not_a_token|>",
        "<s> looks like llama2",
    ],
    "llama2": [
        "<s>",
        "</s>",
        "a<s>b",
        "hi</s>there",
        " <unk> ",
        "<s><s>",
        "[INST] question [/INST] answer",
        "<|eot_id|> looks like llama3",
    ],
}

# Id lists to decode, given as token strings (resolved with token_to_id).
FAMILY_DECODE_TOKENS = {
    "llama3": [
        ["ð", "A"],  # a lone lead byte, then ASCII
        ["ðŁ"],  # a truncated 4-byte sequence at the end
        ["Ġ", "Ġ", "x"],
        ["<|begin_of_text|>", "Hello", "<|eot_id|>"],
        ["<|eot_id|>", "Ġworld"],
        ["Ã", "©", "Ã"],
        ["Â", "ł"],  # U+00A0 as two byte tokens
        ["ĊĊ", "Ġ", "<|end_of_text|>"],
    ],
    "llama2": [
        ["<0xF0>", "<0x9F>", "▁A"],
        ["<0xC3>", "<0xA9>", "<0xFF>"],  # valid, then ill-formed: the whole run is U+FFFD
        ["<0xE7>", "<0x81>", "<0xAF>"],
        ["▁", "▁", "x"],
        ["▁"],
        ["<s>", "▁Hello"],
        ["</s>", "▁world"],
        ["<unk>", "▁a", "<unk>"],
        ["<0x0A>", "▁x", "<0x20>", "<0x20>"],
        ["▁The", "<0x0A>", "<0x0A>", "▁the"],
    ],
}

RANDOM_DECODE_SEED = 20240611
RANDOM_DECODE_LISTS = 24
RANDOM_DECODE_LEN = 17

CONVERSATIONS = [
    ("single_user", [{"role": "user", "content": "Hello!"}]),
    ("system_user", [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ]),
    ("multi_turn", [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Good morning"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "And good night?"},
    ]),
    ("user_assistant", [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]),
    ("whitespace", [
        {"role": "user", "content": "  spaced out \n\n"},
        {"role": "assistant", "content": "\tindented\n"},
        {"role": "user", "content": "line one\nline two"},
    ]),
    ("unicode", [{"role": "user", "content": "Ça va ? 灯台 🙂 👨‍👩‍👧"}]),
    ("empty_content", [{"role": "user", "content": ""}]),
    # No empty conversation: transformers fails on [] before rendering.
    ("two_users", [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ]),
    ("assistant_first", [
        {"role": "assistant", "content": "I start."},
        {"role": "user", "content": "ok"},
    ]),
]


def family_of(tokdir):
    name = os.path.basename(os.path.normpath(tokdir))
    if name not in FAMILY_TEXTS:
        sys.exit(f"{tokdir}: unknown family {name!r}; expected one of {sorted(FAMILY_TEXTS)}")
    return name


def texts_for(family):
    return COMMON_TEXTS + FAMILY_TEXTS[family]


def decode_lists(family, token_to_id, vocab_size):
    lists = []
    for toks in FAMILY_DECODE_TOKENS[family]:
        ids = [token_to_id(t) for t in toks]
        if any(i is None for i in ids):
            # The trained vocab lacks a token; leave it out rather than guess.
            continue
        lists.append(ids)
    rng = random.Random(RANDOM_DECODE_SEED)
    for _ in range(RANDOM_DECODE_LISTS):
        lists.append([rng.randrange(vocab_size) for _ in range(RANDOM_DECODE_LEN)])
    return lists


def json_vocab(tokdir):
    """token_to_id and the vocab size from tokenizer.json itself (no HF)."""
    with open(os.path.join(tokdir, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    vocab = dict(tj["model"]["vocab"])
    for a in tj.get("added_tokens", []):
        vocab[a["content"]] = a["id"]
    return vocab.get, max(vocab.values()) + 1


def dump_inputs(dirs, path):
    out = {}
    for d in dirs:
        fam = family_of(d)
        tok_to_id, size = json_vocab(d)
        out[fam] = {
            "dir": d,
            "texts": texts_for(fam),
            "decode_lists": decode_lists(fam, tok_to_id, size),
            "chat": [{"name": n, "messages": m} for n, m in CONVERSATIONS],
        }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


def goldens(tokdir):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories only
    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    fam = family_of(tokdir)
    tok = tokenizers.Tokenizer.from_file(os.path.join(tokdir, "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(tokdir)
    warnings = []

    encode = []
    for text in texts_for(fam):
        for add in (False, True):
            ids = tok.encode(text, add_special_tokens=add).ids
            encode.append({
                "text": text,
                "add_special_tokens": add,
                "ids": ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip": tok.decode(ids, skip_special_tokens=True),
            })
            tf_ids = hf(text, add_special_tokens=add)["input_ids"]
            if tf_ids != ids:
                warnings.append(f"transformers encodes {text!r} (add_special_tokens={add}) as {tf_ids}, tokenizers as {ids}")

    decode = []
    for ids in decode_lists(fam, tok.token_to_id, tok.get_vocab_size(with_added_tokens=True)):
        for skip in (False, True):
            decode.append({"ids": ids, "skip_special_tokens": skip, "text": tok.decode(ids, skip_special_tokens=skip)})

    chat = []
    for name, messages in CONVERSATIONS:
        for gen in (False, True):
            case = {"name": name, "messages": messages, "add_generation_prompt": gen}
            try:
                case["text"] = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            except Exception as e:  # the template's raise_exception, mostly
                case["error"] = f"{type(e).__name__}: {e}"
            chat.append(case)

    specials = {}
    for a in json.load(open(os.path.join(tokdir, "tokenizer.json"), encoding="utf-8"))["added_tokens"]:
        specials[a["content"]] = tok.token_to_id(a["content"])

    for w in warnings:
        print(f"warning: {fam}: {w}", file=sys.stderr)
    return fam, {
        "generator": "tools/goldens/tokenizer_goldens.py",
        "tokenizers_version": tokenizers.__version__,
        "transformers_version": transformers.__version__,
        "family": fam,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "added_token_ids": specials,
        "transformers_class": type(hf).__name__,
        "warnings": warnings,
        "encode": encode,
        "decode": decode,
        "chat": chat,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*", help="tokenizer directories (default: testdata/llama3 and testdata/llama2)")
    ap.add_argument("--out", help="directory for golden_<family>.json (default: gateway/tokenizer/testdata)")
    ap.add_argument("--dump-inputs", metavar="FILE", help="write the inputs only and exit")
    args = ap.parse_args()
    dirs = args.dirs or [os.path.join(TESTDATA, "llama3"), os.path.join(TESTDATA, "llama2")]
    if args.dump_inputs:
        dump_inputs(dirs, args.dump_inputs)
        return
    out = args.out or TESTDATA
    os.makedirs(out, exist_ok=True)
    for d in dirs:
        fam, g = goldens(d)
        path = os.path.join(out, f"golden_{fam}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(g, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print(f"wrote {path}: {len(g['encode'])} encodings, {len(g['decode'])} decodings, {len(g['chat'])} chats")


if __name__ == "__main__":
    main()
