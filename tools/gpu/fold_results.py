#!/usr/bin/env python3
"""Folds one device run's $OUT (scripts/gpu_run.sh's stages.jsonl, run.log
and one JSON per stage) into the results file committed under bench/results.

  fold_results.py OUT_DIR bench/results/gpu-CARD-DATE-HHMM.json COMMIT "NOTE"

The result holds machine (the run log's GPU line), date, the commit the
binaries were built at, the note, the stages (name, rc, seconds) and every
stage JSON under its file name without ".json". load_gen's per-request lists
are left out (their per-level summaries stay). bench/target_table.py then
prints the result's target table. Standard library only.
"""
import datetime
import json
import os
import sys

DROP = ("per_request", "requests")  # load_gen's per-request lists


def strip(o):
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items() if k not in DROP}
    if isinstance(o, list):
        return [strip(v) for v in o]
    return o


def fold(out_dir, commit, note):
    r = {"machine": None,
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "commit": commit, "note": note, "stages": []}
    stages = os.path.join(out_dir, "stages.jsonl")
    if os.path.exists(stages):
        with open(stages) as f:
            r["stages"] = [json.loads(line) for line in f if line.strip()]
    for name in sorted(os.listdir(out_dir)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(out_dir, name)) as f:
                r[name[:-5]] = strip(json.load(f))
        except (OSError, ValueError) as e:
            r[name[:-5]] = {"unreadable": str(e)}
    log = os.path.join(out_dir, "run.log")
    if os.path.exists(log):
        with open(log, errors="replace") as f:
            for line in f:
                if "NVIDIA" in line and ("H100" in line or "H200" in line):
                    r["machine"] = line.strip()
                    break
    return r


def main(argv):
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir, dst, commit, note = argv
    if not os.path.isdir(out_dir):
        print(f"{out_dir}: not a folder", file=sys.stderr)
        return 1
    with open(dst, "w") as f:
        json.dump(fold(out_dir, commit, note), f, indent=1)
    print("wrote", dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
