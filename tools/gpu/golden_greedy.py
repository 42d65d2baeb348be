#!/usr/bin/env python3
"""The real SmolLM2 on the GPU against the golden greedy continuations (HF transformers on the
same GGUF, fp32; the CPU build matches them token for token): per prompt, the tokens equal
before the first difference and our top-2 logit gap there (a near tie or a real difference).

  golden_greedy.py GOLDEN.json OURS_GREEDY.json OUT.json
"""
import json
import sys

golden = json.load(open(sys.argv[1]))["prompts"]
ours = json.load(open(sys.argv[2]))["greedy"]
res = {"prompts": []}
for p, o in zip(golden, ours):
    want = p.get("greedy")
    if not want:
        continue
    got = o["tokens"][:len(want)]
    first = next((k for k in range(len(want)) if got[k] != want[k]), None)
    res["prompts"].append({"name": p["name"], "length": len(want),
                           "equal_prefix": len(want) if first is None else first,
                           "our_top2_gap_there": None if first is None else o["gaps"][first]})
res["all_equal"] = all(p["equal_prefix"] == p["length"] for p in res["prompts"])
json.dump(res, open(sys.argv[3], "w"), indent=1)
print(json.dumps(res, indent=1))
sys.exit(0 if res["all_equal"] else 1)
