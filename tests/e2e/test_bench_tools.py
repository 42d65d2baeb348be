"""The bench tools on committed GPU results: bench/serve_table.py (the served
figures beside the in-process decode steps of the same run),
bench/target_table.py (issue 11's targets) and tools/gpu/fold_results.py."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "bench", "serve_table.py")
H200 = os.path.join(ROOT, "bench", "results", "gpu-h200-2026-12-06-2044.json")


def tool(path, *args):
    return subprocess.run([sys.executable, path, *args], capture_output=True, text=True)


def run(*args):
    return tool(TOOL, *args)


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


TARGETS = os.path.join(ROOT, "bench", "target_table.py")
H200_BASELINE = os.path.join(ROOT, "bench", "results", "gpu-h200-2026-12-05-1130.json")
H100_WGMMA = os.path.join(ROOT, "bench", "results", "gpu-h100-2026-12-07-1605.json")


def targets(*args):
    return tool(TARGETS, *args)


def test_target_rows_put_each_figure_beside_its_floor_and_hf():
    r = targets(H200_BASELINE, "--json")
    assert r.returncode == 0, r.stderr
    rows = {x["figure"]: x for x in json.loads(r.stdout)}
    results = json.load(open(H200_BASELINE))
    fig = results["gpu_bench"]["figures"]
    hf = results["hf_baseline"]
    b1 = rows["decode, batch 1"]
    assert b1["ours"] == fig["decode_batch_1"]["ms_per_step"]
    assert b1["floor"] == fig["decode_batch_1"]["floor_ms_per_step"]
    assert abs(b1["fraction_of_floor"] - b1["floor"] / b1["ours"]) < 1e-12
    assert b1["hf_eager"] == hf["eager"]["decode_batch_1_ms_per_step"]
    assert b1["hf_static_compile"] == hf["static_compile"]["decode_batch_1_ms_per_step"]
    assert b1["met"] is False  # 2.51 ms/step on that H200 against <= 1.85
    prefill = rows["prefill, 8192 tokens"]
    assert prefill["hf_static_compile"] == hf["static_compile"]["prefill_8192_ms"]
    assert prefill["met"] is False
    promoted = rows["TTFT, cartridge promoted from host"]
    bytes_ = fig["ttft_cartridge_promoted_from_host"]["cartridge_bytes"]
    assert promoted["target"] == f"<= {3.0 + 1e3 * bytes_ / 45e9:.2f}"
    # Not measured in that run: no verdict.
    assert rows["SmolLM2-135M shape, decode batch 1"]["ours"] is None
    assert rows["SmolLM2-135M shape, decode batch 1"]["met"] is None


def test_targets_are_judged_on_h200_only_and_variants_by_name():
    r = targets(H100_WGMMA, "--json")
    assert r.returncode == 0, r.stderr
    rows = {x["figure"]: x for x in json.loads(r.stdout)}
    results = json.load(open(H100_WGMMA))
    assert all(x["met"] is None for x in rows.values())
    plain = results["gpu_bench_prefill"]["figures"]["prefill_8192"]["ms"]
    assert rows["prefill, 8192 tokens"]["ours"] == plain  # the variant is not read by default
    variant = "gpu_bench_prefill_prefill_wgmma_1"
    r = targets(H100_WGMMA, "--json", "--prefer", variant)
    rows = {x["figure"]: x for x in json.loads(r.stdout)}
    assert rows["prefill, 8192 tokens"]["ours"] == results[variant]["figures"]["prefill_8192"]["ms"]
    r = targets(H100_WGMMA, "--prefer", "gpu_bench_nothing")
    assert r.returncode == 1 and "no entry gpu_bench_nothing" in r.stderr
    r = targets(os.path.join(ROOT, "bench", "results", "gpu-h200-2026-12-04-1855.json"))
    assert r.returncode == 1 and "no gpu_bench figures" in r.stderr
    r = targets(H200_BASELINE)
    assert "| decode, batch 1, ms/step | 2.51 | 1.54 | 61% | 93.71 | 4.30 | <= 1.85 | no |" in r.stdout


def test_a_preferred_smollm2_entry_gives_the_smollm2_figure(tmp_path):
    # The persistent stage's variants: a key naming smollm2 goes to that row only.
    src = os.path.join(ROOT, "bench", "results", "gpu-h100-2026-12-08-0051.json")
    results = json.load(open(src))
    results["gpu_bench_decode1_smollm2_persistent_64"] = {
        "figures": {"decode_batch_1": {"ms_per_step": 0.5, "floor_ms_per_step": 0.09}}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))

    def rows(*prefer):
        r = targets(str(path), "--json", *(("--prefer",) + prefer if prefer else ()))
        assert r.returncode == 0, r.stderr
        return {x["figure"]: x["ours"] for x in json.loads(r.stdout)}

    plain = rows()
    small = "SmolLM2-135M shape, decode batch 1"
    assert plain[small] == results["gpu_bench_smollm2"]["figures"]["decode_batch_1"]["ms_per_step"]
    preferred = rows("gpu_bench_decode1_smollm2_persistent_64")
    assert preferred[small] == 0.5
    assert preferred["decode, batch 1"] == plain["decode, batch 1"]  # the 3B row is not touched


FOLD = os.path.join(ROOT, "tools", "gpu", "fold_results.py")


def test_fold_results_keeps_stages_and_summaries(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stages.jsonl").write_text('{"stage": "unit", "rc": 0, "seconds": 34}\n'
                                      '{"stage": "bench", "rc": 1, "seconds": 9}\n')
    (out / "run.log").write_text("bundle: abc\nNVIDIA H200, 143771 MiB, 580.1\n== unit\n")
    (out / "serve_plain.json").write_text(json.dumps(
        {"levels": [{"concurrency": 1, "output_tokens_per_s": 300.0, "per_request": [1, 2]}]}))
    (out / "broken.json").write_text("{not json")
    dst = tmp_path / "gpu-h200.json"
    r = tool(FOLD, str(out), str(dst), "abc123", "a note")
    assert r.returncode == 0, r.stderr
    got = json.loads(dst.read_text())
    assert got["machine"] == "NVIDIA H200, 143771 MiB, 580.1"
    assert got["commit"] == "abc123" and got["note"] == "a note"
    assert [s["stage"] for s in got["stages"]] == ["unit", "bench"]
    assert got["serve_plain"] == {"levels": [{"concurrency": 1, "output_tokens_per_s": 300.0}]}
    assert "unreadable" in got["broken"]
    r = tool(FOLD, str(tmp_path / "nope"), str(dst), "c", "n")
    assert r.returncode == 1 and "not a folder" in r.stderr
