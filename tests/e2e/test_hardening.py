"""Hardening (issue 13) against the real server: what probing found, request limits,
keys, drain on SIGTERM, a client that disconnects, and a cartridge file replaced on disk.

Each test states the behaviour it holds the server to; the servers run on SmolLM2 (CPU).
"""
import concurrent.futures as cf
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time

import pytest
import requests

from conftest import BIN, MODEL, MODEL_NAME, Server

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
QA = json.load(open(os.path.join(ROOT, "tests/fixtures/cartridge_qa/questions.json")))
DOCS = {d["id"]: d for d in QA["documents"]}


def build(doc_id, out):
    r = subprocess.run([BIN, "cartridge", "build", MODEL, "--text", os.path.join(ROOT, DOCS[doc_id]["file"]),
                        "-o", out], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out


def kv_config(cartridges, **extra):
    return json.dumps({"kv_connector": "CartridgeConnector", "kv_role": "kv_both",
                       "kv_connector_extra_config": {"cartridges": cartridges, **extra}})


def chat(url, content="Hi", cartridge=None, headers=None, **extra):
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 8,
            "temperature": 0, **extra}
    if cartridge is not None:
        body["kv_transfer_params"] = {"cartridge_id": cartridge}
    return requests.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=600)


def error_of(r):
    return r.json()["error"]


def raw_post(port, path, headers=""):
    """A POST with neither Content-Length nor a body, as `curl -X POST` sends it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


@pytest.fixture(scope="module")
def carts():
    d = tempfile.mkdtemp(prefix="cartserve-hard-")
    for doc in ("marrowick", "tallowmere", "quillon"):
        build(doc, os.path.join(d, doc + ".pt"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def admin(carts):
    """A server with an empty registry, confined to the cartridge folder."""
    cfg = kv_config([], router={"type": "explicit"}, registry_db=os.path.join(carts, "hard.db"),
                    cartridge_dir=carts)
    s = Server("--kv-transfer-config", cfg)
    yield s
    s.stop()
    assert s.proc.returncode == 0, "".join(s.log[-30:])


def register(url, cid, path, headers=None):
    return requests.post(url + "/v1/cartridges", json={"cartridge_id": cid, "path": path}, headers=headers,
                         timeout=600)


# ---- found by probing ----

def test_cartridge_ids_are_validated(admin):
    for bad in ["../../x", "a/b", "p+q", "hazy+fixed+canary", "a+b@rerotate", ".", "..", "sp ace", "x" * 129]:
        r = register(admin.url, bad, "marrowick.pt")
        assert r.status_code == 400, (bad, r.text)
        assert "cartridge_id" in error_of(r)["message"], r.text
    ids = [e["id"] for e in requests.get(admin.url + "/v1/cartridges").json()["data"]]
    assert ids == []


def test_composites_do_not_share_the_id_namespace(admin):
    assert register(admin.url, "p", "marrowick.pt").status_code == 201
    assert register(admin.url, "q", "tallowmere.pt").status_code == 201
    composed = chat(admin.url, "What is this about?", ["p", "q"], max_tokens=12)
    assert composed.status_code == 200, composed.text
    # The composite's key is no id: registering it is refused, not a 409 for an id nobody registered.
    r = register(admin.url, "p+q", "quillon.pt")
    assert r.status_code == 400 and "'+'" in error_of(r)["message"], r.text
    again = chat(admin.url, "What is this about?", ["p", "q"], max_tokens=12)
    assert again.json()["choices"][0]["message"]["content"] == composed.json()["choices"][0]["message"]["content"]
    # A composite refused (here: an unknown part) leaves nothing listed.
    assert chat(admin.url, "Hi", ["p", "nope"]).status_code == 400
    listed = [e["id"] for e in requests.get(admin.url + "/v1/cartridges").json()["data"]]
    assert not any("nope" in i for i in listed), listed
    for cid in ("p", "q"):
        assert requests.delete(admin.url + "/v1/cartridges/" + cid).status_code == 200


def test_pin_and_unpin_without_a_body(admin):
    assert register(admin.url, "pinme", "quillon.pt").status_code == 201
    status, body = raw_post(admin.port, "/v1/cartridges/pinme/pin")
    assert status == 200, body
    assert json.loads(body)["pinned"] is True
    status, body = raw_post(admin.port, "/v1/cartridges/pinme/unpin")
    assert status == 200 and json.loads(body)["pinned"] is False, body
    status, _ = raw_post(admin.port, "/v1/cartridges/nope/pin")
    assert status == 404
    assert requests.delete(admin.url + "/v1/cartridges/pinme").status_code == 200


def test_request_field_errors(admin):
    url = admin.url
    r = chat(url, model="no-such-model")
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found", r.text
    r = requests.post(url + "/v1/completions", json={"model": MODEL_NAME, "prompt": [999999999]})
    assert r.status_code == 400, r.text
    msg = error_of(r)["message"]
    assert "999999999" in msg and "[0, 49152)" in msg, msg
    r = requests.post(url + "/v1/completions", json={"model": MODEL_NAME, "prompt": [1, -5]})
    assert r.status_code == 400 and "prompt[1]" in error_of(r)["message"] and "-5" in error_of(r)["message"]
    r = chat(url, max_tokens=2 ** 63)
    assert r.status_code == 400 and "9223372036854775808" in error_of(r)["message"], r.text
    for bad in (5, [], {"a": 1}, [5]):
        r = chat(url, cartridge=bad)
        assert r.status_code == 400 and "must be a string" in error_of(r)["message"], (bad, r.text)
    r = requests.post(url + "/v1/chat/completions",
                      json={"model": MODEL_NAME, "messages": [{"role": "user"}]})
    assert r.status_code == 400 and "content" in error_of(r)["message"], r.text
    assert admin.alive()


def test_oversized_prompts_are_refused_before_tokenizing(admin):
    # 2048-token context: the default body cap is 1 MiB, and a prompt that cannot fit is refused
    # from its size alone (what a context of 2048 tokens can hold), not after tokenizing it.
    t0 = time.time()
    r = requests.post(admin.url + "/v1/completions", json={"model": MODEL_NAME, "prompt": "ab " * 300000})
    assert r.status_code == 400 and "maximum context length" in error_of(r)["message"], r.text[:300]
    assert time.time() - t0 < 5
    r = requests.post(admin.url + "/v1/completions", json={"model": MODEL_NAME, "prompt": "x" * (3 << 20)})
    assert r.status_code == 413 and "--max-request-bytes" in error_of(r)["message"], r.text[:300]


def test_max_request_bytes_flag():
    s = Server("--max-request-bytes", "4KiB")
    try:
        r = requests.post(s.url + "/v1/completions", json={"model": MODEL_NAME, "prompt": "y" * 5000})
        assert r.status_code == 413, r.text
        r = requests.post(s.url + "/v1/completions", json={"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 2})
        assert r.status_code == 200, r.text
    finally:
        s.stop()


def test_single_cartridge_without_router_is_logged(carts):
    s = Server("--kv-transfer-config", kv_config([{"cartridge_id": "only", "path": os.path.join(carts, "quillon.pt")}]))
    try:
        assert any("one cartridge and no router" in line for line in s.log), "".join(s.log)
    finally:
        s.stop()


# ---- a cartridge file replaced on disk ----

def test_replaced_file_is_flagged_after_restart(carts):
    d = tempfile.mkdtemp(prefix="cartserve-replace-")
    try:
        shutil.copy(os.path.join(carts, "marrowick.pt"), os.path.join(d, "doc.pt"))
        cfg = kv_config([], router={"type": "explicit"}, registry_db=os.path.join(d, "reg.db"), cartridge_dir=d)
        s = Server("--kv-transfer-config", cfg)
        try:
            assert register(s.url, "doc", "doc.pt").status_code == 201
            assert register(s.url, "keep", "doc.pt").status_code == 201
        finally:
            s.stop()
        # Another valid cartridge file takes its place while the server is down.
        shutil.copy(os.path.join(carts, "tallowmere.pt"), os.path.join(d, "doc.pt"))
        s = Server("--kv-transfer-config", cfg)
        try:
            listing = requests.get(s.url + "/v1/cartridges").json()
            flagged = {f["id"]: f for f in listing["flagged"]}
            assert set(flagged) == {"doc", "keep"}, listing
            assert flagged["doc"]["reason"] == "file_changed"
            assert any("changed since it was registered" in line for line in s.log)
            r = chat(s.url, "What is this about?", "doc")
            assert r.status_code == 409 and error_of(r)["code"] == "cartridge_unavailable", r.text
            assert d not in r.text  # no server path in the answer
            # Registered again: back in service, with the new file's hash.
            r = register(s.url, "doc", "doc.pt")
            assert r.status_code == 201, r.text
            assert chat(s.url, "What is this about?", "doc").status_code == 200
            # Deleting a flagged entry works too.
            assert requests.delete(s.url + "/v1/cartridges/keep").status_code == 200
        finally:
            s.stop()
        s = Server("--kv-transfer-config", cfg)
        try:
            listing = requests.get(s.url + "/v1/cartridges").json()
            assert [e["id"] for e in listing["data"]] == ["doc"] and listing["flagged"] == [], listing
        finally:
            s.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_replaced_file_while_serving_is_a_409_without_paths(carts):
    d = tempfile.mkdtemp(prefix="cartserve-swap-")
    try:
        ids = ["marrowick", "tallowmere", "quillon"]
        for i in ids:
            shutil.copy(os.path.join(carts, i + ".pt"), os.path.join(d, i + ".pt"))
        # Room on the device for one cartridge (fp32 on the CPU: twice the bf16 file): each switch evicts.
        # The host tier holds one file's worth too, so a switch reloads from disk.
        size = max(os.path.getsize(os.path.join(d, i + ".pt")) for i in ids)
        cfg = kv_config([{"cartridge_id": i, "path": os.path.join(d, i + ".pt")} for i in ids],
                        router={"type": "explicit"}, gpu_capacity_bytes=int(size * 2 * 1.2),
                        host_capacity_bytes=int(size * 1.2), cartridge_dir=d)
        s = Server("--kv-transfer-config", cfg)
        try:
            for i in ids:
                assert chat(s.url, "Hi", i).status_code == 200
            shutil.copy(os.path.join(d, "quillon.pt"), os.path.join(d, "marrowick.pt"))
            r = chat(s.url, "Hi", "marrowick")
            assert r.status_code == 409, r.text
            err = error_of(r)
            assert err["code"] == "cartridge_unavailable" and "'marrowick'" in err["message"], r.text
            assert d not in r.text and "request '" not in r.text, r.text
            assert chat(s.url, "Hi", "tallowmere").status_code == 200  # the others still serve
        finally:
            s.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_invalid_id_already_in_the_registry(carts):
    d = tempfile.mkdtemp(prefix="cartserve-oldid-")
    try:
        shutil.copy(os.path.join(carts, "quillon.pt"), os.path.join(d, "q.pt"))
        db = os.path.join(d, "reg.db")
        cfg = kv_config([], router={"type": "explicit"}, registry_db=db, cartridge_dir=d)
        s = Server("--kv-transfer-config", cfg)
        try:
            assert register(s.url, "old", "q.pt").status_code == 201
        finally:
            s.stop()
        # What an older version stored: an id outside today's id set.
        with sqlite3.connect(db) as c:
            c.execute("UPDATE cartridges SET cartridge_id = '../../x' WHERE cartridge_id = 'old'")
        s = Server("--kv-transfer-config", cfg)
        try:
            assert any("../../x" in line and "not served" in line for line in s.log), "".join(s.log)
            flagged = requests.get(s.url + "/v1/cartridges").json()["flagged"]
            assert [f["id"] for f in flagged] == ["../../x"] and flagged[0]["reason"] == "invalid_id"
            assert chat(s.url, "Hi", "../../x").status_code == 400
            r = requests.delete(s.url + "/v1/cartridges/..%2F..%2Fx")
            assert r.status_code == 200, r.text
            assert requests.get(s.url + "/v1/cartridges").json()["flagged"] == []
        finally:
            s.stop()
        s = Server("--kv-transfer-config", cfg)
        try:
            assert requests.get(s.url + "/v1/cartridges").json()["flagged"] == []
        finally:
            s.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---- limits and keys ----

def long_request(url, max_tokens=400, **kw):
    return chat(url, "Tell me a long story.", max_tokens=max_tokens, ignore_eos=True, **kw)


def test_concurrency_cap_answers_503_with_retry_after():
    s = Server("--max-concurrent-requests", "2")
    try:
        with cf.ThreadPoolExecutor(6) as ex:
            rs = list(ex.map(lambda _: long_request(s.url, max_tokens=64), range(6)))
        codes = sorted(r.status_code for r in rs)
        assert codes.count(200) >= 2 and codes.count(503) >= 1, codes
        full = next(r for r in rs if r.status_code == 503)
        assert full.headers.get("Retry-After") and error_of(full)["code"] == "server_full"
        assert s.metrics()["cartserve:requests_refused_full_total"] >= 1
        assert long_request(s.url, max_tokens=4).status_code == 200  # slots come back
    finally:
        s.stop()


def test_request_timeout_aborts_a_running_request():
    s = Server("--request-timeout", "1")
    try:
        t0 = time.time()
        r = long_request(s.url, max_tokens=1500)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["finish_reason"] == "abort", r.json()["choices"][0]
        assert time.time() - t0 < 10
        assert s.metrics()["cartserve:requests_timed_out_total"] >= 1
        assert chat(s.url).status_code == 200
    finally:
        s.stop()


def test_api_key_and_admin_key(carts):
    cfg = kv_config([], router={"type": "explicit"}, cartridge_dir=carts)
    s = Server("--kv-transfer-config", cfg, "--api-key", "user-key", "--admin-api-key", "admin-key")
    try:
        user = {"Authorization": "Bearer user-key"}
        root = {"Authorization": "Bearer admin-key"}
        assert chat(s.url).status_code == 401
        assert chat(s.url, headers={"Authorization": "Bearer user-kez"}).status_code == 401
        assert chat(s.url, headers=user).status_code == 200
        assert chat(s.url, headers=root).status_code == 200
        assert requests.get(s.url + "/v1/cartridges", headers=user).status_code == 200
        assert register(s.url, "k", "quillon.pt").status_code == 401
        r = register(s.url, "k", "quillon.pt", headers=user)
        assert r.status_code == 403 and "admin" in error_of(r)["message"], r.text
        assert register(s.url, "k", "quillon.pt", headers=root).status_code == 201
        assert requests.post(s.url + "/v1/cartridges/k/pin", headers=user).status_code == 403
        assert requests.delete(s.url + "/v1/cartridges/k", headers=user).status_code == 403
        assert requests.delete(s.url + "/v1/cartridges/k", headers=root).status_code == 200
    finally:
        s.stop()


def test_disconnect_frees_the_blocks():
    s = Server()
    try:
        assert chat(s.url).status_code == 200
        # The answer can arrive before the engine's next loop releases its
        # blocks and refreshes the gauge: take the baseline once it is steady.
        free, prev = None, -1
        for _ in range(50):
            free = s.metrics()["cartserve:kv_free_blocks"]
            if free == prev:
                break
            prev = free
            time.sleep(0.3)
        r = requests.post(s.url + "/v1/chat/completions", stream=True, timeout=600,
                          json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "Count to a thousand."}],
                                "max_tokens": 1500, "ignore_eos": True, "stream": True})
        chunks = r.iter_content(chunk_size=None)
        got = b""
        while got.count(b"data: ") < 3:  # a few tokens streamed: it is running
            got += next(chunks)
        deadline = time.time() + 30
        while s.metrics()["cartserve:num_requests_running"] != 1 and time.time() < deadline:
            time.sleep(0.1)  # the gauge is refreshed once per engine step
        assert s.metrics()["cartserve:num_requests_running"] == 1
        r.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            m = s.metrics()
            if m["cartserve:num_requests_running"] == 0 and m["cartserve:kv_free_blocks"] == free:
                break
            time.sleep(0.2)
        m = s.metrics()
        assert m["cartserve:num_requests_running"] == 0 and m["cartserve:kv_free_blocks"] == free, m
        assert m.get('cartserve:request_success_total{finished_reason="abort"}', 0) >= 1
    finally:
        s.stop()


def test_sigterm_drains_and_exits_zero():
    s = Server("--shutdown-timeout", "20")
    with cf.ThreadPoolExecutor(1) as ex:
        running = ex.submit(long_request, s.url, 48)
        deadline = time.time() + 30
        while s.metrics()["cartserve:num_requests_running"] < 1 and time.time() < deadline:
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        r = running.result()
    # The request in flight finished in the grace period; the server exited 0 and listens no more.
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length", r.text
    assert s.proc.wait(timeout=60) == 0, "".join(s.log[-20:])
    assert any("draining" in line for line in s.log)
    with pytest.raises(requests.ConnectionError):
        requests.get(s.url + "/health", timeout=5)


def test_sigterm_cancels_what_outlives_the_grace():
    s = Server("--shutdown-timeout", "1")
    with cf.ThreadPoolExecutor(1) as ex:
        running = ex.submit(long_request, s.url, 1900)
        deadline = time.time() + 30
        while s.metrics()["cartserve:num_requests_running"] < 1 and time.time() < deadline:
            time.sleep(0.05)
        t0 = time.time()
        s.proc.send_signal(signal.SIGTERM)
        r = running.result()
        assert time.time() - t0 < 15
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "abort", r.text
    assert s.proc.wait(timeout=60) == 0
