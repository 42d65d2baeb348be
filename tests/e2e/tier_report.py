"""The tier report: one line per validation tier (PASS/FAIL and its figure), as the
reference pipeline's report step prints. Tests append records; scripts/run_tests.sh
prints them at the end of `make test`."""
import json
import os

REPORT = os.environ.get("CARTSERVE_TIER_REPORT",
                        os.path.join(os.path.dirname(__file__), "..", "..", "build", "tier_report.jsonl"))


def record(tier, what, ok, figure):
    os.makedirs(os.path.dirname(os.path.abspath(REPORT)), exist_ok=True)
    with open(REPORT, "a", encoding="utf-8") as f:
        f.write(json.dumps({"tier": tier, "what": what, "ok": bool(ok), "figure": figure,
                            "device": os.environ.get("CARTSERVE_TEST_DEVICE", "cpu"),
                            "tensor_parallel_size": int(os.environ.get("CARTSERVE_TEST_TP", "1"))})
                + "\n")


def render(path=REPORT):
    """The report as text; the latest record of each tier wins."""
    if not os.path.exists(path):
        return "tier report: no records (the cartridge tiers did not run)"
    latest = {}
    for line in open(path, encoding="utf-8"):
        if line.strip():
            r = json.loads(line)
            latest[r["tier"]] = r
    order = ["0", "0.5", "1", "2", "3", "4", "5", "R", "A"]
    rows = [latest[t] for t in order if t in latest] + [r for t, r in latest.items() if t not in order]
    runs = sorted({f"{r.get('device', 'cpu')}, tensor parallel {r.get('tensor_parallel_size', 1)}"
                   for r in rows})
    out = ["", f"== cartridge validation tiers ({'; '.join(runs)}) =="]
    for r in rows:
        out.append(f"tier {r['tier']:<4} {'PASS' if r['ok'] else 'FAIL'}  {r['what']}: {r['figure']}")
    missing = [t for t in order if t not in latest]
    if missing:
        out.append("missing tiers (did not run): " + ", ".join(missing))
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
