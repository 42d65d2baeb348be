"""Crash safety (issue 13): the server is killed with SIGKILL at random points while
clients register and delete cartridges through the admin API, and `cartridge build`
writes cartridge files into the served folder; then it is restarted. Every time:
- the registry opens (the server starts);
- every registration acknowledged with 201 (and not deleted since) is present and
  loads with its checksum (nothing is flagged);
- no deletion acknowledged with 200 comes back;
- no half-written cartridge file is visible in the folder.
The server has no upload route: cartridge files arrive by `cartridge build` (or a
copy) into the folder, then a registration.
"""
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import requests

from conftest import BIN, MODEL, MODEL_NAME, Server
from test_hardening import DOCS, ROOT, kv_config

TRIALS = int(os.environ.get("CARTSERVE_CRASH_TRIALS", "50"))


def loads(path):
    """A visible cartridge file is complete: `cartridge inspect` reads it."""
    r = subprocess.run([BIN, "cartridge", "inspect", path], capture_output=True, text=True, timeout=120)
    return r.returncode == 0


def test_sigkill_during_registrations_deletions_and_builds():
    d = tempfile.mkdtemp(prefix="cartserve-crash-")
    rng = random.Random(1234)
    try:
        text = os.path.join(ROOT, DOCS["quillon"]["file"])
        r = subprocess.run([BIN, "cartridge", "build", MODEL, "--text", text, "-o", os.path.join(d, "f0.pt")],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        for i in (1, 2):
            shutil.copy(os.path.join(d, "f0.pt"), os.path.join(d, f"f{i}.pt"))
        cfg = kv_config([], router={"type": "explicit"}, registry_db=os.path.join(d, "reg.db"), cartridge_dir=d)
        present = set()   # acknowledged registrations, not deleted since
        deleted = set()   # acknowledged deletions, not registered again since
        builds = 0
        for trial in range(TRIALS + 1):
            s = Server("--kv-transfer-config", cfg)  # raises if the registry does not open
            listing = requests.get(s.url + "/v1/cartridges", timeout=60).json()
            ids = {e["id"] for e in listing["data"]}
            assert present <= ids, (trial, present - ids)
            assert not (deleted & ids), (trial, deleted & ids)
            assert listing["flagged"] == [], (trial, listing["flagged"])
            for name in os.listdir(d):
                if name.endswith(".pt") and not name.startswith("."):
                    assert loads(os.path.join(d, name)), (trial, name)
            # What survived unacknowledged is now simply known state.
            present = set(ids)
            if trial == TRIALS:
                some = sorted(ids)[0] if ids else None
                if some:
                    r = requests.post(s.url + "/v1/chat/completions", timeout=600, json={
                        "model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                        "kv_transfer_params": {"cartridge_id": some}})
                    assert r.status_code == 200, r.text
                s.stop()
                break

            stop = threading.Event()
            lock = threading.Lock()

            def client(seed):
                crng = random.Random(seed)
                while not stop.is_set():
                    with lock:
                        known = sorted(present)
                    try:
                        if known and crng.random() < 0.4:
                            cid = crng.choice(known)
                            with lock:  # from now on it may be either, until acknowledged
                                present.discard(cid)
                            r = requests.delete(f"{s.url}/v1/cartridges/{cid}", timeout=30)
                            if r.status_code == 200:
                                with lock:
                                    deleted.add(cid)
                        else:
                            cid = f"t{trial}_{crng.randrange(1 << 30):x}"
                            r = requests.post(f"{s.url}/v1/cartridges", timeout=30, json={
                                "cartridge_id": cid, "path": f"f{crng.randrange(3)}.pt"})
                            if r.status_code == 201:
                                with lock:
                                    present.add(cid)
                                    deleted.discard(cid)
                    except requests.RequestException:
                        return  # the server is gone
            threads = [threading.Thread(target=client, args=(trial * 10 + k,)) for k in range(3)]
            for t in threads:
                t.start()
            build = None
            if trial % 5 == 0:  # a cartridge file being written into the folder, killed too
                builds += 1
                build = subprocess.Popen([BIN, "cartridge", "build", MODEL, "--text", text,
                                          "-o", os.path.join(d, f"b{trial}.pt")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.05, 1.5))
            s.proc.send_signal(signal.SIGKILL)
            if build is not None:
                time.sleep(rng.uniform(0.0, 2.0))
                build.send_signal(signal.SIGKILL)
                build.wait()
            s.proc.wait()
            stop.set()
            for t in threads:
                t.join()
        assert builds >= TRIALS // 5
    finally:
        shutil.rmtree(d, ignore_errors=True)
