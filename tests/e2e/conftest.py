"""Fixtures for end-to-end tests: a real `cartserve serve` process on the test model.

The binary and model come from the environment ctest sets (tests/CMakeLists.txt):
CARTSERVE_BIN, CARTSERVE_TEST_MODEL.
"""
import os
import re
import subprocess
import threading
import time

import pytest
import requests

BIN = os.environ.get("CARTSERVE_BIN", os.path.join(os.path.dirname(__file__), "../../build/bin/cartserve"))
MODEL = os.environ.get("CARTSERVE_TEST_MODEL",
                       os.path.expanduser("~/.cache/cartserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
MODEL_NAME = "smollm2"
# The backend the servers run on (the GPU machine's script sets cuda), and
# their tensor-parallel size (scripts/gpu_run.sh smollm2:tp2 sets 2).
DEVICE = os.environ.get("CARTSERVE_TEST_DEVICE", "cpu")
TP = int(os.environ.get("CARTSERVE_TEST_TP", "1"))


class Server:
    """A cartserve process; its port is read from the start-up line."""

    def __init__(self, *extra_args, env=None, kv_cache="256MiB", model=MODEL, model_name=MODEL_NAME):
        self.args = [BIN, "serve", model, "--host", "127.0.0.1", "--port", "0",
                     "--served-model-name", model_name, "--max-model-len", "2048",
                     "--kv-cache-memory", kv_cache, "--device", DEVICE, *extra_args]
        if TP > 1:
            self.args += ["--tensor-parallel-size", str(TP)]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, **(env or {})})
        self.log = []
        self.port = None
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.log.append(line)
                m = re.search(r"on http://[\d.]+:(\d+)", line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()

        self.thread = threading.Thread(target=pump, daemon=True)
        self.thread.start()
        ready.wait(timeout=180)
        if self.port is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError("server not healthy")

    def alive(self):
        return self.proc.poll() is None

    def metrics(self):
        text = requests.get(self.url + "/metrics", timeout=30).text
        out = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()
    assert s.proc.returncode == 0, "server exited with %s\n%s" % (s.proc.returncode, "".join(s.log[-50:]))


@pytest.fixture(scope="session")
def client(server):
    import openai
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=600, max_retries=0)
