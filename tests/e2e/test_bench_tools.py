"""bench/serve_table.py on committed GPU results: the served figures beside
the in-process decode steps of the same run."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "bench", "serve_table.py")
H200 = os.path.join(ROOT, "bench", "results", "gpu-h200-2026-12-06-2044.json")


def run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True)


def test_rows_pair_each_level_with_the_same_batch_in_process():
    r = run(H200, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    results = json.load(open(H200))
    by = {(x["kind"], x["concurrency"]): x for x in rows}
    assert len(rows) == 8  # plain and cartridge at 1, 16, 64, 256
    one = by[("plain", 1)]
    level = results["serve_plain"]["levels"][0]
    assert one["served_output_tok_s"] == level["output_tokens_per_s"]
    assert one["tpot_ms_p50"] == level["tpot_ms"]["p50"]
    step = results["gpu_bench"]["figures"]["decode_batch_1"]["ms_per_step"]
    assert one["in_process_ms_per_step"] == step
    assert abs(one["served_tpot_over_step"] - level["tpot_ms"]["p50"] / step) < 1e-12
    # Batch 256 of plain decode was timed over 1024-token contexts; 16 not at all.
    assert by[("plain", 256)]["in_process_figure"] == "decode_batch_256_ctx_1024"
    assert by[("plain", 16)]["in_process_ms_per_step"] is None
    assert by[("cartridge", 16)]["in_process_figure"] == "decode_cartridge_2048_batch_16"


def test_table_and_errors():
    r = run(H200)
    assert r.returncode == 0, r.stderr
    assert "| plain | 1 | 311 |" in r.stdout
    empty = os.path.join(ROOT, "bench", "results", "gpu-h200-2026-12-04-1855.json")
    r = run(empty)
    assert r.returncode == 1 and "no serve_* entries" in r.stderr
