"""The OpenAI-compatible API against the real server on SmolLM2 (CPU backend),
with the official `openai` client and raw HTTP."""
import concurrent.futures as cf
import json

import pytest
import requests

from conftest import MODEL_NAME, Server

QUESTIONS = [
    "What is the capital of France?", "Name a primary colour.", "What is two plus two?",
    "Say hello in Spanish.", "What do bees make?", "Name a planet.", "What is ice made of?",
    "What colour is the sky?", "Name a fruit.", "What is the opposite of hot?",
    "How many legs does a spider have?", "What animal says moo?", "Name a day of the week.",
    "What is the largest ocean?", "What do plants need to grow?", "Name a musical instrument.",
]


def chat(client, q, max_tokens=24, **kw):
    r = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": q}],
                                       max_tokens=max_tokens, temperature=0, **kw)
    return r


def test_models_health_version(server, client):
    assert requests.get(server.url + "/health").status_code == 200
    assert "version" in requests.get(server.url + "/version").json()
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]


def test_completion_basic(client):
    r = client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=8,
                                  temperature=0)
    assert r.object == "text_completion"
    assert "Paris" in r.choices[0].text
    assert r.usage.prompt_tokens == 5
    assert 1 <= r.usage.completion_tokens <= 8
    assert r.choices[0].finish_reason in ("length", "stop")


def test_completion_prompt_forms_and_n(client):
    r = client.completions.create(model=MODEL_NAME, prompt=["Hello", "The sky is"], max_tokens=4,
                                  temperature=0)
    assert len(r.choices) == 2
    ids = client.completions.create(model=MODEL_NAME, prompt=[504, 3575, 282, 4649, 314],
                                    max_tokens=4, temperature=0)
    text = client.completions.create(model=MODEL_NAME, prompt="The capital of France is",
                                     max_tokens=4, temperature=0)
    assert ids.choices[0].text == text.choices[0].text
    r = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=6,
                                  temperature=1.0, n=3, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2]
    again = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=6,
                                      temperature=1.0, n=3, seed=7)
    assert [c.text for c in r.choices] == [c.text for c in again.choices]


def test_chat_basic(client):
    r = chat(client, "What is the capital of France?")
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert "Paris" in r.choices[0].message.content


def test_stream_equals_non_stream(client):
    for q in QUESTIONS[:3]:
        full = chat(client, q).choices[0].message.content
        parts, usage, finish = [], None, None
        for chunk in client.chat.completions.create(
                model=MODEL_NAME, messages=[{"role": "user", "content": q}], max_tokens=24,
                temperature=0, stream=True, stream_options={"include_usage": True}):
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.content:
                    parts.append(c.delta.content)
                if c.finish_reason:
                    finish = c.finish_reason
        assert "".join(parts) == full
        assert usage is not None and usage.completion_tokens >= 1
        assert finish in ("stop", "length")
    full = client.completions.create(model=MODEL_NAME, prompt="Water boils at", max_tokens=16,
                                     temperature=0).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL_NAME, prompt="Water boils at", max_tokens=16, temperature=0, stream=True)
        if c.choices)
    assert streamed == full


def test_sixteen_concurrent_equal_sequential(client):
    sequential = [chat(client, q).choices[0].message.content for q in QUESTIONS]
    with cf.ThreadPoolExecutor(16) as ex:
        concurrent = list(ex.map(lambda q: chat(client, q).choices[0].message.content, QUESTIONS))
    assert concurrent == sequential


def test_fifty_sequential_and_alive(server, client):
    for i in range(50):
        r = client.completions.create(model=MODEL_NAME, prompt=f"Count: {i},", max_tokens=3,
                                      temperature=0)
        assert r.choices[0].finish_reason == "length"
    assert server.alive()
    assert requests.get(server.url + "/health").status_code == 200


def test_prefix_cache_hit_in_metrics(server, client):
    long_prompt = "Here is a long shared preamble about the weather and the sea. " * 12
    before = server.metrics()
    client.completions.create(model=MODEL_NAME, prompt=long_prompt + "First:", max_tokens=2, temperature=0)
    client.completions.create(model=MODEL_NAME, prompt=long_prompt + "Second:", max_tokens=2, temperature=0)
    after = server.metrics()
    assert after["cartserve:prefix_cache_hits"] - before["cartserve:prefix_cache_hits"] >= 64
    for key in ("cartserve:num_requests_running", "cartserve:kv_cache_usage_perc",
                "cartserve:time_to_first_token_seconds_count",
                "cartserve:inter_token_latency_seconds_count", "cartserve:prompt_tokens_total",
                "cartserve:generation_tokens_total"):
        assert key in after, key


def test_logprobs(client):
    r = client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=3,
                                  temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 3 and len(lp.token_logprobs) == 3
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(len(t) == 2 for t in lp.top_logprobs)
    c = chat(client, "Name a colour.", max_tokens=3, logprobs=True, top_logprobs=3)
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 for t in content)


def test_echo_with_zero_max_tokens(server):
    r = requests.post(server.url + "/v1/completions", json={
        "model": MODEL_NAME, "prompt": "Echo me back", "max_tokens": 0, "echo": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["text"] == "Echo me back"
    assert body["usage"]["completion_tokens"] == 0
    r = requests.post(server.url + "/v1/completions", json={
        "model": MODEL_NAME, "prompt": "Echo me back", "max_tokens": 0, "echo": True, "logprobs": 1})
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    assert r.json()["choices"][0]["text"] == "Echo me back"
    assert lp["token_logprobs"][0] is None and all(v <= 0 for v in lp["token_logprobs"][1:])


@pytest.mark.parametrize("body,field", [
    ({"model": MODEL_NAME, "prompt": ""}, "prompt"),
    ({"model": MODEL_NAME, "prompt": "hi", "max_tokens": 100000}, "max_tokens"),
    ({"model": MODEL_NAME, "prompt": "hi", "temperature": -1}, "temperature"),
    ({"model": MODEL_NAME, "prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
    ({"model": MODEL_NAME, "prompt": 42}, "prompt"),
    ({"model": MODEL_NAME, "prompt": "hi", "stream": "yes"}, "stream"),
])
def test_bad_requests_are_400(server, body, field):
    r = requests.post(server.url + "/v1/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["message"] and err["param"] == field


def test_unknown_model_is_404_as_in_openai_and_vllm(server):
    r = requests.post(server.url + "/v1/completions", json={"model": "no-such-model", "prompt": "hi"})
    assert r.status_code == 404, r.text
    assert r.json()["error"]["param"] == "model" and r.json()["error"]["code"] == "model_not_found"


def test_bad_requests_raw_and_chat(server, client):
    r = requests.post(server.url + "/v1/completions", data="{not json",
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = requests.post(server.url + "/v1/chat/completions", json={"model": MODEL_NAME, "messages": []})
    assert r.status_code == 400
    r = requests.post(server.url + "/v1/chat/completions",
                      json={"model": MODEL_NAME, "messages": [{"role": "user", "content": 3}]})
    assert r.status_code == 400
    import openai
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL_NAME, prompt="", max_tokens=3)
    # Still serving.
    assert "Paris" in chat(client, "What is the capital of France?").choices[0].message.content


def test_api_key_enforced():
    s = Server("--api-key", "sekret")
    try:
        r = requests.post(s.url + "/v1/completions", json={"model": MODEL_NAME, "prompt": "hi", "max_tokens": 1})
        assert r.status_code == 401
        r = requests.get(s.url + "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = requests.get(s.url + "/v1/models", headers={"Authorization": "Bearer sekret"})
        assert r.status_code == 200
        assert requests.get(s.url + "/health").status_code == 200
    finally:
        s.stop()


def test_client_disconnect_cancels(server):
    # Start a long streaming request, read one chunk, drop the connection:
    # the request must leave the running set soon after (normally within a
    # second; the bound is for a 2-core CI machine under parallel tests).
    # On failure the gauges over time and the server's log tail say whether
    # it kept generating (the disconnect went unnoticed), stalled, or another
    # request was running before this one started.
    import time
    keys = ("cartserve:num_requests_running", "cartserve:generation_tokens_total")
    seen = [("before", *(server.metrics().get(k) for k in keys))]
    with requests.post(server.url + "/v1/completions", stream=True, json={
            "model": MODEL_NAME, "prompt": "Write a long story:", "max_tokens": 1500,
            "temperature": 0, "ignore_eos": True, "stream": True}) as r:
        for line in r.iter_lines():
            if line:
                break
    t0 = time.time()
    while time.time() < t0 + 60:
        m = server.metrics()
        seen.append((round(time.time() - t0, 1), *(m.get(k) for k in keys)))
        if m["cartserve:num_requests_running"] == 0:
            break
        time.sleep(0.5)
    assert server.metrics()["cartserve:num_requests_running"] == 0, (
        f"(t, running, generated tokens): {seen[:3]} ... {seen[-3:]}\nserver log tail:\n"
        + "".join(server.log[-30:]))
    assert server.metrics().get('cartserve:request_success_total{finished_reason="abort"}', 0) >= 1
