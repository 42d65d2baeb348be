#!/usr/bin/env python3
"""Golden logits and greedy continuations from HF transformers (the independent reference).

1. SmolLM2-135M-Instruct from the very GGUF our tests load: transformers dequantizes the
   Q4_1/Q8_0 tensors with gguf-py and runs its own fp32 Llama (eager attention).
2. Two tiny random-weight HF checkpoints written by transformers itself (safetensors, bf16):
   - tiny-llama: Llama with llama3 RoPE scaling, untied LM head, GQA, sharded into 2 files;
   - tiny-qwen2: Qwen2 (q/k/v biases), tied embeddings, one file.
   Each gets a small byte-level BPE tokenizer trained here with `tokenizers`.

Outputs (tests/fixtures/model/):
  smollm2_golden.json      prompts: token ids, top-64 logits at every position,
                           greedy continuations; *.f32 full last-position logits
  tiny-llama/, tiny-qwen2/ checkpoints + golden.json (full logits, all positions)

Run: /work/venv-tools/bin/python tools/make_model_fixtures.py [--gguf PATH]
Deterministic (fixed seeds, CPU, fp32).
"""
import argparse
import json
import os
import shutil
import tempfile

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

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


def tiny(name, config, cls, shard):
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
    tok = train_tokenizer(config.vocab_size)
    tok.chat_template = ("{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n"
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
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(golden, f)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} params, files {sorted(os.listdir(d))}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.expanduser(
        "~/.cache/cartserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    smollm2(args.gguf)
    vocab = 320
    tiny("tiny-llama", LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=vocab - 3,
        eos_token_id=vocab - 2, pad_token_id=vocab - 1,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16}),
        LlamaForCausalLM, shard=True)
    tiny("tiny-qwen2", Qwen2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=4096,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=vocab - 3,
        eos_token_id=vocab - 2, pad_token_id=vocab - 1, rope_theta=1000000.0,
        use_sliding_window=False),
        Qwen2ForCausalLM, shard=False)


if __name__ == "__main__":
    main()
