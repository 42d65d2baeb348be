#!/usr/bin/env python3
"""Seed corpora for the libFuzzer targets (tests/fuzz/corpus/NAME/), from the committed
fixtures and a few hand-written inputs. Standard library only; deterministic.

Run: python3 tools/make_fuzz_corpus.py   (rewrites tests/fuzz/corpus)
"""
import json
import os
import shutil
import struct
import zipfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests/fuzz/corpus")
PT = os.path.join(ROOT, "tests/fixtures/cartridge_formats")
PT_SEEDS = ["written_by_cartserve.pt", "deflated_params_bf16.pt", "proto4_params.pt", "proto5_lists.pt",
            "evil_os_system.pt", "token_ids.pt", "tuples_one_frozen.pt", "attributes_state.pt"]


def put(name, key, data):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, key), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def tiny_gguf(arch="llama"):
    """A GGUF v3 file: a few metadata keys of several types and two small tensors (F32, Q8_0)."""
    kv = []
    kv.append(gguf_string("general.architecture") + struct.pack("<I", 8) + gguf_string(arch))
    kv.append(gguf_string(arch + ".block_count") + struct.pack("<II", 4, 1))
    kv.append(gguf_string(arch + ".embedding_length") + struct.pack("<II", 4, 32))
    kv.append(gguf_string(arch + ".attention.head_count") + struct.pack("<II", 4, 2))
    kv.append(gguf_string(arch + ".rope.freq_base") + struct.pack("<If", 6, 10000.0))
    toks = [b"<s>", b"a", b"b", b"ab"]
    kv.append(gguf_string("tokenizer.ggml.model") + struct.pack("<I", 8) + gguf_string("gpt2"))
    kv.append(gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, len(toks)) +
              b"".join(struct.pack("<Q", len(t)) + t for t in toks))
    kv.append(gguf_string("tokenizer.ggml.merges") + struct.pack("<IIQ", 9, 8, 1) + gguf_string("a b"))
    tensors = [("token_embd.weight", 0, [32, 4], 32 * 4 * 4), ("blk.0.attn_q.weight", 8, [32, 2], 2 * 34)]
    info, offset = b"", 0
    for name, ttype, dims, nbytes in tensors:
        info += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", x) for x in dims)
        info += struct.pack("<IQ", ttype, offset)
        offset += (nbytes + 31) // 32 * 32
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv) + info
    head += b"\0" * ((32 - len(head) % 32) % 32)
    data = bytearray(offset)
    for i in range(32 * 4):
        struct.pack_into("<f", data, 4 * i, (i % 7) * 0.25)
    return head + bytes(data)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    for f in PT_SEEDS:
        raw = open(os.path.join(PT, f), "rb").read()
        put("torch_pt", f, raw)
        put("zip", f, raw)
        with zipfile.ZipFile(os.path.join(PT, f)) as z:
            pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
            body = z.read(pkl)
        put("pickle", f.replace(".pt", ".pkl"), body)          # even first byte: no persistent ids
        put("pickle", f.replace(".pt", "_persid.pkl"), b"\x01" + body)
    put("zip", "empty.zip", b"PK\x05\x06" + b"\0" * 18)
    put("safetensors", "cartridge.safetensors", open(os.path.join(PT, "written_by_cartserve.safetensors"), "rb").read())
    put("safetensors", "formats.safetensors",
        open(os.path.join(ROOT, "tests/fixtures/formats/cartserve_written.safetensors"), "rb").read()[:65536])
    hdr = json.dumps({"__metadata__": {"k": "v"}, "t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    put("safetensors", "small.safetensors", struct.pack("<Q", len(hdr)) + hdr + b"\0" * 8)
    put("gguf", "tiny_llama.gguf", tiny_gguf())
    put("gguf", "tiny_qwen2.gguf", tiny_gguf("qwen2"))
    manifest = {"cartridge_id": "doc_1", "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "num_layers": 30,
                "num_kv_heads": 3, "head_dim": 64, "dtype": "bfloat16", "num_tokens_raw": 100,
                "num_tokens_aligned": 96, "block_size": 16, "num_blocks": 6, "has_frozen_prefix": True,
                "num_frozen_tokens": 1, "labels": {"patient": "p01"}, "checksum": "0" * 64}
    put("manifest", "full.json", json.dumps(manifest, indent=1))
    put("manifest", "minimal.json", json.dumps({k: manifest[k] for k in list(manifest)[:10]}))
    put("kv_transfer_config", "explicit.json", json.dumps({
        "kv_connector": "CartridgeConnector", "kv_role": "kv_both",
        "kv_connector_extra_config": {"cartridges": [{"cartridge_id": "a", "path": "/x/a.pt"}],
                                      "router": {"type": "explicit"}, "gpu_capacity_bytes": 1 << 30}}))
    put("kv_transfer_config", "label.json", json.dumps({
        "kv_connector": "CartridgeConnector", "kv_connector_extra_config": {
            "cartridges": [{"cartridge_id": "a", "path": "a.pt", "labels": {"p": "1"}}],
            "router": {"type": "label", "field": "p"}, "mode": "prefix", "on_unknown": "ignore"}}))
    put("openai_request", "chat.json", "\0" + json.dumps({
        "model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        "max_tokens": 4, "temperature": 0.5, "logprobs": True, "top_logprobs": 2, "stop": ["x"],
        "kv_transfer_params": {"cartridge_id": ["a", "b"], "rerotate": True}, "stream": True}))
    put("openai_request", "completion.json", "\1" + json.dumps({
        "model": "m", "prompt": [[1, 2, 3], [4]], "n": 2, "echo": True, "logprobs": 1, "seed": 3,
        "logit_bias": {"5": -100}, "stop_token_ids": [2]}))
    put("openai_request", "completion_text.json", "\1" + json.dumps({"prompt": "Hello \u00e9\ud83d\ude00", "max_tokens": 0}))
    templates = json.load(open(os.path.join(ROOT, "tests/fixtures/chat_template/model_templates.json")))
    for t in templates["templates"]:
        if "source" in t:
            put("chat_template", t["name"] + ".jinja", t["source"])
    put("chat_template", "nested.jinja", "{% for m in messages %}{% if m.role == 'user' %}{{ m.content | upper }}"
        "{% else %}{{ m.content[:3] }}{% endif %}{% endfor %}{% macro f(x) %}{{ f(x) }}{% endmacro %}")
    put("chat_template", "loops.jinja", "{% for i in range(n) %}{% for j in l %}{{ i * j }}{% endfor %}{% endfor %}"
        "{{ d | tojson }}{{ s.split(' ') | join('-') }}{% set ns = namespace(x=0) %}{{ ns.x }}")
    for i, text in enumerate(["Hello world", "  leading   spaces\t\ttabs\n\nnewlines",
                              "caf\u00e9 \u4e2d\u6587 \U0001F600\U0001F469\u200d\U0001F4BB",
                              "<|bos|>special<|eos|> tokens", "x" * 300]):
        put("tokenizer", f"text_{i}", bytes([i * 37 % 256]) + text.encode())
    put("tokenizer", "invalid_utf8", b"\x80" + b"ok \xff\xfe \xc3( \xed\xa0\x80 \xf4\x90\x80\x80 end")
    put("tokenizer", "controls", b"\x01" + bytes(range(0, 32)) + b"\x7f")


if __name__ == "__main__":
    main()
