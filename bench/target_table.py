#!/usr/bin/env python3
"""Issue 11's target table from one GPU results file: each figure beside its
floor and beside HF transformers eager and static cache + torch.compile,
when the run measured them.

  target_table.py bench/results/gpu-....json [--json]

A results file (scripts/gpu_run.sh's stages folded into one JSON) may hold
gpu_bench's figures under "gpu_bench" or split by group ("gpu_bench_decode",
"gpu_bench_prefill", "gpu_bench_ttft", ...; a key with a variable after the
group, such as "gpu_bench_prefill_prefill_wgmma_1", is a variant and is not
read unless named by --prefer, whose entries' figures win; a preferred key
naming smollm2 gives the SmolLM2 figure), the SmolLM2-shape decode under
"gpu_bench_smollm2", and
tools/gpu/hf_reference.py's baseline under a key starting "hf_baseline".
The targets are the H200's (issue 11): "met" is judged only on a results
file whose machine is an H200, else it reads "n/a". The promoted-cartridge
TTFT target is 3 ms plus the cartridge's bytes at 45 GB/s. Standard library
only.
"""
import sys

from table_cli import emit, fmt, parse

GROUPS = ("decode", "decode1", "prefill", "ttft", "cartdecode")


def figures(results, key="gpu_bench", prefer=()):
    """gpu_bench's figures: the preferred entries', then key's own, then its
    plain groups' (the first to give a figure wins)."""
    out = {}
    for k in list(prefer) + [key] + [f"{key}_{g}" for g in GROUPS]:
        entry = results.get(k)
        if isinstance(entry, dict):
            for name, fig in (entry.get("figures") or {}).items():
                out.setdefault(name, fig)
    return out


def baseline(results):
    """(eager, static_compile) dicts of the first hf_baseline* entry, or empty."""
    for k, v in results.items():
        if k.startswith("hf_baseline") and isinstance(v, dict):
            return v.get("eager") or {}, v.get("static_compile") or {}
    return {}, {}


def rows(results, prefer=()):
    # Preferred entries of the SmolLM2 shape (their key names it) give its figure.
    f = figures(results, prefer=[k for k in prefer if "smollm2" not in k])
    small = figures(results, "gpu_bench_smollm2", prefer=[k for k in prefer if "smollm2" in k])
    eager, comp = baseline(results)
    h200 = "H200" in str(results.get("machine") or "")

    def fig(name, field):
        x = f.get(name)
        return x.get(field) if isinstance(x, dict) else None

    def row(name, unit, ours, floor, hf_eager, hf_compile, target, ok, note=""):
        return {
            "figure": name,
            "unit": unit,
            "ours": ours,
            "floor": floor,
            "fraction_of_floor": floor / ours if ours and floor else None,
            "hf_eager": hf_eager,
            "hf_static_compile": hf_compile,
            "target": target,
            "met": ok(ours) if h200 and ok and ours is not None else None,
            "note": note if ours is not None else "",
        }

    b64 = fig("decode_batch_64", "ms_per_step")
    promoted = f.get("ttft_cartridge_promoted_from_host") or {}
    promoted_target = (
        3.0 + 1e3 * promoted["cartridge_bytes"] / 45e9 if "cartridge_bytes" in promoted else None
    )
    s1 = small.get("decode_batch_1") or {}
    return [
        row("decode, batch 1", "ms/step", fig("decode_batch_1", "ms_per_step"),
            fig("decode_batch_1", "floor_ms_per_step"), eager.get("decode_batch_1_ms_per_step"),
            comp.get("decode_batch_1_ms_per_step"), "<= 1.85", lambda v: v <= 1.85),
        row("decode, batch 64, 512-token contexts", "ms/step", b64,
            fig("decode_batch_64", "floor_ms_per_step"), eager.get("decode_batch_64_ms_per_step"),
            comp.get("decode_batch_64_ms_per_step"), ">= 18k tok/s (<= 3.56 ms/step)",
            lambda v: 64e3 / v >= 18000, f"{64e3 / b64:.0f} tok/s" if b64 else ""),
        row("decode, batch 256, 1024-token contexts", "ms/step",
            fig("decode_batch_256_ctx_1024", "ms_per_step"),
            fig("decode_batch_256_ctx_1024", "floor_ms_per_step"), None, None,
            "report the fraction of the floor", None),
        row("prefill, 8192 tokens", "ms", fig("prefill_8192", "ms"), fig("prefill_8192", "floor_ms"),
            eager.get("prefill_8192_ms"), comp.get("prefill_8192_ms"), "<= 95",
            lambda v: v <= 95.0),
        row("TTFT, resident 2048-token cartridge + 64-token question", "ms",
            fig("ttft_resident_cartridge_2048_question_64", "ms"),
            fig("ttft_resident_cartridge_2048_question_64", "floor_ms"),
            eager.get("ttft_cache_2048_question_64_ms"),
            comp.get("ttft_cache_2048_question_64_ms"), "<= 3", lambda v: v <= 3.0,
            "HF copies the cache first"),
        row("TTFT, cartridge promoted from host", "ms", promoted.get("ms"), None, None, None,
            f"<= {promoted_target:.2f}" if promoted_target else "<= 3 + bytes at 45 GB/s",
            (lambda v: v <= promoted_target) if promoted_target else None,
            f"promotion {promoted['promotion_gb_per_s']:.1f} GB/s"
            if "promotion_gb_per_s" in promoted else ""),
        row("SmolLM2-135M shape, decode batch 1", "ms/step", s1.get("ms_per_step"),
            s1.get("floor_ms_per_step"), None, None, "<= 0.6", lambda v: v <= 0.6),
    ]


def line(x):
    met = "n/a" if x["met"] is None else ("yes" if x["met"] else "no")
    note = f" ({x['note']})" if x["note"] else ""
    return (f"| {x['figure']}, {x['unit']} | {fmt(x['ours'], '.2f')}{note} "
            f"| {fmt(x['floor'], '.2f')} | {fmt(x['fraction_of_floor'], '.0%')} "
            f"| {fmt(x['hf_eager'], '.2f')} | {fmt(x['hf_static_compile'], '.2f')} "
            f"| {x['target']} | {met} |")


def main(argv):
    a, results = parse(argv, __doc__, lambda p: p.add_argument(
        "--prefer", nargs="*", default=[], metavar="KEY",
        help="entries whose figures win (variants, e.g. gpu_bench_prefill_prefill_wgmma_1)"))
    missing = [k for k in a.prefer if k not in results]
    if missing:
        print(f"{a.results}: no entry {', '.join(missing)}", file=sys.stderr)
        return 1
    r = rows(results, a.prefer)
    if all(x["ours"] is None for x in r):
        print(f"{a.results}: no gpu_bench figures", file=sys.stderr)
        return 1
    return emit(a, results, r, ("figure", "ours", "floor", "of floor", "HF eager",
                                "HF static+compile", "target", "met"), line)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
