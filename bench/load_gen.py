#!/usr/bin/env python3
"""Load generator for any OpenAI-compatible server (cartserve, llama-server, vLLM, ...).

Sends a fixed, seeded set of streaming /v1/completions requests (mixed prompt
lengths, fixed max_tokens, temperature 0, ignore_eos so every request
generates exactly max_tokens) at each concurrency level (closed loop: C
client threads, each sends its next request when the previous one ended),
and reports per level: request throughput, output tokens/s, time to first
token (TTFT), inter-token latency (ITL: gaps between streamed chunks that
carry text), time per output token (TPOT: (last - first chunk) / (tokens - 1)
per request) and end-to-end latency percentiles. Writes JSON and prints a
short table.

It talks to a running server (--base-url) or starts one itself on a free port
bound to 127.0.0.1, waits for /health, runs, and stops it:
  --server cartserve    --cartserve-bin build/bin/cartserve --model MODEL.gguf
  --server llama-server --llama-server PATH/llama-server  --model MODEL.gguf

Every concurrency level gets its own prompts (seeded by --seed and the level),
so no level reuses an earlier level's prefix cache; the same seed gives the
same prompts for every server. Only the standard library is used.
"""
import argparse
import http.client
import json
import math
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

# Common English words: in byte-level BPE vocabularies most are one token with
# their leading space, so a prompt of N words is close to N tokens (the exact
# count comes back in each response's usage and is recorded).
WORDS = """the of and to in is was for on that with as by at from his her they be this which
or are had not but have one all were their when there an been more would who will into time
only new some could them these two may other than first any like then its over such our out
also what water people years after most made many way where before long work through back
much well down should because each just those great good world same state over under city
house little old year day small large part light right place might while music river story
found country between never last school family three under another field point both life
book land side being north south west east paper group during without again often city
early money sea near head open seen next white children begin got walk example ease
line river second thought name very help through much before move right boy old too
mean same tell does set three want air well also play small end put home read hand port
large spell add even land here must big high such follow act why ask men change went light
kind off need house picture try again animal point mother world near build self earth
father stand own page should country found answer grow study still learn plant cover food
sun four between state keep eye never last let thought tree cross farm hard start might
story saw far sea draw left late run while press close night real life few stop""".split()
WORDS = list(dict.fromkeys(WORDS))  # drop repeats, keep the order (the seeded choice needs it)


def percentiles(values, ps=(50, 90, 99)):
    """Linear-interpolated percentiles (numpy's default) plus mean; None when empty."""
    if not values:
        return {**{f"p{p}": None for p in ps}, "mean": None, "n": 0}
    v = sorted(values)
    out = {}
    for p in ps:
        k = (len(v) - 1) * p / 100.0
        lo, hi = math.floor(k), math.ceil(k)
        out[f"p{p}"] = v[lo] + (v[hi] - v[lo]) * (k - lo)
    out["mean"] = sum(v) / len(v)
    out["n"] = len(v)
    return out


def make_prompts(seed, level, n, min_len, max_len):
    """n prompts of min_len..max_len words (log-uniform), deterministic in (seed, level)."""
    rng = random.Random(f"{seed}/{level}")
    prompts = []
    for i in range(n):
        words = int(round(math.exp(rng.uniform(math.log(min_len), math.log(max_len)))))
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        prompts.append({"index": i, "words": words, "text": text})
    return prompts


def machine_facts():
    facts = {"platform": platform.platform(),
             "logical_cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    facts["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            facts["mem_total_kib"] = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return facts


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_s():
    """CPU seconds all processes have been busy (incl. steal), from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def process_cpu_s(pid):
    """utime + stime of a process (all its threads), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


class CpuAccount:
    """How much CPU others (not the server, not this client) took over an interval.

    other_cpu_share = their CPU seconds / (wall seconds x logical CPUs): 0 on a quiet
    machine; a large share means the figures of that interval are suspect.
    """

    def __init__(self, server_pid):
        self.server_pid = server_pid
        self.t0 = time.perf_counter()
        self.busy0 = machine_busy_s()
        self.server0 = process_cpu_s(server_pid) if server_pid else None
        self.client0 = sum(os.times()[:2])

    def finish(self):
        wall = time.perf_counter() - self.t0
        busy1 = machine_busy_s()
        out = {"client_cpu_s": sum(os.times()[:2]) - self.client0}
        if self.server0 is not None:
            s1 = process_cpu_s(self.server_pid)
            out["server_cpu_s"] = None if s1 is None else s1 - self.server0
        if self.busy0 is not None and busy1 is not None:
            others = busy1 - self.busy0 - out["client_cpu_s"] - (out.get("server_cpu_s") or 0)
            out["machine_busy_s"] = busy1 - self.busy0
            if self.server0 is not None:
                out["other_cpu_s"] = max(0.0, others)
                out["other_cpu_share"] = max(0.0, others) / (wall * (os.cpu_count() or 1))
        return out


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    """Where requests go: host, port, model name, optional API key."""

    def __init__(self, base_url, model, api_key=None):
        u = urllib.parse.urlparse(base_url)
        if u.scheme != "http" or not u.hostname:
            raise SystemExit(f"error: --base-url must be http://HOST:PORT, got {base_url!r}")
        self.host = u.hostname
        self.port = u.port or 80
        self.prefix = u.path.rstrip("/")
        self.model = model
        self.api_key = api_key

    def get_json(self, path, timeout=30):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", self.prefix + path, headers=self.headers())
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                return None
            return json.loads(body)
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            conn.close()

    def headers(self):
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h


class ManagedServer:
    """A server process started by this script on a free 127.0.0.1 port."""

    def __init__(self, argv, port, log_path, name):
        self.argv = argv
        self.port = port
        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def wait_healthy(self, timeout_s):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"error: {self.name} exited with {self.proc.returncode} "
                                 f"before becoming healthy; log:\n{self.tail()}")
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"error: {self.name} not healthy after {timeout_s} s; log:\n{self.tail()}")

    def tail(self, n=30):
        self.log.flush()
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def one_request(target, prompt, args):
    """Sends one streaming completion; returns its timings (perf_counter seconds)."""
    body = {"model": target.model, "prompt": prompt["text"], "max_tokens": args.max_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    if not args.no_ignore_eos:
        body["ignore_eos"] = True
    if args.cartridge_id:
        body["kv_transfer_params"] = {"cartridge_id": args.cartridge_id}
    if args.logprobs:
        body["logprobs"] = 1
    rec = {"index": prompt["index"], "words": prompt["words"], "ok": False}
    chunk_times = []
    usage = None
    n_text_chunks = 0
    conn = http.client.HTTPConnection(target.host, target.port, timeout=args.request_timeout)
    t0 = time.perf_counter()
    try:
        conn.request("POST", target.prefix + "/v1/completions", body=json.dumps(body),
                     headers={**target.headers(), "Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            rec["error"] = f"HTTP {resp.status}: {resp.read()[:300].decode(errors='replace')}"
            return rec
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            t = time.perf_counter()
            obj = json.loads(data)
            if "error" in obj:
                rec["error"] = json.dumps(obj["error"])[:300]
                return rec
            choices = obj.get("choices") or []
            # A token's chunk: it carries text, or (--logprobs) the token's logprob.
            if choices and (choices[0].get("text") or
                            (args.logprobs and (choices[0].get("logprobs") or {}).get("tokens"))):
                chunk_times.append(t)
                n_text_chunks += 1
            if obj.get("usage"):
                usage = obj["usage"]
    except (OSError, http.client.HTTPException, ValueError) as e:
        rec["error"] = f"{type(e).__name__}: {e}"
        return rec
    finally:
        conn.close()
    t_end = time.perf_counter()
    if not chunk_times:
        rec["error"] = "stream ended without any text"
        return rec
    rec["ok"] = True
    rec["t_start"] = t0
    rec["t_end"] = t_end
    rec["ttft_s"] = chunk_times[0] - t0
    rec["e2e_s"] = t_end - t0
    rec["itl_s"] = [b - a for a, b in zip(chunk_times, chunk_times[1:])]
    rec["text_chunks"] = n_text_chunks
    rec["prompt_tokens"] = usage.get("prompt_tokens") if usage else None
    rec["output_tokens"] = usage.get("completion_tokens") if usage else n_text_chunks
    rec["usage_reported"] = usage is not None
    if rec["output_tokens"] and rec["output_tokens"] > 1:
        rec["tpot_s"] = (chunk_times[-1] - chunk_times[0]) / (rec["output_tokens"] - 1)
    return rec


def run_level(target, concurrency, prompts, args, server_pid):
    """Closed loop: `concurrency` threads take prompts in order until none are left."""
    lock = threading.Lock()
    next_index = [0]
    records = []

    def worker():
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(prompts):
                return
            r = one_request(target, prompts[i], args)
            with lock:
                records.append(r)

    account = CpuAccount(server_pid)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    duration = time.perf_counter() - t0
    cpu = account.finish()

    ok = [r for r in records if r["ok"]]
    out_tokens = sum(r["output_tokens"] or 0 for r in ok)
    prompt_tokens = sum(r["prompt_tokens"] or 0 for r in ok)
    ms = lambda xs: [1000.0 * x for x in xs]  # noqa: E731
    level = {
        "concurrency": concurrency,
        "requests": len(prompts),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "errors": sorted({r["error"] for r in records if not r["ok"]})[:5],
        "duration_s": duration,
        "request_throughput_per_s": len(ok) / duration,
        "output_tokens_per_s": out_tokens / duration,
        "total_tokens_per_s": (out_tokens + prompt_tokens) / duration,
        "prompt_tokens_total": prompt_tokens,
        "output_tokens_total": out_tokens,
        "ttft_ms": percentiles(ms([r["ttft_s"] for r in ok])),
        "itl_ms": percentiles(ms([x for r in ok for x in r["itl_s"]])),
        "tpot_ms": percentiles(ms([r["tpot_s"] for r in ok if "tpot_s" in r])),
        "e2e_latency_ms": percentiles(ms([r["e2e_s"] for r in ok])),
        # > 1 when a server coalesces several tokens into one streamed chunk
        # (then ITL counts one gap per chunk, not per token).
        "output_tokens_per_text_chunk": (out_tokens / sum(r["text_chunks"] for r in ok)) if ok else None,
        "usage_reported": all(r["usage_reported"] for r in ok) if ok else None,
        # CPU seconds of this client, the server and everything else during the level.
        **cpu,
        "per_request": [{"index": r["index"], "words": r["words"], "ok": r["ok"],
                         "prompt_tokens": r.get("prompt_tokens"),
                         "output_tokens": r.get("output_tokens"),
                         "ttft_ms": round(1000 * r["ttft_s"], 3) if r["ok"] else None,
                         "e2e_ms": round(1000 * r["e2e_s"], 3) if r["ok"] else None}
                        for r in sorted(records, key=lambda r: r["index"])],
    }
    return level


def start_server(args, threads):
    port = free_port()
    log_path = args.server_log or os.path.join(tempfile.gettempdir(),
                                               f"load_gen-{args.server}-{port}.log")
    notes = []
    if args.server == "cartserve":
        argv = [args.cartserve_bin, "serve", args.model, "--host", "127.0.0.1", "--port", str(port),
                "--served-model-name", args.served_model_name,
                "--max-model-len", str(args.max_model_len),
                "--max-num-seqs", str(max(args.concurrency))]
        if threads:
            argv += ["--threads", str(threads)]
        dtype = next((a.split("=", 1)[1] for a in args.server_arg if a.startswith("--dtype=")),
                     None)
        if dtype is None and "--dtype" in args.server_arg:
            i = args.server_arg.index("--dtype")
            dtype = args.server_arg[i + 1] if i + 1 < len(args.server_arg) else None
        cuda = "cuda" in args.server_arg or "--device=cuda" in args.server_arg
        if cuda:
            notes.append("cartserve CUDA backend: bf16 weights and paged KV cache, fp32 "
                         "accumulation, decode steps as CUDA graphs")
        elif dtype in (None, "auto"):
            notes.append("cartserve CPU backend, --dtype auto: the GGUF's quantized matrices kept "
                         "(integer dot products, int16 activations; prefill: sgemm on dequantized "
                         "panels), fp32 compute elsewhere, fp32 paged KV cache")
        else:
            notes.append(f"cartserve CPU backend, --dtype {dtype}: matrices dequantized at load, "
                         "fp32 compute (OpenBLAS sgemm, own SIMD kernels), fp32 paged KV cache")
        notes.append(f"--max-num-seqs {max(args.concurrency)} (the highest concurrency level); "
                     "other scheduler flags at their defaults (--max-num-batched-tokens 2048, "
                     "prefix caching on)")
    else:
        slots = max(args.concurrency)
        argv = [args.llama_server, "-m", args.model, "--host", "127.0.0.1", "--port", str(port),
                "--alias", args.served_model_name, "-np", str(slots), "-kvu",
                "--kv-unified-per-slot", str(args.max_model_len)]
        if threads:
            argv += ["-t", str(threads), "-tb", str(threads)]
        m = re.search(r"(Q\d_\w+|F16|BF16|F32)", os.path.basename(args.model), re.IGNORECASE)
        quant = m.group(1) if m else "as stored in the GGUF"
        notes.append(f"llama-server computes with the GGUF's own quantized weights ({quant}; ggml "
                     "CPU kernels with quantized activations) and an f16 KV cache, against "
                     "cartserve's fp32 weights and KV: it reads several times fewer weight bytes "
                     "per decode step")
        notes.append(f"llama-server -np {slots} (one slot per client at the highest concurrency; "
                     f"its default is 4 auto slots), -kvu --kv-unified-per-slot "
                     f"{args.max_model_len} (one KV pool of {slots} x {args.max_model_len} tokens, "
                     f"each request up to {args.max_model_len} like cartserve's --max-model-len); "
                     "other flags at their defaults (continuous batching, prompt cache, "
                     "n_batch 2048, n_ubatch 512, flash attention auto)")
    argv += args.server_arg
    srv = ManagedServer(argv, port, log_path, args.server)
    srv.wait_healthy(args.startup_timeout)
    return srv, f"http://127.0.0.1:{port}", notes


def server_info(target, kind):
    info = {"models": target.get_json("/v1/models")}
    if kind.startswith("llama-server"):
        props = target.get_json("/props") or {}
        info["total_slots"] = props.get("total_slots")
        info["build_info"] = props.get("build_info")
        dgs = props.get("default_generation_settings") or {}
        info["n_ctx"] = dgs.get("n_ctx")
    else:
        info["version"] = target.get_json("/version")
    return info


def print_table(result):
    print(f"\n{result['server']['kind']}: {result['params']['max_tokens']} output tokens per "
          f"request, prompts {result['params']['prompt_words']} words")
    hdr = (f"{'conc':>4} {'ok':>5} {'req/s':>7} {'out tok/s':>9} "
           f"{'TTFT p50/p90/p99 ms':>24} {'ITL p50/p90/p99 ms':>22} {'TPOT p50':>8} {'others':>6}")
    print(hdr)
    for lv in result["levels"]:
        t, i = lv["ttft_ms"], lv["itl_ms"]
        f = lambda d: "/".join("-" if d[k] is None else f"{d[k]:.0f}" for k in ("p50", "p90", "p99"))  # noqa: E731
        fi = lambda d: "/".join("-" if d[k] is None else f"{d[k]:.1f}" for k in ("p50", "p90", "p99"))  # noqa: E731
        tp = lv["tpot_ms"]["p50"]
        other = lv.get("other_cpu_share")
        other = "-" if other is None else f"{100 * other:.0f}%"
        print(f"{lv['concurrency']:>4} {lv['completed']:>2}/{lv['requests']:<2} "
              f"{lv['request_throughput_per_s']:>7.3f} {lv['output_tokens_per_s']:>9.1f} "
              f"{f(t):>24} {fi(i):>22} {('-' if tp is None else f'{tp:.1f}'):>8} "
              f"{other:>6}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", help="a running server, e.g. http://127.0.0.1:8000")
    p.add_argument("--server", choices=["cartserve", "llama-server"],
                   help="start this server (needs --model and its binary)")
    p.add_argument("--cartserve-bin", default="build/bin/cartserve")
    p.add_argument("--llama-server", help="path of llama.cpp's llama-server")
    p.add_argument("--model", help="GGUF file the started server loads")
    p.add_argument("--served-model-name", default="bench",
                   help="'model' sent in requests (for --base-url: default the first of /v1/models)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    p.add_argument("--threads", type=int, default=0, help="server threads (0: the server's default)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra argument for the started server (repeatable)")
    p.add_argument("--label", help="name of this server in the results (default: --server, or external)")
    p.add_argument("--server-log", help="file for the started server's output")
    p.add_argument("--startup-timeout", type=float, default=300)
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    p.add_argument("--requests", type=int, default=0,
                   help="requests per level (0: max(16, 4 x concurrency))")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--logprobs", action="store_true",
                   help="ask for each token's logprob and count a chunk that carries one as a "
                   "token even without text (random-weight checkpoints whose tokenizer does not "
                   "cover the vocabulary)")
    p.add_argument("--cartridge-id", help="every request names this cartridge "
                   "(kv_transfer_params.cartridge_id): its KV goes before the prompt")
    p.add_argument("--min-prompt-words", type=int, default=32)
    p.add_argument("--max-prompt-words", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=2, help="requests before the first level (not counted)")
    p.add_argument("--no-ignore-eos", action="store_true",
                   help="do not send ignore_eos (output lengths then vary)")
    p.add_argument("--request-timeout", type=float, default=900)
    p.add_argument("--out", default="load_gen.json")
    args = p.parse_args(argv)
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        p.error(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")
    if any(c < 1 for c in args.concurrency):
        p.error("--concurrency levels must be >= 1")
    if not 1 <= args.min_prompt_words <= args.max_prompt_words:
        p.error("need 1 <= --min-prompt-words <= --max-prompt-words")
    if args.max_tokens < 1:
        p.error("--max-tokens must be >= 1")
    if bool(args.base_url) == bool(args.server):
        p.error("give exactly one of --base-url or --server")
    if args.server:
        if not args.model or not os.path.exists(args.model):
            p.error(f"--server needs --model (a GGUF file or a checkpoint folder; got {args.model!r})")
        exe = args.cartserve_bin if args.server == "cartserve" else args.llama_server
        if not exe or not os.access(exe, os.X_OK):
            p.error(f"{args.server} binary not found or not executable: {exe!r}")
    return args


def main(argv=None):
    args = parse_args(argv)
    srv = None
    notes = []
    if args.server:
        srv, base_url, notes = start_server(args, args.threads)
        kind = args.label or args.server
    else:
        base_url = args.base_url
        kind = args.label or "external"
    try:
        target = Target(base_url, args.served_model_name, args.api_key)
        if args.base_url and "--served-model-name" not in (argv or sys.argv):
            models = target.get_json("/v1/models") or {}
            data = models.get("data") or []
            if data:
                target.model = data[0].get("id", target.model)
        info = server_info(target, kind)
        # Warm-up: a short request or two (not counted) so lazy set-up is done.
        for w in make_prompts(args.seed, "warmup", args.warmup, 16, 32):
            r = one_request(target, w, args)
            if not r["ok"]:
                raise SystemExit(f"error: warm-up request failed: {r.get('error')}")
        result = {
            "benchmark": "load_gen",
            "server": {"kind": kind, "base_url": base_url, "argv": srv.argv if srv else None,
                       "info": info, "notes": notes},
            "machine": machine_facts(),
            "params": {"endpoint": "/v1/completions", "stream": True, "temperature": 0.0,
                       "cartridge_id": args.cartridge_id, "logprobs": args.logprobs,
                       "max_tokens": args.max_tokens, "ignore_eos": not args.no_ignore_eos,
                       "prompt_words": [args.min_prompt_words, args.max_prompt_words],
                       "prompt_length_distribution": "log-uniform in words, random common "
                       "English words (about one token each)",
                       "seed": args.seed, "concurrency": args.concurrency,
                       "closed_loop": True, "new_connection_per_request": True},
            "client_note": "the client runs on the same machine as the server and shares its "
                           "CPUs; per level, client_cpu_s says how much it took, server_cpu_s "
                           "the server's, and other_cpu_share how much of the machine other "
                           "processes took (0: quiet; large: the level's figures are suspect)",
            "loadavg_start": loadavg(),
            "levels": [],
        }
        t_start = time.time()
        for c in args.concurrency:
            n = args.requests or max(16, 4 * c)
            prompts = make_prompts(args.seed, c, n, args.min_prompt_words, args.max_prompt_words)
            print(f"[load_gen] {kind}: concurrency {c}, {n} requests ...", file=sys.stderr, flush=True)
            result["levels"].append(run_level(target, c, prompts, args,
                                              srv.proc.pid if srv else None))
        result["wall_s"] = time.time() - t_start
        result["loadavg_end"] = loadavg()
    finally:
        if srv:
            rc = srv.stop()
            if rc not in (0, -15):
                print(f"[load_gen] warning: {kind} exited with {rc}; log:\n{srv.tail()}",
                      file=sys.stderr)
    result["server"]["exit_code"] = srv.proc.returncode if srv else None
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print_table(result)
    print(f"wrote {args.out}")
    failed = sum(lv["failed"] for lv in result["levels"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
