#!/usr/bin/env python3
"""Soak: many chat requests over many cartridges with residency churning, admin changes
while the load runs, and clients that vanish mid-stream. Not a timed test: it reports.

What it does (defaults are the issue's full soak; `--small` is the make-test version):
1. writes N generated documents and builds a cartridge of each (`cartserve cartridge build`);
2. starts `cartserve serve` with all of them, a device KV budget below their sum (so
   cartridges are evicted and reloaded all the time) and a host budget below it too;
3. sends R greedy chat requests from C client threads: streaming, non-streaming, and
   streaming clients that disconnect after a few chunks; each names a random cartridge;
4. meanwhile an admin thread registers, pins, unpins and deletes extra cartridges
   (requests naming a deleted one get 400: an intended error, counted apart);
5. replays a sample of the completed requests one at a time and checks every greedy
   answer equals the answer under load;
6. checks the end state: no request running, every block back in the pool's free or
   evictable list, no cartridge reference held; RSS and device-tier bytes sampled every
   second, compared between the first and the last part after warm-up.
Writes JSON (counts, errors by kind, p50/p99 latency, memory series summary, checks) to
bench/results/soak-DATE.json (or --out) and exits 1 when a check fails.

  bench/soak/soak.py --bin build/bin/cartserve --model MODEL.gguf [--small]
Standard library only.
"""
import argparse
import http.client
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

WORDS = ("river mountain lantern harbor violet copper meadow falcon orchard glacier ember quartz "
         "willow thunder saffron compass beacon marble cinder velvet juniper prairie cobalt "
         "tundra ivory sparrow canyon pepper harbor amber").split()
QUESTIONS = ["What is the name of the town?", "Who founded it?", "What colour is the flag?",
             "What does the town trade?", "In what year was the bridge built?",
             "What is the river called?", "Summarise the document in one sentence.",
             "Who is the mayor?"]


def document(i, rng):
    """A fictional town with facts the questions ask about (~200-400 tokens)."""
    name = f"{rng.choice(WORDS).title()}{rng.choice(WORDS)}"
    facts = [f"The town of {name} lies on the {rng.choice(WORDS).title()} river.",
             f"It was founded by {rng.choice(WORDS).title()} {rng.choice(WORDS).title()} "
             f"in {1200 + rng.randrange(700)}.",
             f"Its flag is {rng.choice(['red', 'green', 'blue', 'gold', 'white'])} with a "
             f"{rng.choice(WORDS)} in the middle.",
             f"The people of {name} trade {rng.choice(WORDS)} and {rng.choice(WORDS)}.",
             f"The stone bridge was built in {1500 + rng.randrange(400)}.",
             f"The mayor is {rng.choice(WORDS).title()} {rng.choice(WORDS).title()}."]
    filler = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(80, 220)))
    return f"Document {i}. " + " ".join(facts) + " Notes: " + filler + ". " + facts[0]


class Server:
    def __init__(self, args, log_path):
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        self.port = None
        deadline = time.time() + 600
        while time.time() < deadline and self.port is None:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + open(log_path).read()[-3000:])
            m = re.search(r"on http://[\d.]+:(\d+)", open(log_path).read())
            if m:
                self.port = int(m.group(1))
            time.sleep(0.2)
        text = open(log_path).read()
        m = re.search(r"KV cache (\d+) blocks", text)
        self.kv_blocks = int(m.group(1)) if m else None

    def request(self, method, path, body=None, timeout=600):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=json.dumps(body) if body is not None else None,
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            return r.status, r.read().decode(errors="replace")
        finally:
            c.close()

    def metrics(self):
        _, text = self.request("GET", "/metrics")
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def rss_bytes(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self):
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def chat_body(cid, question, max_tokens, stream):
    return {"model": "soak", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream, "kv_transfer_params": {"cartridge_id": cid}}


def run_request(server, kind, cid, question, max_tokens):
    """kind: plain | stream | disconnect. Returns (status, text, seconds, error)."""
    t0 = time.time()
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    try:
        c.request("POST", "/v1/chat/completions", body=json.dumps(chat_body(cid, question, max_tokens,
                                                                            kind != "plain")),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return r.status, None, time.time() - t0, r.read().decode(errors="replace")[:300]
        if kind == "plain":
            body = json.loads(r.read())
            return 200, body["choices"][0]["message"]["content"], time.time() - t0, None
        parts, chunks = [], 0
        while True:
            line = r.readline()
            if not line:
                return 200, None, time.time() - t0, "stream ended without [DONE]"
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                return 200, "".join(parts), time.time() - t0, None
            obj = json.loads(line[6:])
            if "error" in obj:
                return 200, None, time.time() - t0, json.dumps(obj)[:300]
            for ch in obj.get("choices", []):
                parts.append(ch.get("delta", {}).get("content") or "")
            chunks += 1
            if kind == "disconnect" and chunks >= 3:
                return 200, None, time.time() - t0, None  # closes the socket below
    except (OSError, http.client.HTTPException) as e:
        return 0, None, time.time() - t0, repr(e)
    finally:
        c.close()


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/bin/cartserve")
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/cartserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--small", action="store_true", help="the make-test version: 500 requests, 12 cartridges")
    ap.add_argument("--requests", type=int)
    ap.add_argument("--cartridges", type=int)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--sample", type=int, help="requests replayed alone to check answers")
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--budget-fraction", type=float, default=0.3, help="device budget / sum of cartridges")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the server's device")
    ap.add_argument("--build-jobs", type=int, default=2, help="cartridge builds run at once")
    ap.add_argument("--kv-cache-memory", default="768MiB")
    ap.add_argument("--out")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    n_req = a.requests or (500 if a.small else 10000)
    n_cart = a.cartridges or (12 if a.small else 100)
    n_sample = a.sample or (100 if a.small else 500)
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="cartserve-soak-")
    result = {"config": {"requests": n_req, "cartridges": n_cart, "concurrency": a.concurrency,
                         "sample": n_sample, "max_tokens": a.max_tokens, "budget_fraction": a.budget_fraction,
                         "seed": a.seed, "model": os.path.basename(os.path.normpath(a.model)),
                         "device": a.device}}
    checks = {}
    try:
        # 1. documents and cartridges (+4 extra for the admin thread)
        t0 = time.time()
        names = [f"doc{i:03d}" for i in range(n_cart)] + [f"extra{i}" for i in range(4)]

        def build(name):
            txt = os.path.join(work, name + ".txt")
            with open(txt, "w") as f:
                f.write(document(name, random.Random(name)))
            r = subprocess.run([a.bin, "cartridge", "build", a.model, "--text", txt,
                                "-o", os.path.join(work, name + ".pt"), "--id", name, "--device", a.device],
                               capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                raise RuntimeError(r.stderr[-2000:])
        with ThreadPoolExecutor(a.build_jobs) as ex:
            list(ex.map(build, names))
        result["build_seconds"] = round(time.time() - t0, 1)
        sizes = {n: os.path.getsize(os.path.join(work, n + ".pt")) for n in names}
        # The files hold bf16; the device tier holds fp32 on the CPU, bf16 on cuda.
        widen = 2 if a.device == "cpu" else 1
        total_device = widen * sum(sizes[n] for n in names[:n_cart])
        budget = int(total_device * a.budget_fraction)
        cfg = {"kv_connector": "CartridgeConnector", "kv_role": "kv_both",
               "kv_connector_extra_config": {
                   "cartridges": [{"cartridge_id": n, "path": os.path.join(work, n + ".pt")} for n in names[:n_cart]],
                   "router": {"type": "explicit"}, "gpu_capacity_bytes": budget,
                   "host_capacity_bytes": int(sum(sizes.values()) * 0.5),
                   "registry_db": os.path.join(work, "registry.db"), "cartridge_dir": work}}
        result["device_budget_bytes"] = budget
        result["cartridge_bytes_device_dtype"] = total_device
        # 2. the server
        server = Server([a.bin, "serve", a.model, "--host", "127.0.0.1", "--port", "0",
                         "--served-model-name", "soak", "--max-model-len", "2048", "--kv-cache-memory", a.kv_cache_memory, "--device", a.device,
                         "--max-concurrent-requests", str(a.concurrency * 2), "--kv-transfer-config", json.dumps(cfg)],
                        os.path.join(work, "server.log"))
        # 3. load + 4. admin + memory sampling
        plan = []
        for i in range(n_req):
            u = rng.random()
            kind = "plain" if u < 0.55 else "stream" if u < 0.9 else "disconnect"
            cid = rng.choice(names[:n_cart]) if rng.random() < 0.97 else rng.choice(names[n_cart:])
            plan.append((i, kind, cid, rng.choice(QUESTIONS)))
        results = [None] * n_req
        done = threading.Event()
        samples = []  # (t, rss, device_bytes)
        admin_log = {"register": 0, "delete": 0, "pin": 0, "unpin": 0, "other": {}}

        def refused(op, status, body):
            key = f"{op} {status}: {json.loads(body)['error']['message'][:60] if body.startswith('{') else body[:60]}"
            admin_log["other"][key] = admin_log["other"].get(key, 0) + 1

        def sampler():
            while not done.is_set():
                try:
                    m = server.metrics()
                    samples.append((time.time() - t_load, server.rss_bytes(),
                                    m.get('cartserve:cartridge_resident_bytes{tier="device"}', 0.0)))
                except OSError:
                    pass
                done.wait(1.0)

        def admin():
            arng = random.Random(a.seed + 1)
            registered = set()
            while not done.is_set():
                op = arng.random()
                try:
                    if op < 0.35:
                        n = arng.choice(names[n_cart:])
                        if n in registered:
                            s, b = server.request("DELETE", f"/v1/cartridges/{n}")
                            if s == 200:
                                admin_log["delete"] += 1
                                registered.discard(n)
                            else:
                                refused("delete", s, b)
                        else:
                            s, b = server.request("POST", "/v1/cartridges", {"cartridge_id": n, "path": n + ".pt"})
                            if s == 201:
                                admin_log["register"] += 1
                                registered.add(n)
                            else:
                                refused("register", s, b)
                    else:
                        n = arng.choice(names[:n_cart])
                        s, b = server.request("POST", f"/v1/cartridges/{n}/pin")
                        if s == 200:
                            admin_log["pin"] += 1
                        else:
                            refused("pin", s, b)
                        done.wait(arng.uniform(0.2, 1.0))
                        s, b = server.request("POST", f"/v1/cartridges/{n}/unpin")
                        if s == 200:
                            admin_log["unpin"] += 1
                        else:
                            refused("unpin", s, b)
                except OSError as e:
                    refused("io", 0, repr(e))
                done.wait(arng.uniform(0.1, 0.5))
            for n in registered:
                server.request("DELETE", f"/v1/cartridges/{n}")

        t_load = time.time()
        threads = [threading.Thread(target=sampler), threading.Thread(target=admin)]
        for t in threads:
            t.start()

        finished = [0]

        def one(item):
            i, kind, cid, q = item
            results[i] = run_request(server, kind, cid, q, a.max_tokens)
            finished[0] += 1
            if finished[0] % 500 == 0:
                print(f"soak: {finished[0]}/{n_req} requests, {time.time() - t_load:.0f} s", file=sys.stderr,
                      flush=True)
        with ThreadPoolExecutor(a.concurrency) as ex:
            list(ex.map(one, plan))
        load_seconds = time.time() - t_load
        done.set()
        for t in threads:
            t.join()
        # Tally: intended errors are requests naming an extra cartridge that was not registered then.
        counts, errors, intended, lat = {}, [], 0, {"plain": [], "stream": [], "disconnect": []}
        for (i, kind, cid, q), (status, text, secs, err) in zip(plan, results):
            counts[kind] = counts.get(kind, 0) + 1
            if status == 200 and err is None:
                lat[kind].append(secs)
            elif (status == 400 and cid.startswith("extra") and
                  ("unknown cartridge" in (err or "") or "is not registered" in (err or ""))):
                intended += 1  # an extra cartridge not registered then (or deleted while it was queued)
            else:
                errors.append({"request": i, "kind": kind, "cartridge": cid, "status": status, "error": err})
        result.update({"load_seconds": round(load_seconds, 1), "requests_by_kind": counts,
                       "intended_errors": intended, "errors": len(errors), "error_examples": errors[:10],
                       "admin_ops": admin_log,
                       "latency_seconds": {k: {"n": len(v), "p50": pct(v, 50), "p99": pct(v, 99)}
                                           for k, v in lat.items()},
                       "requests_per_second": round(n_req / load_seconds, 2)})
        checks["no_unintended_errors"] = not errors
        # 5. greedy answers equal the same request alone
        done_ok = [(p, r) for p, r in zip(plan, results) if r[0] == 200 and r[1] is not None and r[3] is None
                   and not p[2].startswith("extra")]
        sample = random.Random(a.seed + 2).sample(done_ok, min(n_sample, len(done_ok)))
        mismatches = []
        for (i, kind, cid, q), (_, text, _, _) in sample:
            s, alone, _, err = run_request(server, "plain", cid, q, a.max_tokens)
            if s != 200 or alone != text:
                mismatches.append({"request": i, "cartridge": cid, "question": q, "under_load": text,
                                   "alone": alone, "error": err})
        result["sample_checked"] = len(sample)
        result["sample_mismatches"] = len(mismatches)
        result["mismatch_examples"] = mismatches[:5]
        checks["greedy_equal_alone"] = not mismatches and len(sample) >= min(n_sample, len(done_ok))
        # 6. end state
        time.sleep(1.0)
        for n in names[:n_cart]:
            server.request("POST", f"/v1/cartridges/{n}/unpin")
        m = server.metrics()
        _, listing = server.request("GET", "/v1/cartridges")
        held = [e["id"] for e in json.loads(listing)["data"] if e.get("in_use", 0) != 0 or e.get("pinned")]
        free = int(m.get("cartserve:kv_free_blocks", -1))
        result["end_state"] = {"running": m.get("cartserve:num_requests_running"),
                               "waiting": m.get("cartserve:num_requests_waiting"),
                               "kv_free_blocks": free, "kv_blocks": server.kv_blocks, "held_cartridges": held}
        checks["pool_all_free_at_end"] = server.kv_blocks is not None and free == server.kv_blocks
        checks["no_cartridge_references_at_end"] = not held
        checks["nothing_running_at_end"] = m.get("cartserve:num_requests_running") == 0
        # Memory: after warm-up (first 25% of the run), the last quarter's mean vs the second quarter's.
        series = [s for s in samples if s[0] >= 0.25 * load_seconds]
        q = max(1, len(series) // 3)
        early, late = series[:q], series[-q:]
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
        rss_early, rss_late = mean([s[1] for s in early]), mean([s[1] for s in late])
        dev_early, dev_late = mean([s[2] for s in early]), mean([s[2] for s in late])
        result["memory"] = {"samples": len(samples), "rss_mib_after_warmup_early": round(rss_early / 2**20, 1),
                            "rss_mib_late": round(rss_late / 2**20, 1),
                            "rss_mib_max": round(max(s[1] for s in samples) / 2**20, 1) if samples else None,
                            "device_bytes_early": dev_early, "device_bytes_late": dev_late,
                            "device_bytes_max": max((s[2] for s in samples), default=0)}
        checks["rss_flat"] = rss_late <= rss_early * 1.05 + 16 * 2**20
        checks["device_bytes_within_budget"] = result["memory"]["device_bytes_max"] <= budget
        evict = m.get('cartserve:cartridge_evictions{tier="device"}', 0)
        result["device_evictions"] = evict
        checks["residency_churned"] = evict > 0
        rc = server.stop()
        checks["server_exit_0"] = rc == 0
        result["checks"] = checks
        result["passed"] = all(checks.values())
    finally:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        result["commit"] = commit
        result["cores"] = os.cpu_count()
        out = a.out or time.strftime("bench/results/soak-%Y-%m-%d-%H%M.json")
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        print(json.dumps({k: result.get(k) for k in ("requests_by_kind", "errors", "intended_errors",
                                                      "sample_checked", "sample_mismatches", "latency_seconds",
                                                      "memory", "end_state", "checks", "passed")}, indent=1))
        print("soak: results in", out)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if result.get("passed") else 1)


if __name__ == "__main__":
    main()
