#!/usr/bin/env python3
"""Reference sampling distributions for tests/unit/sampler (src/engine/sampler.h).

Rebuilds vLLM v1's sampler semantics with torch (float64), independently of
the C++ code: raw logprobs = log_softmax(logits); min_tokens masks EOS and
stop ids; repetition penalty over prompt+output (divide positive, multiply
negative), frequency/presence over output counts; temperature; min_p (keep
p >= min_p * max p); top_k (keep logits >= k-th largest); top_p (sort
ascending, drop tokens whose ascending cumulative mass <= 1 - p, always keep
the most likely). Writes tests/fixtures/sampler/distributions.json.
Deterministic (fixed torch seed).
"""
import json
import pathlib

import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sampler" / "distributions.json"
VOCAB = 64


def reference(logits, p, prompt, output, eos):
    x = logits.clone()
    if len(output) < p.get("min_tokens", 0):
        ids = list(p.get("stop_token_ids", []))
        if not p.get("ignore_eos", False):
            ids += eos
        x[ids] = float("-inf")
    r = p.get("repetition_penalty", 1.0)
    if r != 1.0:
        seen = sorted(set(prompt) | set(output))
        v = x[seen]
        x[seen] = torch.where(v > 0, v / r, v * r)
    counts = torch.bincount(torch.tensor(output, dtype=torch.long), minlength=VOCAB).to(x.dtype)
    x = x - p.get("frequency_penalty", 0.0) * counts - p.get("presence_penalty", 0.0) * (counts > 0).to(x.dtype)
    t = p.get("temperature", 1.0)
    if t < 1e-5:
        probs = torch.zeros(VOCAB, dtype=torch.float64)
        probs[int(torch.argmax(x))] = 1.0
        return probs
    x = x / t
    min_p = p.get("min_p", 0.0)
    if min_p > 0:
        pr = torch.softmax(x, -1)
        x = x.masked_fill(pr < min_p * pr.max(), float("-inf"))
    k = p.get("top_k", 0)
    top_p = p.get("top_p", 1.0)
    srt, idx = torch.sort(x, descending=False)
    if 0 < k < VOCAB:
        kth = srt[VOCAB - k]
        srt = srt.masked_fill(srt < kth, float("-inf"))
    if top_p < 1.0:
        ps = torch.softmax(srt, -1)
        cum = torch.cumsum(ps, -1)
        mask = cum <= 1 - top_p
        mask[-1] = False
        srt = srt.masked_fill(mask, float("-inf"))
    x = torch.empty_like(x).scatter_(0, idx, srt)
    return torch.softmax(x, -1)


def main():
    g = torch.Generator().manual_seed(1234)
    prompt = [3, 5, 5, 9, 17, 40]
    output = [5, 12, 12, 12, 33, 63]
    eos = [2]
    params = [
        {"temperature": 1.0},
        {"temperature": 0.5},
        {"temperature": 1.7},
        {"temperature": 0.0, "repetition_penalty": 1.3},
        {"temperature": 1.0, "top_k": 5},
        {"temperature": 0.8, "top_p": 0.6},
        {"temperature": 1.0, "top_p": 0.95},
        {"temperature": 1.0, "min_p": 0.2},
        {"temperature": 0.7, "top_k": 10, "top_p": 0.8},
        {"temperature": 1.2, "top_k": 20, "top_p": 0.9, "min_p": 0.05},
        {"temperature": 1.0, "repetition_penalty": 1.5},
        {"temperature": 1.0, "frequency_penalty": 0.7, "presence_penalty": 0.4},
        {"temperature": 1.0, "repetition_penalty": 0.8, "frequency_penalty": -0.5,
         "presence_penalty": 1.5},
        {"temperature": 1.0, "min_tokens": 10, "stop_token_ids": [7]},
        {"temperature": 1.0, "min_tokens": 10, "stop_token_ids": [7], "ignore_eos": True},
    ]
    cases = []
    for i, p in enumerate(params):
        logits = torch.randn(VOCAB, generator=g, dtype=torch.float64) * 2.5
        # Strong candidates for the stop tokens so masking matters.
        logits[2] = logits.max() + 1.0
        logits[7] = logits.max() + 0.5
        logits = logits.to(torch.float32).to(torch.float64)  # exactly representable in float32
        probs = reference(logits, p, prompt, output, eos)
        cases.append({
            "params": p,
            "logits": [float(v) for v in logits],
            "probs": [float(v) for v in probs],
            "raw_logprobs": [float(v) for v in torch.log_softmax(logits, -1)],
        })
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"vocab": VOCAB, "prompt": prompt, "output": output, "eos": eos,
                               "cases": cases}) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
