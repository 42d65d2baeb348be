"""The soak's make-test version (bench/soak/soak.py --small): 500 chat requests at
concurrency 64 over 12 cartridges with a device budget below their sum, streaming,
non-streaming and disconnecting clients, admin changes during the load; every check
of the soak must pass (no unintended error, greedy answers equal the same request
alone on a sample of 100, pool and cartridge references clean at the end, memory flat)."""
import json
import os
import subprocess
import sys

from conftest import BIN, MODEL

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_soak_small(tmp_path):
    out = os.path.join(tmp_path, "soak.json")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench/soak/soak.py"), "--small", "--bin", BIN,
                        "--model", MODEL, "--out", out], capture_output=True, text=True, timeout=1700)
    result = json.load(open(out))
    assert r.returncode == 0 and result["passed"], (result.get("checks"), result.get("error_examples"),
                                                    result.get("mismatch_examples"), r.stderr[-2000:])
