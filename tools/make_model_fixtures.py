#!/usr/bin/env python3
"""Golden logits and greedy continuations from HF transformers (the independent reference).

1. SmolLM2-135M-Instruct from the very GGUF our tests load: transformers dequantizes the
   Q4_1/Q8_0 tensors with gguf-py and runs its own fp32 Llama (eager attention).
2. Two tiny random-weight HF checkpoints written by transformers itself (safetensors, bf16):
   - tiny-llama: Llama with llama3 RoPE scaling, untied LM head, GQA, sharded into 2 files;
   - tiny-qwen2: Qwen2 (q/k/v biases), tied embeddings, one file;
   - tiny-qwen3: Qwen3 (per-head RMSNorm on q and k before RoPE, no biases),
     head_dim 32 != hidden/heads, tied embeddings; tiny-qwen3-untied: the same
     with an untied LM head;
   - tiny-mistral: Mistral with a SentencePiece-style tokenizer (BPE with
     byte fallback, Metaspace prepend_scheme "first", Llama 2's decoder chain),
     trained here; golden.json also holds HF's ids for a few texts.
   The others get a small byte-level BPE tokenizer trained here with `tokenizers`.

3. GGUF files of tiny-qwen3 (arch qwen3, byte-level tokenizer) and tiny-mistral
   (arch llama with llama.cpp's Q/K row permutation, tokenizer.ggml.model
   "llama" with byte tokens and merges), F32 tensors written with gguf-py from
   the same checkpoints: the C++ GGUF loader must give the folders' golden
   logits.

Outputs (tests/fixtures/model/):
  smollm2_golden.json      prompts: token ids, top-64 logits at every position,
                           greedy continuations; *.f32 full last-position logits
  tiny-llama/, tiny-qwen2/ checkpoints + golden.json (full logits, all positions)
  tiny-qwen3.gguf, tiny-mistral.gguf  the same weights as GGUF (see 3.)

Run: /work/venv-tools/bin/python tools/make_model_fixtures.py [--gguf PATH] [--only a,b]
Deterministic (fixed seeds, CPU, fp32).
"""
import argparse
import json
import os
import re
import shutil
import tempfile

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers import processors
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "model")
TOPK = 64


def smollm2(gguf_path):
    tmp = tempfile.mkdtemp()
    os.symlink(os.path.abspath(gguf_path), os.path.join(tmp, "model.gguf"))
    tok = AutoTokenizer.from_pretrained(tmp, gguf_file="model.gguf")
    model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file="model.gguf", dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    long_text = open(os.path.join(ROOT, "tests", "fixtures", "text", "long_prompt.txt")).read()
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    prompts = [
        ("short", "The capital of France is", 64),
        ("medium", "Photosynthesis is the process by which green plants use sunlight, water and "
                   "carbon dioxide to make sugar. Oxygen is released as a by-product. In the "
                   "first stage, light is absorbed by", 0),
        ("chat", chat, 64),
        ("long", long_text, 0),
    ]
    out = {"model": os.path.basename(gguf_path), "topk": TOPK, "prompts": []}
    for name, text, n_gen in prompts:
        ids = tok(text, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()  # [T, vocab]
        top_v, top_i = logits.topk(TOPK, dim=-1)
        entry = {
            "name": name, "text": text, "ids": ids,
            "top_ids": top_i.tolist(),
            "top_logits": [[round(float(x), 6) for x in row] for row in top_v],
            "last_logits_file": f"smollm2_{name}_last.f32",
        }
        logits[-1].numpy().astype("<f4").tofile(os.path.join(OUT, entry["last_logits_file"]))
        if n_gen:
            gen = model.generate(torch.tensor([ids]), max_new_tokens=n_gen, do_sample=False,
                                 eos_token_id=None, pad_token_id=tok.eos_token_id)
            entry["greedy"] = gen[0, len(ids):].tolist()
        out["prompts"].append(entry)
        print(f"smollm2 {name}: {len(ids)} tokens")
    with open(os.path.join(OUT, "smollm2_golden.json"), "w") as f:
        json.dump(out, f)
    shutil.rmtree(tmp)


def train_tokenizer(vocab_size):
    text = open(os.path.join(ROOT, "tests", "fixtures", "text", "long_prompt.txt")).read()
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 3, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([text], trainer)
    tk.add_special_tokens(["<|bos|>", "<|eos|>", "<|pad|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>")


def train_spm_tokenizer(vocab_size):
    """SentencePiece-style BPE: <unk> <s> </s>, the 256 <0xNN> byte tokens, then
    merges learned on the long prompt between Metaspace word boundaries."""
    text = open(os.path.join(ROOT, "tests", "fixtures", "text", "long_prompt.txt")).read()
    meta = "\u2581"
    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement=meta, prepend_scheme="first",
                                                split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 259, show_progress=False)
    tk.train_from_iterator([text], trainer)
    trained = json.loads(tk.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    spm = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    spm.pre_tokenizer = pre_tokenizers.Metaspace(replacement=meta, prepend_scheme="first",
                                                 split=False)
    spm.decoder = decoders.Sequence([decoders.Replace(meta, " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    spm.add_special_tokens(["<unk>", "<s>", "</s>"])
    spm.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=spm, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


CACHE_TEXT = "The lighthouse keeper climbed the stairs."

TOKENIZER_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    " leading space and  two  spaces",
    "caf\u00e9 na\u00efve \U0001F600 \u65e5\u672c\u8a9e \u0394",
    "line one\nline two\ttab",
]


def tiny(name, config, cls, shard, tok=None, chat_template=None):
    torch.manual_seed(1234)
    model = cls(config).eval()
    # Larger weights than the default init so logits are far from uniform (stable top-1).
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.uniform_(0.6, 1.4)
            elif p.dim() > 1:
                p.normal_(0.0, 0.15)
            else:  # biases
                p.normal_(0.0, 0.3)
    model = model.to(torch.bfloat16)
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, max_shard_size="100KB" if shard else "50MB", safe_serialization=True)
    if tok is None:
        tok = train_tokenizer(config.vocab_size)
    tok.chat_template = chat_template or (
        "{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}")
    tok.save_pretrained(d)
    # Reference computation in fp32 from the saved bf16 weights.
    ref = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(99)
    prompts = [torch.randint(0, config.vocab_size - 3, (n,), generator=g).tolist() for n in (7, 40)]
    golden = {"prompts": []}
    for ids in prompts:
        with torch.no_grad():
            logits = ref(torch.tensor([ids])).logits[0].float()
        gen = ref.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                           eos_token_id=None, pad_token_id=config.pad_token_id)
        golden["prompts"].append({
            "ids": ids,
            "logits": [[round(float(x), 6) for x in row] for row in logits],
            "greedy": gen[0, len(ids):].tolist(),
        })
    if name == "tiny-qwen3":
        # HF's KV cache of a short text: keys after k_norm and RoPE, what a
        # Qwen3 cartridge must hold. [layer][kv_head][token][dim]
        ids = tok(CACHE_TEXT, add_special_tokens=False).input_ids
        with torch.no_grad():
            pkv = ref(torch.tensor([ids]), use_cache=True).past_key_values
        rnd = lambda t: [[[round(float(x), 6) for x in row] for row in h] for h in t[0]]  # noqa: E731
        golden["cache"] = {"text": CACHE_TEXT, "ids": ids,
                           "keys": [rnd(layer.keys) for layer in pkv.layers],
                           "values": [rnd(layer.values) for layer in pkv.layers]}
    if name.startswith(("tiny-qwen3", "tiny-mistral")):  # newer fixtures: tokenizer ids too
        golden["texts"] = [{"text": t, "ids": tok(t, add_special_tokens=False).input_ids,
                            "decoded": tok.decode(tok(t, add_special_tokens=False).input_ids)}
                           for t in TOKENIZER_TEXTS]
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(golden, f)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} params, files {sorted(os.listdir(d))}")


GGUF_NAMES = {  # HF name (after "model.layers.N.") -> GGUF name (after "blk.N.")
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def llama_permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (interleaved RoPE)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def write_gguf(name, arch):
    import gguf
    from safetensors.torch import load_file
    d = os.path.join(OUT, name)
    cfg = json.load(open(os.path.join(d, "config.json")))
    tj = json.load(open(os.path.join(d, "tokenizer.json")))
    weights = {k: v.float().numpy() for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    path = os.path.join(OUT, f"{name}.gguf")
    w = gguf.GGUFWriter(path, arch)
    w.add_name(name)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_vocab_size(cfg["vocab_size"])
    # Tokenizer: the vocabulary in id order, merges, token types.
    added = {t["id"]: t for t in tj["added_tokens"]}
    vocab = dict(tj["model"]["vocab"])
    for i, t in added.items():
        vocab[t["content"]] = i
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert len(tokens) == cfg["vocab_size"] and [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
    types = []
    for i, t in enumerate(tokens):
        if i in added and added[i]["special"]:
            types.append(2 if t == "<unk>" else 3)
        elif re.fullmatch(r"<0x[0-9A-F]{2}>", t) and arch == "llama":
            types.append(6)
        else:
            types.append(1)
    w.add_tokenizer_model("llama" if arch == "llama" else "gpt2")
    if arch != "llama":
        w.add_tokenizer_pre("gpt-2")  # the tiny tokenizers' ByteLevel(use_regex) split
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    if arch == "llama":
        w.add_token_scores([0.0] * len(tokens))
        w.add_add_space_prefix(True)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_add_bos_token(arch == "llama")
    w.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", weights["model.norm.weight"])
    if "lm_head.weight" in weights:
        w.add_tensor("output.weight", weights["lm_head.weight"])
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in GGUF_NAMES.items():
            key = f"model.layers.{i}.{hf}"
            if key not in weights:
                continue
            t = weights[key]
            if arch == "llama" and hf == "self_attn.q_proj.weight":
                t = llama_permute(t, cfg["num_attention_heads"])
            elif arch == "llama" and hf == "self_attn.k_proj.weight":
                t = llama_permute(t, cfg["num_key_value_heads"])
            w.add_tensor(f"blk.{i}.{gg}", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.expanduser(
        "~/.cache/cartserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--only", default="", help="comma-separated fixture names (default: all)")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    want = lambda n: not only or n in only  # noqa: E731
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    if want("smollm2"):
        smollm2(args.gguf)
    vocab = 320
    for qname, tied in (("tiny-qwen3", True), ("tiny-qwen3-untied", False)):
        if want(qname):
            tiny(qname, Qwen3Config(
                vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=tied,
                bos_token_id=vocab - 3, eos_token_id=vocab - 2, pad_token_id=vocab - 1,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                attention_bias=False, use_sliding_window=False),
                Qwen3ForCausalLM, shard=False)
    if want("tiny-qwen3"):
        write_gguf("tiny-qwen3", "qwen3")
    if want("tiny-mistral"):
        spm_tok = train_spm_tokenizer(384)
        n = len(spm_tok)
        tiny("tiny-mistral", MistralConfig(
            vocab_size=n, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
            pad_token_id=None, sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
            MistralForCausalLM, shard=False, tok=spm_tok,
            chat_template=("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                           "[INST] {{ m['content'] }} [/INST]{% else %}{{ m['content'] }}"
                           "{{ eos_token }}{% endif %}{% endfor %}"))
        write_gguf("tiny-mistral", "llama")
    if want("tiny-llama"):
        tiny("tiny-llama", LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=vocab - 3,
            eos_token_id=vocab - 2, pad_token_id=vocab - 1,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16}),
            LlamaForCausalLM, shard=True)
    if want("tiny-qwen2"):
        tiny("tiny-qwen2", Qwen2Config(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=4096,
            rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=vocab - 3,
            eos_token_id=vocab - 2, pad_token_id=vocab - 1, rope_theta=1000000.0,
            use_sliding_window=False),
            Qwen2ForCausalLM, shard=False)


if __name__ == "__main__":
    main()
