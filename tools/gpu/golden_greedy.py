#!/usr/bin/env python3
"""The real SmolLM2 on the GPU against the golden fixture (HF transformers on the same GGUF,
fp32; the CPU build matches it to < 1e-4): per prompt, the logits at every position against
the reference's top-64 (max |difference|, top-1 agreement), and the greedy continuation:
tokens equal before the first difference and our top-2 logit gap there.

  golden_greedy.py GOLDEN.json OURS_DIR OUT.json     (OURS_DIR: dump_logits' output)
"""
import json
import os
import sys

import numpy as np

golden = json.load(open(sys.argv[1]))["prompts"]
ours_dir = sys.argv[2]
ours = json.load(open(os.path.join(ours_dir, "greedy.json")))["greedy"]
res = {"prompts": []}
agree_all = total_all = 0
for i, (p, o) in enumerate(zip(golden, ours)):
    n = len(p["ids"])
    logits = np.fromfile(os.path.join(ours_dir, f"logits_{i}.f32"), dtype=np.float32).reshape(n, -1)
    ids, ref = np.array(p["top_ids"]), np.array(p["top_logits"], dtype=np.float32)
    ours_top = np.take_along_axis(logits, ids, axis=1)
    agree = int((logits.argmax(-1) == ids[:, 0]).sum())
    agree_all += agree
    total_all += n
    entry = {"name": p["name"], "tokens": n,
             "top64_max_abs_diff": float(np.abs(ours_top - ref).max()),
             "top1_agree": agree}
    want = p.get("greedy")
    if want:
        got = o["tokens"][:len(want)]
        first = next((k for k in range(len(want)) if got[k] != want[k]), None)
        entry["greedy"] = {"length": len(want),
                           "equal_prefix": len(want) if first is None else first,
                           "our_top2_gap_there": None if first is None else o["gaps"][first]}
    res["prompts"].append(entry)
res["top1_agreement"] = agree_all / total_all
res["all_greedy_equal"] = all(e["greedy"]["equal_prefix"] == e["greedy"]["length"]
                              for e in res["prompts"] if "greedy" in e)
json.dump(res, open(sys.argv[3], "w"), indent=1)
print(json.dumps(res, indent=1))
sys.exit(0 if res["all_greedy_equal"] else 1)
