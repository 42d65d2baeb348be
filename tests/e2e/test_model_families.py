"""Qwen3 and SentencePiece-tokenized models through the real server (issue 15).

tiny-qwen3 (q/k norm) and tiny-mistral (SentencePiece BPE with byte fallback)
are the random-weight HF checkpoints of tests/fixtures/model
(tools/make_model_fixtures.py). Checked here over HTTP:
- a Qwen3 cartridge built by `cartserve cartridge build` (.pt, fp32) serves
  like a Llama one: the first token's top-20 logprobs equal those of the
  document in the prompt (|dlogprob| <= 1e-5, fp32 CPU);
- chat_template_kwargs is accepted (and refused where malformed);
- a SentencePiece model streams the same text it returns whole, and echo /
  completions decode through its decoder chain.
"""
import json
import os
import subprocess
import tempfile

import pytest
import requests

from conftest import BIN, DEVICE, Server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "model")
QWEN3 = os.path.join(FIXTURES, "tiny-qwen3")
MISTRAL = os.path.join(FIXTURES, "tiny-mistral")
DOC = open(os.path.join(ROOT, "tests", "fixtures", "text", "long_prompt.txt"), encoding="utf-8").read()[:600]
QUESTION = "Where did the most famous of the ancient lights stand?"

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="Qwen3 (q/k norm) runs on the CPU backend only")


def chat(url, model, messages, **extra):
    body = {"model": model, "messages": messages, "max_tokens": 1, "temperature": 0, **extra}
    return requests.post(url + "/v1/chat/completions", json=body, timeout=600)


def top_logprobs(resp):
    assert resp.status_code == 200, resp.text
    content = resp.json()["choices"][0]["logprobs"]["content"][0]
    # Keyed by the token's bytes: a partial character's "token" text is U+FFFD.
    return {tuple(t["bytes"]): t["logprob"] for t in content["top_logprobs"]}


@pytest.fixture(scope="module")
def qwen3_cartridge():
    d = tempfile.mkdtemp(prefix="cartserve-qwen3-")
    doc = os.path.join(d, "doc.txt")
    with open(doc, "w", encoding="utf-8") as f:
        f.write(DOC)
    out = os.path.join(d, "doc.pt")
    r = subprocess.run([BIN, "cartridge", "build", QWEN3, "--text", doc, "-o", out, "--id", "doc",
                        "--dtype", "fp32"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def qwen3_server(qwen3_cartridge):
    cfg = json.dumps({"kv_connector": "CartridgeConnector",
                      "kv_connector_extra_config": {"cartridges": [
                          {"cartridge_id": "doc", "path": qwen3_cartridge}],
                          "router": {"type": "explicit"}}})
    s = Server("--kv-transfer-config", cfg, model=QWEN3, model_name="tiny-qwen3", kv_cache="64MiB")
    yield s
    s.stop()


def test_qwen3_cartridge_serves_like_the_document_in_the_prompt(qwen3_server):
    url = qwen3_server.url
    lp = {"logprobs": True, "top_logprobs": 20}
    ref = top_logprobs(chat(url, "tiny-qwen3", [{"role": "system", "content": DOC},
                                                {"role": "user", "content": QUESTION}], **lp))
    cart = top_logprobs(chat(url, "tiny-qwen3", [{"role": "user", "content": QUESTION}],
                             kv_transfer_params={"cartridge_id": "doc"}, **lp))
    assert len(ref) == 20
    assert set(ref) == set(cart)
    diff = max(abs(ref[t] - cart[t]) for t in ref)
    print(f"qwen3 cartridge over HTTP: max|dlogprob| = {diff:.2e}")
    assert diff <= 1e-5


def test_chat_template_kwargs(qwen3_server):
    url = qwen3_server.url
    msgs = [{"role": "user", "content": "hi"}]
    r = chat(url, "tiny-qwen3", msgs, chat_template_kwargs={"enable_thinking": False})
    assert r.status_code == 200, r.text
    r = chat(url, "tiny-qwen3", msgs, chat_template_kwargs=["enable_thinking"])
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs"


@pytest.fixture(scope="module")
def mistral_server():
    s = Server(model=MISTRAL, model_name="tiny-mistral", kv_cache="64MiB")
    yield s
    s.stop()


def test_sentencepiece_model_streams_what_it_returns(mistral_server):
    url = mistral_server.url
    body = {"model": "tiny-mistral", "messages": [{"role": "user", "content": "caf\u00e9 \U0001F600 hi"}],
            "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    whole = requests.post(url + "/v1/chat/completions", json=body, timeout=600)
    assert whole.status_code == 200, whole.text
    text = whole.json()["choices"][0]["message"]["content"]
    streamed = []
    with requests.post(url + "/v1/chat/completions", json={**body, "stream": True}, stream=True,
                       timeout=600) as r:
        assert r.status_code == 200
        # The whole (short) body, split into SSE lines here.
        for line in b"".join(r.iter_content(chunk_size=None)).split(b"\n"):
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if delta:
                streamed.append(delta)
    assert "".join(streamed) == text


def test_sentencepiece_echo_decodes_the_prompt(mistral_server):
    r = requests.post(mistral_server.url + "/v1/completions",
                      json={"model": "tiny-mistral", "prompt": "The caf\u00e9 is open", "max_tokens": 1,
                            "temperature": 0, "echo": True}, timeout=600)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"].startswith("The caf\u00e9 is open")
