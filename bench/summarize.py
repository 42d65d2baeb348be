#!/usr/bin/env python3
"""Folds repeated runs of cpu_model_bench and load_gen.py into one results file,
with the cartridge_bench runs (one per document, each already the median of its
own repeats) beside them.

  summarize.py --name NAME --out-dir bench/results RUN.json [RUN.json ...]

Each input is one run's JSON (its "benchmark" key says which). The output,
OUT_DIR/NAME-DATE.json, keeps every run and adds per figure min / median /
max over the repeats, and the ratios ours / llama.cpp computed per repeat
(runs of the same repeat ran back to back, so drift of a shared machine hits
both) before taking min / median / max. Prints the tables. Standard library
only.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys


def spread(values):
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"min": min(v), "median": statistics.median(v), "max": max(v), "n": len(v)}


def git_describe(repo):
    def git(*a):
        try:
            return subprocess.run(["git", "-C", repo, *a], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    commit = git("rev-parse", "--short=12", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def machine(runs):
    m = {}
    for r in runs:
        m.update({k: v for k, v in (r.get("machine") or {}).items()
                  if k in ("cpu_model", "cpu_simd", "logical_cpus", "mem_total_kib", "platform")})
    m.setdefault("logical_cpus", os.cpu_count())
    m.setdefault("platform", platform.platform())
    loads = [r["machine"].get("loadavg_start") for r in runs if r.get("machine", {}).get("loadavg_start")]
    loads += [r.get("loadavg_start") for r in runs if r.get("loadavg_start")]
    if loads:
        m["loadavg_1min_at_run_starts"] = [round(x[0], 2) for x in loads]
    return m


def summarize_model(runs):
    cases, llama, ratios = {}, {}, {}
    for r in runs:
        for c in r["results"]:
            d = cases.setdefault(c["case"], {"tokens_per_s": [], "floor_tokens_per_s": [],
                                             "fraction_of_floor": []})
            d["tokens_per_s"].append(c["tokens_per_s"])
            d["floor_tokens_per_s"].append(c["floor"]["tokens_per_s"])
            d["fraction_of_floor"].append(c["fraction_of_floor"])
        for t in (r.get("baseline_llama_cpp") or {}).get("tests", []):
            d = llama.setdefault(t["test"], {"tokens_per_s": [], "floor_tokens_per_s": [],
                                             "fraction_of_floor": []})
            d["tokens_per_s"].append(t["tokens_per_s"])
            d["floor_tokens_per_s"].append(t["floor"]["tokens_per_s"])
            d["fraction_of_floor"].append(t["fraction_of_floor"])
        for k, v in (r.get("ratios") or {}).items():
            ratios.setdefault(k, {"ours": v["ours"], "llama_cpp": v["llama_cpp"], "values": []})
            ratios[k]["values"].append(v["ratio"])
    out = {
        "ours": {k: {m: spread(v) for m, v in d.items()} for k, d in cases.items()},
        "llama_cpp": {k: {m: spread(v) for m, v in d.items()} for k, d in llama.items()},
        "ratios_ours_over_llama_cpp": {k: {"ours": v["ours"], "llama_cpp": v["llama_cpp"],
                                           **spread(v["values"])} for k, v in ratios.items()},
    }
    first = runs[0]
    out["floors_measured"] = {k: spread([r["floors_measured"][k] for r in runs])
                              for k in first["floors_measured"]}
    out["other_cpu_share"] = {
        phase: spread([((r.get("cpu_accounting") or {}).get(phase) or {}).get("other_cpu_share")
                       for r in runs])
        for phase in ("ours", "llama_bench")}
    out["model"] = first["model"]
    out["threads"] = first["threads"]
    out["blas_core"] = first.get("blas_core")
    out["floor_rules"] = first.get("floor_rules")
    return out


LOAD_METRICS = {
    "request_throughput_per_s": lambda lv: lv["request_throughput_per_s"],
    "output_tokens_per_s": lambda lv: lv["output_tokens_per_s"],
    "ttft_ms_p50": lambda lv: lv["ttft_ms"]["p50"],
    "ttft_ms_p90": lambda lv: lv["ttft_ms"]["p90"],
    "ttft_ms_p99": lambda lv: lv["ttft_ms"]["p99"],
    "itl_ms_p50": lambda lv: lv["itl_ms"]["p50"],
    "itl_ms_p90": lambda lv: lv["itl_ms"]["p90"],
    "itl_ms_p99": lambda lv: lv["itl_ms"]["p99"],
    "tpot_ms_p50": lambda lv: lv["tpot_ms"]["p50"],
    "e2e_latency_ms_p50": lambda lv: lv["e2e_latency_ms"]["p50"],
    "output_tokens_per_text_chunk": lambda lv: lv["output_tokens_per_text_chunk"],
    "failed": lambda lv: lv["failed"],
    "client_cpu_s": lambda lv: lv["client_cpu_s"],
    "server_cpu_s": lambda lv: lv.get("server_cpu_s"),
    "other_cpu_share": lambda lv: lv.get("other_cpu_share"),
}


def summarize_load(runs):
    per_level = {}
    for r in runs:
        for lv in r["levels"]:
            d = per_level.setdefault(str(lv["concurrency"]), {k: [] for k in LOAD_METRICS})
            for k, f in LOAD_METRICS.items():
                d[k].append(f(lv))
    return {"levels": {c: {k: spread(v) for k, v in d.items()} for c, d in per_level.items()},
            "notes": runs[0]["server"]["notes"], "argv": runs[0]["server"]["argv"],
            "info": runs[0]["server"]["info"], "params": runs[0]["params"]}


def load_ratios(ours_runs, base_runs):
    """Per repeat (same index: run back to back), ours / baseline, then the spread."""
    out = {}
    for a, b in zip(ours_runs, base_runs):
        base_levels = {lv["concurrency"]: lv for lv in b["levels"]}
        for la in a["levels"]:
            lb = base_levels.get(la["concurrency"])
            if lb is None:
                continue
            c = str(la["concurrency"])
            d = out.setdefault(c, {"output_tokens_per_s": [], "request_throughput_per_s": [],
                                   "ttft_ms_p50": [], "itl_ms_p50": [], "tpot_ms_p50": []})
            for k in d:
                va, vb = LOAD_METRICS[k](la), LOAD_METRICS[k](lb)
                if va is not None and vb:
                    d[k].append(va / vb)
    return {c: {k: spread(v) for k, v in d.items()} for c, d in out.items()}


def fmt(s, f="{:.1f}"):
    if s is None:
        return "-"
    return f"{f.format(s['median'])} ({f.format(s['min'])}..{f.format(s['max'])})"


def print_tables(res):
    mb = res.get("cpu_model_bench")
    if mb:
        fm = mb["floors_measured"]
        print(f"\nfloors (median of {fm['sgemm_flops_1024']['n']} runs): read "
              f"{fm['read_bandwidth_bytes_per_s']['median'] / 1e9:.1f} GB/s, copy "
              f"{fm['copy_bandwidth_bytes_per_s']['median'] / 1e9:.1f} GB/s, sgemm "
              f"{fm['sgemm_flops_1024']['median'] / 1e9:.1f} GFLOP/s")
        print(f"{'case':<44} {'tok/s median (min..max)':>24} {'floor tok/s':>12} {'of floor':>9}")
        for who, rows in (("ours", mb["ours"]), ("llama.cpp", mb["llama_cpp"])):
            for k, d in rows.items():
                named = k.startswith(("bf16", "fp32"))
                name = f"{who} {k}" if who != "ours" or named else f"ours default {k}"
                print(f"{name:<44} {fmt(d['tokens_per_s']):>24} "
                      f"{d['floor_tokens_per_s']['median']:>12.1f} "
                      f"{100 * d['fraction_of_floor']['median']:>8.1f}%")
        for phase, v in mb["other_cpu_share"].items():
            if v:
                print(f"other processes' share of the machine during {phase}: median "
                      f"{100 * v['median']:.0f}% (max {100 * v['max']:.0f}%)")
        for k, v in mb["ratios_ours_over_llama_cpp"].items():
            print(f"ratio {k:<46} {v['median']:.3f} ({v['min']:.3f}..{v['max']:.3f})")
    for server, d in res.get("load", {}).items():
        if server.startswith("ratios_"):
            continue
        print(f"\nload: {server}")
        print(f"{'conc':>4} {'req/s':>22} {'out tok/s':>22} {'TTFT p50 ms':>22} "
              f"{'TTFT p99 ms':>10} {'ITL p50 ms':>20} {'ITL p99 ms':>10} {'others max':>10}")
        for c, m in d["levels"].items():
            others = m["other_cpu_share"]
            others = "-" if others is None else f"{100 * others['max']:.0f}%"
            print(f"{c:>4} {fmt(m['request_throughput_per_s'], '{:.3f}'):>22} "
                  f"{fmt(m['output_tokens_per_s']):>22} {fmt(m['ttft_ms_p50'], '{:.0f}'):>22} "
                  f"{m['ttft_ms_p99']['median']:>10.0f} {fmt(m['itl_ms_p50']):>20} "
                  f"{m['itl_ms_p99']['median']:>10.1f} {others:>10}")
    for key, r in res.get("load", {}).items():
        if not key.startswith("ratios_"):
            continue
        kind = key[len("ratios_"):-len("_over_llama_server")]
        print(f"\nratios {kind} / llama-server (median (min..max) over repeats)")
        print(f"{'conc':>4} {'out tok/s':>22} {'TTFT p50':>22} {'ITL p50':>22}")
        for c, m in r.items():
            print(f"{c:>4} {fmt(m['output_tokens_per_s'], '{:.3f}'):>22} "
                  f"{fmt(m['ttft_ms_p50'], '{:.2f}'):>22} {fmt(m['itl_ms_p50'], '{:.2f}'):>22}")


def print_cartridge_tables(runs):
    print("\ncartridge: time to first token, ms (each the median of its repeats)")
    print(f"{'document':<28} {'tokens':>6} {'floor':>7} {'resident':>9} {'doc in prompt':>14} "
          f"{'speed-up':>9} {'host->KV':>9} {'disk->KV':>9}")
    for r in runs:
        t, ld = r["ttft_ms"], r["load_ms"]
        print(f"{r.get('document', '?'):<28} {r['document_tokens']:>6} "
              f"{t['question_tokens_only (floor)']:>7.1f} {t['resident_cartridge']:>9.1f} "
              f"{t['document_in_prompt (baseline)']:>14.1f} "
              f"{r['ratios']['resident_vs_document_in_prompt']:>8.1f}x "
              f"{ld['host_to_kv_blocks']:>9.1f} {ld['disk_to_kv_blocks']:>9.1f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--out-dir", default="bench/results")
    p.add_argument("--repo", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    p.add_argument("runs", nargs="+")
    args = p.parse_args()
    model_runs, load_runs, cart_runs = [], {}, []
    for path in args.runs:
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit(f"error: cannot read run {path}: {e}")
        r["_file"] = os.path.basename(path)
        if r.get("benchmark") == "cpu_model_bench":
            model_runs.append(r)
        elif r.get("benchmark") == "load_gen":
            load_runs.setdefault(r["server"]["kind"], []).append(r)
        elif r.get("benchmark") == "cartridge_bench":
            cart_runs.append(r)
        else:
            sys.exit(f"error: {path} is not a cpu_model_bench, load_gen or cartridge_bench result")
    all_runs = model_runs + [r for v in load_runs.values() for r in v]
    now = datetime.datetime.now().astimezone()
    res = {
        "name": args.name,
        "date": now.isoformat(timespec="seconds"),
        "git": git_describe(args.repo),
        "machine": machine(all_runs),
        "repeats": max([len(model_runs)] + [len(v) for v in load_runs.values()]),
        "how_to_read": (
            "Every figure is min/median/max over repeats run on this machine in this session; "
            "ratios pair runs of the same repeat (run back to back). ours = cartserve CPU "
            "backend, default --dtype auto (a GGUF's quantized matrices kept; cases named bf16/"
            "fp32 weights: --dtype bfloat16/float32); llama.cpp/llama-server = baseline on the same GGUF with its quantized "
            "weights; floor = the best this machine allows for that engine's bytes/FLOPs, "
            "from bandwidth and sgemm rate measured in the same run (see bench/README.md)."),
    }
    if model_runs:
        res["cpu_model_bench"] = summarize_model(model_runs)
        res["cpu_model_bench"]["runs"] = model_runs
    if load_runs:
        res["load"] = {}
        for kind, runs in load_runs.items():
            res["load"][kind] = summarize_load(runs)
            res["load"][kind]["runs"] = runs
        for kind in [k for k in load_runs if k.startswith("cartserve")]:
            if "llama-server" in load_runs:
                res["load"][f"ratios_{kind}_over_llama_server"] = load_ratios(
                    load_runs[kind], load_runs["llama-server"])
    if cart_runs:
        res["cartridge_bench"] = sorted(cart_runs, key=lambda r: r["document_tokens"])
    os.makedirs(args.out_dir, exist_ok=True)
    out = os.path.join(args.out_dir, f"{args.name}-{now.strftime('%Y-%m-%d-%H%M')}.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    print_tables(res)
    if cart_runs:
        print_cartridge_tables(res["cartridge_bench"])
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
