#!/usr/bin/env python3
"""The served figures of a GPU results file next to the single-process ones.

  serve_table.py bench/results/gpu-....json [--json]

A results file (scripts/gpu_run.sh's stages, folded into one JSON) holds
load_gen.py runs against `cartserve serve --device cuda` (serve_plain,
serve_cartridge, serve_cartridge_no_cascade) and gpu_bench's figures, decode
steps timed through the backend in one process. For every served
concurrency level this prints output tok/s, TTFT and inter-token latency
p50 / p99 and TPOT p50 beside the in-process decode step at the same batch
size (where gpu_bench timed one) and their ratio: served TPOT p50 over the
in-process step. At concurrency 1 that is the serving stack's cost per step
(engine, HTTP, streaming, what the served requests ask beyond greedy decode:
load_gen --logprobs); above 1 the served steps also carry the prefill of the
requests that arrive meanwhile (closed loop, 64 output tokens after prompts
several times longer), so the ratio is not overhead alone. The contexts differ:
gpu_bench's plain decode runs 512-token contexts (1024 at batch 256), its
cartridge decode 2048 shared positions plus 64 own ones; the served prompts
are 32-256 words, after the 2048-token cartridge where one is named.
Standard library only.
"""
import sys

from table_cli import emit, fmt, parse

# serve entry -> (in-process figure for batch C, its label)
KINDS = {
    "serve_plain": ("decode_batch_{c}", "decode_batch_256_ctx_1024"),
    "serve_cartridge": ("decode_cartridge_2048_batch_{c}", None),
    "serve_cartridge_no_cascade": ("decode_cartridge_2048_batch_{c}_no_cascade", None),
}


def in_process(figures, kind, c):
    """The gpu_bench figure name and ms per step for batch c, or (None, None)."""
    pattern, at_256 = KINDS[kind]
    names = [pattern.format(c=c)]
    if c == 256 and at_256:
        names.append(at_256)
    for n in names:
        f = figures.get(n)
        if isinstance(f, dict) and "ms_per_step" in f:
            return n, f["ms_per_step"]
    return None, None


def rows(results):
    figures = (results.get("gpu_bench") or {}).get("figures") or {}
    out = []
    for kind in KINDS:
        serve = results.get(kind)
        if not isinstance(serve, dict):
            continue
        for lv in serve.get("levels", []):
            c = lv["concurrency"]
            name, step_ms = in_process(figures, kind, c)
            tpot = (lv.get("tpot_ms") or {}).get("p50")
            row = {
                "kind": kind[len("serve_"):],
                "concurrency": c,
                "served_output_tok_s": lv.get("output_tokens_per_s"),
                "ttft_ms_p50": (lv.get("ttft_ms") or {}).get("p50"),
                "ttft_ms_p99": (lv.get("ttft_ms") or {}).get("p99"),
                "itl_ms_p50": (lv.get("itl_ms") or {}).get("p50"),
                "itl_ms_p99": (lv.get("itl_ms") or {}).get("p99"),
                "tpot_ms_p50": tpot,
                "in_process_figure": name,
                "in_process_ms_per_step": step_ms,
                "in_process_tok_s": 1e3 * c / step_ms if step_ms else None,
                "served_tpot_over_step": tpot / step_ms if tpot and step_ms else None,
            }
            out.append(row)
    return out


def line(x):
    return (f"| {x['kind']} | {x['concurrency']} | {fmt(x['served_output_tok_s'], '.0f')} "
            f"| {fmt(x['ttft_ms_p50'], '.1f')} / {fmt(x['ttft_ms_p99'], '.1f')} "
            f"| {fmt(x['itl_ms_p50'], '.2f')} / {fmt(x['itl_ms_p99'], '.2f')} "
            f"| {fmt(x['tpot_ms_p50'], '.2f')} | {fmt(x['in_process_ms_per_step'], '.2f')} "
            f"| {fmt(x['in_process_tok_s'], '.0f')} | {fmt(x['served_tpot_over_step'], '.2f')} |")


def main(argv):
    a, results = parse(argv, __doc__)
    r = rows(results)
    if not r:
        print(f"{a.results}: no serve_* entries", file=sys.stderr)
        return 1
    return emit(a, results, r, ("kind", "conc", "served tok/s", "TTFT p50/p99 ms",
                                "ITL p50/p99 ms", "TPOT p50 ms", "in-process ms/step",
                                "in-process tok/s", "TPOT / step"), line)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
