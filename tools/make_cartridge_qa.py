#!/usr/bin/env python3
"""Documents and questions for the cartridge validation tiers (1 and 3) and the demo.

The independent reference is HF transformers running SmolLM2-135M-Instruct from the very
GGUF the tests load (dequantized by gguf-py, fp32, eager attention, CPU, one thread).

Prompt format (what a cartridge in "virtual" mode stands in for):
  prefix = chat_template([{system: DOC}], add_generation_prompt=False)
  suffix = chat_template([{system: DOC}, {user: Q}], add_generation_prompt=True)[len(prefix):]
  ids    = tokenize(prefix) + tokenize(suffix)      special tokens parsed, no extra BOS
  answer = greedy decode, at most 48 new tokens, stop at <|im_end|>
A question passes when `expect` is a case-insensitive substring of the answer text.

Checks (the script exits 1 when any fails):
  tier 1  every question, asked with its own document: the reference answer (one forward
          over prefix + suffix) contains `expect`, and it stays so when
          - the document's KV is computed first and the question continues from it (the
            cartridge path): token ids must equal the reference's exactly;
          - that KV is rounded to fp16, and to bf16 (a cartridge stored in half precision);
          - the question is perturbed: no final '?', a trailing space, a lower-case first
            letter, and each hand-written paraphrase in `variants`;
          - flip: the runner-up token is forced at the step of smallest margin up to the end
            of `expect` (the step an engine's rounding would flip first), then greedy again.
          (Half-precision, perturbation and flip runs stop once `expect` appears.)
  tier 3  `cross`: a question about document Y asked with document X: the answer must NOT
          contain Y's `expect` (fp32 and bf16-rounded KV).
          `no_doc`: a question asked with no document (the plain chat template, with its
          default system prompt): the answer must NOT contain `expect`.

Margins (logit of the greedy token minus the runner-up's, reference run):
  first_token_margin   at the first generated token;
  answer_token_margin  at the token where `expect` starts in the answer;
  path_min_margin      smallest margin over every token up to the end of `expect`.

Output: tests/fixtures/cartridge_qa/questions.json (see `write_output` for the fields).
Run:    /work/venv-tools/bin/python tools/make_cartridge_qa.py [--gguf PATH] [--check-only]
Deterministic: greedy, fp32, CPU, torch.set_num_threads(1). About 25 minutes on one core.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "cartridge_qa", "questions.json")
MAX_NEW_TOKENS = 48

DOCUMENTS = [
    # id, file (relative to the repo root); the first one is the demo document.
    ("marrowick", "data/documents/marrowick_island.txt"),
    ("tallowmere", "data/documents/tallowmere_handbook.txt"),
    ("quillon", "data/documents/quillon_tide_meter.txt"),
]

# Per document: (question id, question, expect, [paraphrases]). Chosen from a pool of about
# 80 phrasings: every one here passes all the tier-1 checks. The pool's failures were facts
# the 135M model garbles (the staff discount as "10%", the ink colour as "silver", ...),
# phrasings it answers off-topic, and answers that a single forced flip derails.
QUESTIONS = {
    "marrowick": [
        ("marrowick.mayor", "Who is the mayor of Marrowick?", "Ingrid Tollan",
         ["What is the name of the mayor of Marrowick?"]),
        ("marrowick.town", "What is the name of the town where the ferry lands?", "Pellham Cove",
         ["What is the town where the ferry lands called?"]),
        ("marrowick.port", "Which port does the ferry Saint Brannoc sail from?", "Dunhallow",
         ["From which port does the Saint Brannoc sail?"]),
        ("marrowick.ferry", "What is the name of the ferry?", "Saint Brannoc",
         ["What is the ferry called?"]),
        ("marrowick.lighthouse_year", "In what year was the Greywater Lighthouse built?", "1874",
         ["When was the Greywater Lighthouse built?"]),
        ("marrowick.cairn_tor", "How high is Cairn Tor?", "412",
         ["How many metres high is Cairn Tor?"]),
        ("marrowick.population", "How many people live on the island?", "2,300",
         ["What is the population of the island?"]),
        ("marrowick.cheese", "What is the local cheese called?", "Skerrybrook",
         ["What is the name of the local cheese?"]),
        ("marrowick.festival", "In which month is the Lantern Festival held?", "October",
         ["When does the town hold the Lantern Festival?"]),
        ("marrowick.mayor_job", "What was Ingrid Tollan's job before she became mayor?",
         "schoolteacher", ["What did Ingrid Tollan do before she was mayor?"]),
    ],
    "tallowmere": [
        ("tallowmere.founder", "Who founded the Tallowmere Clock Company?", "Agatha Brisk",
         ["Who was the founder of the Tallowmere Clock Company?"]),
        ("tallowmere.year", "In what year was the company founded?", "1952",
         ["When was the Tallowmere Clock Company founded?"]),
        ("tallowmere.town", "In which town was the company founded?", "Lowbridge",
         ["Where was the Tallowmere Clock Company founded?"]),
        ("tallowmere.address", "What is the address of the company?", "Foundry Lane",
         ["What is the company's address?"]),
        ("tallowmere.product", "What is the company's best-selling product?", "Nightingale",
         ["What is the best-selling clock of the company?"]),
        ("tallowmere.payday", "On which day of the month is payday?", "15th",
         ["What day of the month is payday at the company?"]),
        ("tallowmere.aprons", "When are the aprons washed?", "Monday",
         ["On which day are the aprons washed?"]),
        ("tallowmere.safety", "Who is the safety officer?", "Rupert Okafor",
         ["What is the name of the safety officer?"]),
        ("tallowmere.cat", "What is the cat in the workshop called?", "Pendulum",
         ["What is the name of the workshop cat?"]),
        ("tallowmere.canteen", "On which floor is the canteen?", "second floor",
         ["Which floor is the canteen on?"]),
    ],
    "quillon": [
        ("quillon.year", "In what year was the Quillon Tide Meter invented?", "1911",
         ["When was the Quillon Tide Meter invented?"]),
        ("quillon.university", "At which university was the Quillon Tide Meter invented?",
         "Cardew", ["Where was the Quillon Tide Meter invented?"]),
        ("quillon.nickname", "What is the nickname of the Quillon Tide Meter?", "Owl",
         ["What nickname does the Quillon Tide Meter have?"]),
        ("quillon.weight", "What is the weight of the Quillon Tide Meter?", "14 kilograms",
         ["How many kilograms does the Quillon Tide Meter weigh?"]),
        ("quillon.winding", "How often must the clockwork be wound?", "six days",
         ["How often is the clockwork wound?"]),
        ("quillon.records", "What two things does the Quillon Tide Meter record?", "saltiness",
         ["What does the Quillon Tide Meter measure?"]),
        ("quillon.production_end", "In which year did production stop?", "1960",
         ["When did production of the meter stop?"]),
        ("quillon.museum", "Where is the best surviving meter on display?", "Harbour Museum",
         ["In which museum is the best meter on display?"]),
        ("quillon.museum_town", "In which town is the Harbour Museum?", "Saltvik",
         ["Where is the Harbour Museum?"]),
        ("quillon.collectors", "What do collectors call the original models?", "Vossers",
         ["What name do collectors use for the original models?"]),
    ],
}

# Tier 3: (context document, question id of another document), two per ordered pair.
CROSS = [
    ("marrowick", "tallowmere.founder"), ("marrowick", "tallowmere.safety"),
    ("marrowick", "quillon.university"), ("marrowick", "quillon.collectors"),
    ("tallowmere", "marrowick.mayor"), ("tallowmere", "marrowick.port"),
    ("tallowmere", "quillon.university"), ("tallowmere", "quillon.collectors"),
    ("quillon", "marrowick.mayor"), ("quillon", "marrowick.cheese"),
    ("quillon", "tallowmere.founder"), ("quillon", "tallowmere.cat"),
]

# Tier 3: question ids asked with no document at all, two per document.
NO_DOC = ["marrowick.mayor", "marrowick.port", "tallowmere.founder", "tallowmere.safety",
          "quillon.university", "quillon.collectors"]

# The question the demo's curl example asks: the first one about the demo document
# (DOCUMENTS[0]), which is what scripts/demo.sh picks.
DEMO_QUESTION = "marrowick.mayor"


class Reference:
    """SmolLM2 from the GGUF in transformers, with a per-document KV cache."""

    def __init__(self, gguf_path):
        self.tmp = tempfile.mkdtemp()
        os.symlink(os.path.abspath(gguf_path), os.path.join(self.tmp, "model.gguf"))
        self.tok = AutoTokenizer.from_pretrained(self.tmp, gguf_file="model.gguf")
        self.model = AutoModelForCausalLM.from_pretrained(
            self.tmp, gguf_file="model.gguf", dtype=torch.float32,
            attn_implementation="eager").eval()
        self.eos = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.caches = {}  # (doc text, kv dtype) -> (prefix length, DynamicCache)

    def encode(self, text):
        return self.tok(text, add_special_tokens=False).input_ids

    def render(self, messages, add_generation_prompt):
        return self.tok.apply_chat_template(messages, tokenize=False,
                                            add_generation_prompt=add_generation_prompt)

    def doc_prompt(self, doc, question):
        """(prefix ids, suffix ids) in the format of the module docstring."""
        prefix = self.render([{"role": "system", "content": doc}], False)
        full = self.render([{"role": "system", "content": doc},
                            {"role": "user", "content": question}], True)
        assert full.startswith(prefix)
        return self.encode(prefix), self.encode(full[len(prefix):])

    def plain_prompt(self, question):
        return self.encode(self.render([{"role": "user", "content": question}], True))

    @torch.no_grad()
    def _decode(self, logits, cache, stop_on=None, max_new=MAX_NEW_TOKENS, runners_up=None):
        """Greedy from the last-position logits. Returns (ids, margins). With stop_on set,
        stops as soon as the text contains it (case-insensitive). runners_up, when a list,
        receives the second-best token id of every step."""
        ids, margins = [], []
        for _ in range(max_new):
            top = logits.topk(2)
            t = int(top.indices[0])
            ids.append(t)
            margins.append(float(top.values[0] - top.values[1]))
            if runners_up is not None:
                runners_up.append(int(top.indices[1]))
            if t == self.eos:
                break
            if stop_on is not None and stop_on.lower() in self.text(ids).lower():
                break
            out = self.model(torch.tensor([[t]]), cache=cache, use_cache=True)
            logits = out.logits[0, -1]
        return ids, margins

    def text(self, ids):
        return self.tok.decode([t for t in ids if t != self.eos])

    @torch.no_grad()
    def generate_one_pass(self, ids, runners_up=None):
        """The reference: one forward over the whole prompt, then greedy decoding."""
        out = self.model(torch.tensor([ids]), use_cache=True)
        return self._decode(out.logits[0, -1], out.cache, runners_up=runners_up)

    @torch.no_grad()
    def generate_from_doc(self, doc, suffix, kv_dtype=torch.float32, stop_on=None,
                          max_new=MAX_NEW_TOKENS):
        """The cartridge path: the document's KV computed once (optionally rounded to
        kv_dtype and back), the question continues from it."""
        key = (doc, kv_dtype)
        if key not in self.caches:
            prefix = self.encode(self.render([{"role": "system", "content": doc}], False))
            out = self.model(torch.tensor([prefix]), use_cache=True)
            cache = out.cache
            for layer in cache.layers:
                layer.keys = layer.keys.to(kv_dtype).to(torch.float32)
                layer.values = layer.values.to(kv_dtype).to(torch.float32)
            self.caches[key] = (len(prefix), cache)
        n_prefix, cache = self.caches[key]
        extra = cache.get_seq_length() - n_prefix
        if extra > 0:
            cache.crop(-extra)
        out = self.model(torch.tensor([suffix]), cache=cache, use_cache=True)
        return self._decode(out.logits[0, -1], cache, stop_on=stop_on, max_new=max_new)


def find_expect(ref, ids, expect):
    """Index of the generated token where `expect` starts and where it ends, or None."""
    text = ref.text(ids)
    pos = text.lower().find(expect.lower())
    if pos < 0:
        return None
    start = end = None
    for k in range(len(ids)):
        n = len(ref.text(ids[:k + 1]))
        if start is None and n > pos:
            start = k
        if n >= pos + len(expect):
            end = k
            break
    return start, end


def perturbations(question, variants):
    out = []
    if question.endswith("?"):
        out.append(("no '?'", question[:-1]))
    out.append(("trailing space", question + " "))
    out.append(("lower-case first", question[0].lower() + question[1:]))
    for i, v in enumerate(variants):
        out.append((f"paraphrase {i + 1}", v))
    return out


def contains(ref, ids, expect):
    return expect.lower() in ref.text(ids).lower()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.expanduser(
        "~/.cache/cartserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--check-only", action="store_true", help="check, do not write the JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ref = Reference(args.gguf)
    try:
        return run_checks(args, ref)
    finally:
        shutil.rmtree(ref.tmp, ignore_errors=True)


def run_checks(args, ref):
    failures = []

    docs = {}
    for doc_id, rel in DOCUMENTS:
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            docs[doc_id] = f.read()
    by_id = {}
    for doc_id, qs in QUESTIONS.items():
        for qid, q, expect, variants in qs:
            assert qid not in by_id, qid
            by_id[qid] = (doc_id, q, expect, variants)

    if QUESTIONS[DOCUMENTS[0][0]][0][0] != DEMO_QUESTION:
        failures.append(f"demo question {DEMO_QUESTION} is not the first about {DOCUMENTS[0][0]}")

    doc_entries = []
    for doc_id, rel in DOCUMENTS:
        prefix, _ = ref.doc_prompt(docs[doc_id], "x")
        doc_entries.append({
            "id": doc_id, "file": rel,
            "sha256": hashlib.sha256(docs[doc_id].encode("utf-8")).hexdigest(),
            "prefix_token_count": len(prefix), "prefix_ids": prefix,
        })
        n_expected = len(QUESTIONS[doc_id])
        if n_expected != 10:
            failures.append(f"{doc_id}: {n_expected} questions, want 10")

    # Tier 1.
    print("\n== tier 1: questions with their own document ==")
    print("1pass: reference contains expect; split: document KV first, same token ids;")
    print("fp16/bf16: document KV rounded (* = token ids diverged from the reference, still ok);")
    print("pert: perturbed questions ok; flip: runner-up forced at the weakest step, still ok")
    print(f"{'question':<28} {'ok':<4} {'1pass':<5} {'split':<5} {'fp16':<5} {'bf16':<5} "
          f"{'pert':<5} {'flip':<4} {'m_first':>7} {'m_ans':>6} {'m_path':>6} {'tok':>4}  answer")
    q_entries = []
    for doc_id, _ in DOCUMENTS:
        doc = docs[doc_id]
        for qid, q, expect, variants in QUESTIONS[doc_id]:
            prefix, suffix = ref.doc_prompt(doc, q)
            runners_up = []
            ids, margins = ref.generate_one_pass(prefix + suffix, runners_up=runners_up)
            ok_ref = contains(ref, ids, expect)
            split_ids, _ = ref.generate_from_doc(doc, suffix)
            ok_split = split_ids == ids
            ok_half, same_half = {}, {}
            for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
                h_ids, _ = ref.generate_from_doc(doc, suffix, kv_dtype=dt, stop_on=expect)
                ok_half[name] = contains(ref, h_ids, expect)
                same_half[name] = h_ids == ids[:len(h_ids)]
            pert_results = []
            for label, pq in perturbations(q, variants):
                _, psuffix = ref.doc_prompt(doc, pq)
                p_ids, _ = ref.generate_from_doc(doc, psuffix, stop_on=expect)
                pert_results.append({"kind": label, "question": pq,
                                     "ok": contains(ref, p_ids, expect),
                                     "answer": ref.text(p_ids)})
            n_pert_ok = sum(p["ok"] for p in pert_results)
            span = find_expect(ref, ids, expect)
            m_ans = margins[span[0]] if span else None
            m_path = min(margins[:span[1] + 1]) if span else None
            # Flip: force the runner-up at the weakest step up to the end of `expect` (the
            # step an engine's rounding would flip first), then greedy again.
            flip = None
            if span:
                k = min(range(span[1] + 1), key=lambda i: margins[i])
                forced = ids[:k] + [runners_up[k]]
                f_ids, _ = ref.generate_from_doc(doc, suffix + forced, stop_on=expect,
                                                 max_new=MAX_NEW_TOKENS - len(forced))
                flip = {"step": k, "token": runners_up[k],
                        "ok": contains(ref, forced + f_ids, expect),
                        "answer": ref.text(forced + f_ids)}
            ok = (ok_ref and ok_split and all(ok_half.values())
                  and n_pert_ok == len(pert_results) and flip is not None and flip["ok"])
            if not ok:
                failures.append(f"tier1 {qid}")
            fmt = lambda b: "ok" if b else "FAIL"  # noqa: E731
            half_col = lambda n: fmt(ok_half[n]) + ("" if same_half[n] else "*")  # noqa: E731
            print(f"{qid:<28} {fmt(ok):<4} {fmt(ok_ref):<5} {fmt(ok_split):<5} "
                  f"{half_col('fp16'):<5} {half_col('bf16'):<5} "
                  f"{n_pert_ok}/{len(pert_results):<3} {fmt(flip and flip['ok']):<4} "
                  f"{margins[0]:7.2f} "
                  f"{m_ans if m_ans is not None else float('nan'):6.2f} "
                  f"{m_path if m_path is not None else float('nan'):6.2f} "
                  f"{len(prefix) + len(suffix):4d}  {ref.text(ids)[:70]!r}", flush=True)
            if flip and not flip["ok"]:
                print(f"{'':<28}   flip at step {flip['step']} failed: {flip['answer'][:80]!r}")
            for p in pert_results:
                if not p["ok"]:
                    print(f"{'':<24}   perturbation '{p['kind']}' failed: {p['question']!r} "
                          f"-> {p['answer'][:80]!r}")
            q_entries.append({
                "id": qid, "doc": doc_id, "question": q, "expect": expect,
                "variants": variants,
                "prompt_token_count": len(prefix) + len(suffix),
                "suffix_ids": suffix,
                "answer": ref.text(ids), "answer_ids": ids,
                "first_token_margin": round(margins[0], 4),
                "answer_token_margin": None if m_ans is None else round(m_ans, 4),
                "path_min_margin": None if m_path is None else round(m_path, 4),
                "checks": {"reference": ok_ref, "split_identical": ok_split,
                           "kv_fp16": ok_half["fp16"], "kv_bf16": ok_half["bf16"],
                           "kv_fp16_same_tokens": same_half["fp16"],
                           "kv_bf16_same_tokens": same_half["bf16"],
                           "flip": flip and {"step": flip["step"], "token": flip["token"],
                                             "ok": flip["ok"], "answer": flip["answer"]},
                           "perturbations": [{"kind": p["kind"], "question": p["question"],
                                              "ok": p["ok"]} for p in pert_results]},
            })

    # Tier 3: cross-document isolation.
    print("\n== tier 3: a question about another document (must NOT contain expect) ==")
    print(f"{'context':<11} {'question':<28} {'ok':<4} {'bf16':<4} {'expect':<16} answer")
    cross_entries = []
    for ctx_id, qid in CROSS:
        about, q, expect, _ = by_id[qid]
        assert about != ctx_id, (ctx_id, qid)
        prefix, suffix = ref.doc_prompt(docs[ctx_id], q)
        ids, _ = ref.generate_one_pass(prefix + suffix)
        b_ids, _ = ref.generate_from_doc(docs[ctx_id], suffix, kv_dtype=torch.bfloat16)
        ok = not contains(ref, ids, expect)
        ok_b = not contains(ref, b_ids, expect)
        if not (ok and ok_b):
            failures.append(f"cross {ctx_id}/{qid}")
        print(f"{ctx_id:<11} {qid:<28} {'ok' if ok else 'FAIL':<4} {'ok' if ok_b else 'FAIL':<4} "
              f"{expect:<16} {ref.text(ids)[:70]!r}", flush=True)
        cross_entries.append({
            "context_doc": ctx_id, "about_doc": about, "question_id": qid, "question": q,
            "expect": expect, "prompt_token_count": len(prefix) + len(suffix),
            "suffix_ids": suffix, "answer": ref.text(ids), "answer_ids": ids})

    print("\n== tier 3: a question with no document (must NOT contain expect) ==")
    print(f"{'question':<28} {'ok':<4} {'expect':<16} answer")
    nodoc_entries = []
    for qid in NO_DOC:
        about, q, expect, _ = by_id[qid]
        ids_in = ref.plain_prompt(q)
        ids, _ = ref.generate_one_pass(ids_in)
        ok = not contains(ref, ids, expect)
        if not ok:
            failures.append(f"no_doc {qid}")
        print(f"{qid:<28} {'ok' if ok else 'FAIL':<4} {expect:<16} {ref.text(ids)[:70]!r}",
              flush=True)
        nodoc_entries.append({
            "about_doc": about, "question_id": qid, "question": q, "expect": expect,
            "prompt_ids": ids_in, "answer": ref.text(ids), "answer_ids": ids})

    for ctx_id, _ in DOCUMENTS:
        n_cross = {}
        for c in cross_entries:
            if c["context_doc"] == ctx_id:
                n_cross[c["about_doc"]] = n_cross.get(c["about_doc"], 0) + 1
        for other, _ in DOCUMENTS:
            if other != ctx_id and n_cross.get(other, 0) != 2:
                failures.append(f"cross {ctx_id}->{other}: {n_cross.get(other, 0)} entries, want 2")
        n_nodoc = sum(1 for e in nodoc_entries if e["about_doc"] == ctx_id)
        if n_nodoc != 2:
            failures.append(f"no_doc {ctx_id}: {n_nodoc} entries, want 2")

    # Summary.
    print("\n== summary ==")
    for d in doc_entries:
        qs = [e for e in q_entries if e["doc"] == d["id"]]
        passed = sum(1 for e in qs if e["checks"]["reference"])
        m_ans = [e["answer_token_margin"] for e in qs if e["answer_token_margin"] is not None]
        m_path = [e["path_min_margin"] for e in qs if e["path_min_margin"] is not None]
        print(f"{d['id']:<11} document {d['prefix_token_count']} tokens, {passed}/{len(qs)} "
              f"answered, min answer-token margin {min(m_ans, default=float('nan')):.2f}, "
              f"min path margin {min(m_path, default=float('nan')):.2f}")
    if failures:
        print(f"\nFAILED ({len(failures)}): " + ", ".join(failures))
    else:
        print("\nall checks passed")

    if not args.check_only and not failures:
        write_output(args.gguf, ref, doc_entries, q_entries, cross_entries, nodoc_entries)
    return 1 if failures else 0


def write_output(gguf, ref, doc_entries, q_entries, cross_entries, nodoc_entries):
    out = {
        "model": os.path.basename(gguf),
        "reference": "transformers fp32 eager, CPU, greedy; see tools/make_cartridge_qa.py",
        "prompt_format": {
            "prefix": "chat_template([{role: system, content: DOC}], add_generation_prompt=false)",
            "suffix": "chat_template([{system: DOC}, {user: Q}], add_generation_prompt=true)"
                      "[len(prefix):]",
            "ids": "prefix_ids (documents[]) + suffix_ids; no extra BOS",
            "no_doc": "chat_template([{user: Q}], add_generation_prompt=true) incl. the "
                      "template's default system prompt (prompt_ids)",
        },
        "match": "case-insensitive substring of the decoded answer",
        "max_new_tokens": MAX_NEW_TOKENS,
        "stop_token": "<|im_end|>", "stop_token_id": ref.eos,
        "demo_document": doc_entries[0]["id"],
        "demo_question": DEMO_QUESTION,
        "documents": doc_entries,
        "questions": q_entries,
        "cross": cross_entries,
        "no_doc": nodoc_entries,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    text = json.dumps(out, indent=1, ensure_ascii=False)
    # One line per list of token ids.
    text = re.sub(r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]",
                  lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {os.path.relpath(OUT, ROOT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    sys.exit(main())
