#!/usr/bin/env python3
"""Expected token ids for the C++ tokenizer, from the Python `tokenizers` package.

Run with /work/venv-tools/bin/python (tools/requirements-fixtures.txt). Writes
tests/fixtures/tokenizer/<name>.json; deterministic, so running it again gives
the same files.

How each reference tokenizer is built
-------------------------------------
The vocabularies are GGUF files (the test model and llama.cpp's ggml-vocab-*
files, fetched by scripts/setup.sh). `transformers` converts a GGUF's tokenizer
metadata into a fast (`tokenizers`) tokenizer; that gives an independent reading
of tokens, merges and added tokens. The conversion does not know every model's
pre-tokenizer, so the script checks the converted pipeline against the real
model's tokenizer.json (the constants below, copied from the models' published
tokenizer.json files) and fixes it where it differs:

  SmolLM2  converted: ByteLevel(use_regex) only.
           real:      Sequence[Digits(individual_digits=true), ByteLevel(use_regex)]
  Llama 3  converted: model.ignore_merges=false and an extra "<|endoftext|>"
                      added token (id 128256) that the GGUF does not have.
           real:      ignore_merges=true, 256 added tokens (the GGUF's control
                      tokens), post_processor prepending <|begin_of_text|>.
  Qwen2    converted: no normalizer.   real: NFC.
  GPT-2    converted pipeline equals the real one.

The fixed tokenizer.json (minus model.vocab and model.merges, which the C++
test takes from the same GGUF) is stored as "tokenizer_json", so the C++ test
checks Tokenizer::from_gguf and Tokenizer::from_hf_json against the same ids.

SentencePiece-style BPE ("llama_spm", Llama 2's vocabulary): the GGUF has
tokens and scores but no merges; transformers derives the merges from the
scores (generate_merges) and builds a Metaspace(prepend_scheme="first")
pipeline. The real Llama 2 tokenizer.json is the "legacy" one instead:
normalizer Sequence[Prepend("\u2581"), Replace(" ", "\u2581")], no
pre-tokenizer, model.unk_token "<unk>"; that is what we store and what
Tokenizer::from_gguf builds for tokenizer.ggml.model "llama" (llama.cpp also
prefixes a space at the start and after special tokens). The script checks it
against the ids in llama.cpp's ggml-vocab-llama-spm.gguf.out, which the
llama.cpp authors made with the real HF Llama 2 tokenizer. "merges_sha256" pins
the derived merges so the C++ derivation is checked on its own.
"spm_variants" are the transformers conversion as it is (Metaspace first), the
other Metaspace settings (always + split, never, the legacy add_prefix_space
form, the Metaspace decoder) over the same vocabulary, and a small Unigram
model with byte fallback trained here by `tokenizers` (its whole vocabulary is
in the fixture). "invalid_utf8" cases are raw bytes (hex) with the ids of their
lossy UTF-8 decoding (U+FFFD per maximal invalid subpart, as the C++ repairs).

"variants" are synthetic tokenizer.json files over the GPT-2 vocabulary that
exercise what the four real models do not: every Split behaviour, invert,
literal patterns, Digits without individual_digits, ByteLevel add_prefix_space,
NFKC, and added tokens with lstrip / rstrip / single_word / normalized.

Ids are encode(text, add_special_tokens=False) (BOS is the caller's business),
"ids_no_special" the same with encode_special_tokens=True (special tokens are
not parsed: parse_special=false in C++). "decoded" / "decoded_skip" are
decode(ids) without / with skip_special_tokens. "random_cases" are seeded
random strings over many character classes. "prefix_decodes" are decodes of
every prefix of the ids of short multi-byte texts: they pin the U+FFFD rules.
"""

import copy
import hashlib
import tarfile
import json
import os
import random
import re
import sys
from pathlib import Path

import gguf
from tokenizers import Tokenizer
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "tokenizer"
CACHE = Path(os.environ.get("CARTSERVE_CACHE", Path.home() / ".cache" / "cartserve"))

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def byte_level(add_prefix_space=False, trim_offsets=True, use_regex=True):
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space,
            "trim_offsets": trim_offsets, "use_regex": use_regex}


def split(regex=None, string=None, behavior="Isolated", invert=False):
    pattern = {"Regex": regex} if regex is not None else {"String": string}
    return {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert}


# What the models' own tokenizer.json files hold (fields that affect ids).
REAL = {
    "smollm2": {  # HuggingFaceTB/SmolLM2-135M-Instruct
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level()]},
        "ignore_merges": False,
    },
    "llama3": {  # meta-llama/Meta-Llama-3-8B(-Instruct), also 3.1/3.2/3.3
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split(regex=LLAMA3_REGEX), byte_level(use_regex=False)]},
        "ignore_merges": True,
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {
                 "id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]}}},
        ]},
    },
    "qwen2": {  # Qwen/Qwen2-7B-Instruct, Qwen2.5
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split(regex=QWEN2_REGEX), byte_level(trim_offsets=False, use_regex=False)]},
        "ignore_merges": False,
    },
    "gpt2": {  # openai-community/gpt2
        "normalizer": None,
        "pre_tokenizer": byte_level(),
        "ignore_merges": False,
    },
}

MODELS = [  # name, GGUF relative to the cache folder
    ("smollm2", "models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("llama3", "ref/vocab/ggml-vocab-llama-bpe.gguf"),
    ("qwen2", "ref/vocab/ggml-vocab-qwen2.gguf"),
    ("gpt2", "ref/vocab/ggml-vocab-gpt-2.gguf"),
]

PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon; "
    "Neil Armstrong's first words were \"That's one small step for [a] man, one giant leap "
    "for mankind.\" Today, roughly 8,100,000,000 people live on Earth, and about 65% of "
    "them use the Internet daily. Prices rose 3.7% year-over-year (from $4.99 to $5.17), "
    "while the average commute fell to 27.6 minutes. Don't panic: it's fine, they'll "
    "manage, we've seen worse, and I'd do it again! E-mail me at jane.doe@example.com or "
    "visit https://example.org/docs?page=2&lang=en#intro for details. Café owners in "
    "Zürich and São Paulo reported naïve résumés; 東京 and 北京 were busy; emoji 🎉🚀 "
    "everywhere.\n\n    Indented line\twith a tab.\nLast line with trailing spaces   \n"
)

TEXTS = [
    "",
    "Hello world",
    "Hello, world! How are you doing today?",
    " leading space",
    "trailing spaces   ",
    "  multiple   spaces  between  words  ",
    "tabs\tand\ttabs\t\t",
    "new\nlines\n\n\nand\r\nCRLF\r\n",
    "   \n  \t \n",
    "\n",
    " ",
    "\t\t\t",
    "1234567890",
    "3.14159265358979",
    "The year 2024 and 1,000,000 dollars",
    "x=12345678901234567890 y=007",
    "!!!???...,,,;;;",
    "(a+b)*c-d/e",
    "\"quoted\" 'single' `back`",
    "--==++__",
    "I'm you're he's we've they'll I'd can't won't",
    "IT'S YOU'RE WE'VE THEY'LL I'D",
    "'s's's rock'n'roll",
    "'\u017f long s and \u2019s curly",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m",
    "cafe\u0301 nai\u0308ve A\u030angstro\u0308m",
    "\u03a9\u2248\u00e7\u221a\u222b\u02dc\u00b5\u2264\u2265\u00f7",
    "\ufb01ne ligature \u2460 \u00bd \u2168",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002",
    "\u4e2d\u6587\u5b57\u7b26\u6d4b\u8bd5\uff0c\u5305\u62ec\u6807\u70b9\u7b26\u53f7\u3002",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\U0001F600\U0001F603\U0001F604",
    "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 family",
    "\U0001F3F3\ufe0f\u200d\U0001F308 flag",
    "\U0001F44D\U0001F3FD skin tone",
    "\U0001F1EF\U0001F1F5\U0001F1FA\U0001F1F8 flags",
    "def foo(x):\n    return x ** 2\n",
    "int main() {\n\treturn 0;\n}\n",
    "<div class=\"a\">&nbsp;</div>",
    "SELECT * FROM t WHERE id = 42;",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>",
    "text<|endoftext|>more <|endoftext|> end",
    "<|im_start|",
    "<<|im_end|>>",
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    # Words that are single Llama 3 tokens but that its merges alone would
    # split: they differ with model.ignore_merges on and off.
    "Vi\u1ec7t Nam c\u00f3 nhi\u1ec1u \u0111i\u1ec1u h\u1ee3p vi\u1ec7c; de\u011fi\u015f "
    "g\u00f6r\u00fcnmektedir jeho \u0627\u06cc\u0631\u0627\u0646",
    "a\u00a0b\u2009c\u3000d",
    "a\u180eb x\u200by \u2028line nel\u0085x",
    "\r \u180e\U0001D401 \u180e\u180eword",  # U+180E is not White_Space (PCRE2's \s has it)
    "\x00null\x01 bell\x07",
    "HeLLo WoRLD ALLCAPS",
    "https://example.com/path?q=1&r=2#frag user@example.org",
    "\u2211\u220f\u222b\u221a\u221e\u2260\u2248 \u20ac100 \u00a350 \u00a51000",
    "\u0660\u0661\u0662 \u0966\u0967 \uff11\uff12\uff13",
    PARAGRAPH,
    " " * 300 + "x",
    "a" * 500,
    "9" * 200,
    "\n" * 50 + "end",
    "\U0001F602" * 40,
    "word " * 400,
]

# Random strings over many character classes (letters of several scripts,
# digits of many scripts, Unicode whitespace incl. U+180E, marks, emoji
# sequences, special-token texts...): they find pre-tokenizer corner cases the
# hand-written texts miss. Seeded, so the fixture is reproducible.
RANDOM_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " ",
    "  \t\n\r\u00a0\u2009\u3000\u180e\u200b\u2028\u0085\u000b\u000c\u001c\u001f",
    "'\u2019\"`.,;:!?()[]{}<>|/\\-_=+*&^%$#@~",
    "\u00e9\u00e8\u00ea\u00eb\u00e0\u00e2\u00e4\u00f4\u00f6\u00fb\u00fc\u00e7\u00f1\u00c5"
    "\u00d6\u0153\u00df\u017f",
    "\u0301\u0308\u030a\u0327\u20dd\u0489",
    "\u65e5\u672c\u8a9e\u4e2d\u6587\u5b57\u7b26\u6d4b\u8bd5\ud55c\uad6d\uc5b4\u30c6\u30ad"
    "\u30b9\u30c8",
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440", "\u0645\u0631\u062d\u0628\u0627",
    "\u0928\u092e\u0938\u094d\u0924\u0947", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "\u0660\u0661\u0662\u0663\u06f4\u06f5\u07c0\u0966\u0967\u0968\u0969\u0b66\u0be7"
    "\u0d67\u0e51\u0ed1\u0f21\u1041\u1091\u17e0\u1811\u1946\u19d0\u1a80\u1b50\u1bb0"
    "\u1c40\u1c50\ua620\ua8d0\ua900\ua9d0\uaa50\uabf0\uff10\uff11\uff12",
    "\u2160\u2161\u2162\u2170\u2460\u2461\u2474\u2488\u00bd\u00bc\u00b2\u00b3",
    "\U0001F600\U0001F602\U0001F44D\U0001F3FD\U0001F468\u200d\U0001F469\u200d\U0001F467"
    "\U0001F3F3\ufe0f\u200d\U0001F308\U0001F1EF\U0001F1F5\U0001F389\U0001F680\u2764\ufe0f"
    "\u2728",
    "\ufb01\ufb02\uff21\uff22\uff23\uff41\uff42\uff43", "\U0001D400\U0001D401\U0001D402"
    "\U0001D7CE\U0001D7CF", "\u0000\u0001\u0007\u007f", "\u01c5\u01c8\u01cb",
    "\u02b0\u02b2\u02e0", "\u3005\u3006\u3007", "\u24d0\u24d1", "\ufeff\u200c\u200d",
]
SPECIAL_TEXTS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>",
                 "<|begin_of_text|>"]


def random_texts(n, seed=20240601):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 40)):
            pool = rng.choice(RANDOM_POOLS + ["<special>"])
            if pool == "<special>":
                parts.append(rng.choice(SPECIAL_TEXTS))
            else:
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
        out.append("".join(parts))
    return out


# Short multi-byte texts whose id prefixes are decoded (U+FFFD rules).
PREFIX_TEXTS = [
    "\U0001F600\U0001F603",
    "\U0001F468\u200d\U0001F469\u200d\U0001F467",
    "\u65e5\u672c\u8a9e",
    "caf\u00e9 \U0001F44D\U0001F3FD",
]


def read_gguf(path):
    r = gguf.GGUFReader(str(path))
    f = r.fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    merges = f["tokenizer.ggml.merges"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    return tokens, merges, types


def vocab_digest(tokens, merges):
    h = hashlib.sha256()
    for t in tokens:
        h.update(t.encode("utf-8") + b"\0")
    h.update(b"\1")
    for m in merges:
        h.update(m.encode("utf-8") + b"\0")
    return h.hexdigest()


def convert(gguf_path):
    """transformers' GGUF -> fast tokenizer conversion, as tokenizer.json."""
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    return json.loads(tok.backend_tokenizer.to_str())


def fix_up(name, conv, tokens, types):
    """Makes the converted tokenizer.json equal to the real model's (see top)."""
    real = REAL[name]
    j = copy.deepcopy(conv)
    if j["pre_tokenizer"] != real["pre_tokenizer"]:
        print(f"  {name}: pre_tokenizer fixed up\n    was {json.dumps(j['pre_tokenizer'])}")
        j["pre_tokenizer"] = real["pre_tokenizer"]
    if j["normalizer"] != real["normalizer"]:
        print(f"  {name}: normalizer fixed up (was {j['normalizer']})")
        j["normalizer"] = real["normalizer"]
    if j["model"].get("ignore_merges", False) != real["ignore_merges"]:
        print(f"  {name}: model.ignore_merges fixed up")
        j["model"]["ignore_merges"] = real["ignore_merges"]
    if "post_processor" in real:
        j["post_processor"] = real["post_processor"]
    # Added tokens: exactly the GGUF's control (special) and user-defined tokens.
    kept = [t for t in j["added_tokens"] if t["id"] < len(tokens)]
    if len(kept) != len(j["added_tokens"]):
        dropped = [t["content"] for t in j["added_tokens"] if t["id"] >= len(tokens)]
        print(f"  {name}: dropped added tokens not in the GGUF: {dropped}")
    j["added_tokens"] = kept
    want = {i: (tokens[i], types[i] == 3) for i in range(len(tokens)) if types[i] in (3, 4)}
    got = {t["id"]: (t["content"], t["special"]) for t in kept}
    assert got == want, f"{name}: added tokens differ from the GGUF's control/user tokens"
    assert all(not t["normalized"] and not t["lstrip"] and not t["rstrip"]
               and not t["single_word"] for t in kept)
    return j


def skeleton(j):
    s = copy.deepcopy(j)
    s["model"]["vocab"] = {}
    s["model"]["merges"] = []
    return s


def cases_for(tok, texts):
    out = []
    for text in texts:
        tok.encode_special_tokens = False
        ids = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        ids_ns = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        decoded = tok.decode(ids, skip_special_tokens=False)
        decoded_skip = tok.decode(ids, skip_special_tokens=True)
        # Fields equal to their default are left out to keep the files small:
        # ids_no_special defaults to ids, decoded to text, decoded_skip to decoded.
        case = {"text": text, "ids": ids}
        if ids_ns != ids:
            case["ids_no_special"] = ids_ns
        if decoded != text:
            case["decoded"] = decoded
        if decoded_skip != decoded:
            case["decoded_skip"] = decoded_skip
        out.append(case)
    return out


def prefix_decodes(tok):
    out = []
    for text in PREFIX_TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        for k in range(1, len(ids) + 1):
            out.append({"ids": ids[:k], "decoded": tok.decode(ids[:k], skip_special_tokens=False)})
    return out


def write(name, data):
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    text = json.dumps(data, ensure_ascii=False, indent=0, sort_keys=True)
    # Integer lists on one line (JSON strings hold no raw newline, so only
    # structural lists match).
    text = re.sub(r"\[\n[-\d,\n]*\]", lambda m: m.group(0).replace("\n", ""), text)
    assert json.loads(text) == data
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)")


def model_fixture(name, rel):
    path = CACHE / rel
    tokens, merges, types = read_gguf(path)
    conv = convert(path)
    # The conversion must read the same vocabulary the C++ test reads.
    assert conv["model"]["vocab"] == {t: i for i, t in enumerate(tokens)}, name
    assert [tuple(m) for m in conv["model"]["merges"]] == \
        [tuple(m.split(" ", 1)) for m in merges], name
    j = fix_up(name, conv, tokens, types)
    tok = Tokenizer.from_str(json.dumps(j))
    return {
        "gguf": rel,
        "n_tokens": len(tokens),
        "n_merges": len(merges),
        "vocab_sha256": vocab_digest(tokens, merges),
        "tokenizer_json": skeleton(j),
        "cases": cases_for(tok, TEXTS),
        "random_cases": cases_for(tok, random_texts(150)),
        "prefix_decodes": prefix_decodes(tok),
    }, j


VARIANT_TEXTS = [
    "Hello world, this is a test.",
    "  spaced   out  ",
    "a,b;c.d e",
    "numbers 123 and 4567 and 8",
    "fine \ufb01ne \u2460\u2461 \uff21\uff22",
    "say <mask> now",
    "say<mask>now",
    "  <mask>  x",
    "[BR]   next [BR]",
    "the cat sat on cathedral concatenate cat_ cat",
    "dog dogs DOG",
    "<sep><sep> <sep>",
    "",
    "\U0001F600 smile 12",
]


def variant_fixtures(gpt2_json):
    base = copy.deepcopy(gpt2_json)
    base["normalizer"] = None
    extra_added = [
        # special, lstrip + rstrip like RoBERTa's <mask>
        {"id": 50257, "content": "<mask>", "single_word": False, "lstrip": True,
         "rstrip": True, "normalized": False, "special": True},
        {"id": 50258, "content": "[BR]", "single_word": False, "lstrip": False,
         "rstrip": True, "normalized": False, "special": False},
        {"id": 50259, "content": "cat", "single_word": True, "lstrip": False,
         "rstrip": False, "normalized": True, "special": False},
        {"id": 50260, "content": "\uff24\uff2f\uff27", "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": True, "special": False},  # NFKC: "DOG"
        {"id": 50261, "content": "<sep>", "single_word": False, "lstrip": True,
         "rstrip": False, "normalized": False, "special": False},
    ]
    variants = {
        "removed_prefix_space": {
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                split(string=" ", behavior="Removed"),
                byte_level(add_prefix_space=True, use_regex=False)]}},
        "merged_with_previous": {
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                split(regex=r"\s+", behavior="MergedWithPrevious"),
                byte_level(use_regex=False)]}},
        "merged_with_next": {
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                split(regex=r"[,.;]| ", behavior="MergedWithNext"),
                byte_level(use_regex=False)]}},
        "contiguous_inverted": {
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                split(regex=r"\p{L}", behavior="Contiguous", invert=True),
                byte_level(use_regex=False)]}},
        "digits_contiguous_prefix": {
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": False},
                byte_level(add_prefix_space=True, use_regex=True)]}},
        "added_flags_nfkc": {
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}]},
            "pre_tokenizer": byte_level(),
            "added": extra_added},
        "added_flags_raw": {
            "pre_tokenizer": byte_level(), "added": extra_added},
    }
    out = {}
    for vname, v in variants.items():
        j = copy.deepcopy(base)
        j["pre_tokenizer"] = v["pre_tokenizer"]
        if "normalizer" in v:
            j["normalizer"] = v["normalizer"]
        j["added_tokens"] = j["added_tokens"] + v.get("added", [])
        tok = Tokenizer.from_str(json.dumps(j))
        out[vname] = {"tokenizer_json": skeleton(j), "cases": cases_for(tok, VARIANT_TEXTS)}
    return out


SPM_TEXTS = [
    "Hello world",
    " Hello world",
    "<s>[INST] hi [/INST]",
    "hi<s>there</s> again",
    " <s> x",
    "\u2581literal metaspace \u2581\u2581 and \u2581",
    "<0x41> is a byte token's text, not a byte",
    "<unk> text",
    "\u0f6b\u0f6c rare Tibetan, \U00010348 Gothic, \U0001F9EC dna",
    "\x00\x01\x02\x1b[31mred\x1b[0m\x7f",
    "   ",
    " " * 64 + "\n" + "\t" * 8,
    "\u00a0\u2009nbsp thin",
]

INVALID_UTF8 = [
    b"a\xe2\x82b\xff\xc0\xafz\xed\xa0\x80",
    b"\xf0\x9f\x98",
    b"ok \x80\x80 ok",
    b"\xf4\x90\x80\x80 above U+10FFFF",
    b"\xe6\x97\xa5\xe6\x9c",
]

SPM_GGUF = "ref/vocab/ggml-vocab-llama-spm.gguf"
SDIST = CACHE / "wheels" / "llama_cpp_python-0.3.36.tar.gz"
SDIST_MODELS = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"

# The real Llama 2 tokenizer.json pipeline (meta-llama/Llama-2-7b-hf).
LLAMA2_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "\u2581"},
    {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}


def read_gguf_spm(path):
    f = gguf.GGUFReader(str(path)).fields
    return (f["tokenizer.ggml.tokens"].contents(), f["tokenizer.ggml.scores"].contents(),
            f["tokenizer.ggml.token_type"].contents())


def merges_digest(merges):
    h = hashlib.sha256()
    for a, b in merges:
        h.update(f"{a} {b}".encode("utf-8") + b"\0")
    return h.hexdigest()


def llamacpp_cases(name):
    """llama.cpp's own test texts and the ids HF gave for them (.inp / .out)."""
    with tarfile.open(SDIST) as t:
        inp = t.extractfile(SDIST_MODELS + name + ".inp").read().decode("utf-8")
        out = t.extractfile(SDIST_MODELS + name + ".out").read().decode("utf-8")
    sep = "\n__ggml_vocab_test__\n"
    assert inp.endswith(sep)
    texts = inp[: -len(sep)].split(sep)
    ids = [[int(x) for x in line.split()] for line in out.split("\n")[: len(texts)]]
    assert len(texts) == len(ids), (len(texts), len(ids))
    return texts, ids


def invalid_cases(tok):
    out = []
    for raw in INVALID_UTF8:
        text = raw.decode("utf-8", "replace")
        out.append({"hex": raw.hex(), "ids": tok.encode(text, add_special_tokens=False).ids})
    return out


def train_unigram():
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    corpus = [PARAGRAPH] * 4 + TEXTS[:60] + VARIANT_TEXTS
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                      unk_token="<unk>", shrinking_factor=0.75, n_sub_iterations=2,
                                      max_piece_length=8, seed_size=20000)
    tok.train_from_iterator(corpus, trainer)
    j = json.loads(tok.to_str())
    # Byte fallback over <0x00>..<0xFF>, scored below every piece, and the
    # SentencePiece decoder chain.
    vocab = j["model"]["vocab"]
    have = {p for p, _ in vocab}
    low = min(s for _, s in vocab) - 1.0
    vocab += [[f"<0x{b:02X}>", low] for b in range(256) if f"<0x{b:02X}>" not in have]
    j["model"]["byte_fallback"] = True
    j["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    return j


def spm_fixture():
    path = CACHE / SPM_GGUF
    tokens, scores, types = read_gguf_spm(path)
    conv = convert(path)
    assert conv["model"]["vocab"] == {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m) for m in conv["model"]["merges"]]
    assert conv["pre_tokenizer"]["type"] == "Metaspace" and conv["normalizer"] is None
    added = {t["id"]: t["content"] for t in conv["added_tokens"]}
    assert added == {i: tokens[i] for i in range(len(tokens)) if types[i] in (2, 3)}, added
    # Llama 2's real pipeline (see top).
    legacy = copy.deepcopy(conv)
    legacy["normalizer"] = LLAMA2_NORMALIZER
    legacy["pre_tokenizer"] = None
    legacy["model"]["unk_token"] = "<unk>"
    tok = Tokenizer.from_str(json.dumps(legacy))
    texts, want = llamacpp_cases("ggml-vocab-llama-spm.gguf")
    bad = [(t, w, tok.encode(t, add_special_tokens=False).ids) for t, w in zip(texts, want)
           if tok.encode(t, add_special_tokens=False).ids != w]
    assert not bad, f"legacy Llama 2 pipeline differs from llama.cpp's HF ids: {bad[:3]}"
    print(f"  llama_spm: {len(texts)} llama.cpp reference texts match")
    all_texts = TEXTS + SPM_TEXTS + texts
    data = {
        "gguf": SPM_GGUF,
        "n_tokens": len(tokens),
        "n_merges": len(merges),
        "vocab_sha256": vocab_digest(tokens, []),
        "merges_sha256": merges_digest(merges),
        "tokenizer_json": skeleton(legacy),
        "cases": cases_for(tok, all_texts),
        "random_cases": cases_for(tok, random_texts(150)),
        "prefix_decodes": prefix_decodes(tok),
        "invalid_utf8": invalid_cases(tok),
    }

    def metaspace(**kw):
        return dict({"type": "Metaspace", "replacement": "\u2581"}, **kw)
    no_strip = {"type": "Sequence", "decoders": conv["decoder"]["decoders"][:3]}
    variants = {
        "metaspace_first": {},  # the transformers conversion as it is
        "metaspace_always_split": {"pre_tokenizer": metaspace(prepend_scheme="always",
                                                              split=True)},
        "metaspace_never": {"pre_tokenizer": metaspace(prepend_scheme="never", split=False),
                            "decoder": no_strip},
        "metaspace_legacy_fields": {
            "pre_tokenizer": metaspace(add_prefix_space=True),
            "decoder": metaspace(add_prefix_space=True)},
        "metaspace_decoder_first": {
            "decoder": metaspace(prepend_scheme="first", split=False)},
    }
    vtexts = VARIANT_TEXTS + SPM_TEXTS + TEXTS[:40]
    out = {}
    for vname, v in variants.items():
        j = copy.deepcopy(conv)
        j.update(v)
        vt = Tokenizer.from_str(json.dumps(j))
        out[vname] = {"tokenizer_json": skeleton(j), "cases": cases_for(vt, vtexts),
                      "invalid_utf8": invalid_cases(vt)}
    uni = train_unigram()
    ut = Tokenizer.from_str(json.dumps(uni))
    out["unigram_byte_fallback"] = {"tokenizer_json": uni, "full_json": True,
                                    "cases": cases_for(ut, vtexts + random_texts(40, seed=7)),
                                    "invalid_utf8": invalid_cases(ut)}
    data_v = {"gguf": SPM_GGUF, "n_tokens": len(tokens), "n_merges": len(merges),
              "vocab_sha256": vocab_digest(tokens, []), "merges_sha256": merges_digest(merges),
              "variants": out}
    return data, data_v


def main():
    data, data_v = spm_fixture()
    write("llama_spm", data)
    write("spm_variants", data_v)
    full = {}
    for name, rel in MODELS:
        print(f"{name}: {rel}")
        data, j = model_fixture(name, rel)
        full[name] = j
        write(name, data)
    tokens, merges, _ = read_gguf(CACHE / "ref/vocab/ggml-vocab-gpt-2.gguf")
    write("variants", {
        "gguf": "ref/vocab/ggml-vocab-gpt-2.gguf",
        "n_tokens": len(tokens),
        "n_merges": len(merges),
        "vocab_sha256": vocab_digest(tokens, merges),
        "variants": variant_fixtures(full["gpt2"]),
    })


if __name__ == "__main__":
    sys.exit(main())
