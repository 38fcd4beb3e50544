"""A property-based fuzz test of the HTTP API (hypothesis): generated bodies for ``/v1/chat/completions`` and
``/v1/completions``, valid, near-valid and hostile (wrong types, huge and tiny numbers, deep nesting, odd unicode,
unknown fields, raw bytes). Every answer must be a 2xx or an OpenAI-shaped 4xx, never a 5xx, a hang or an error
event inside a stream, and a fixed temperature-0 request must answer the same before and after.

Bounded: ``FUZZ_EXAMPLES`` bodies (a few hundred), each request with a timeout, short generations."""

from __future__ import annotations

import http.client
import json
import os
from urllib.parse import urlparse

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from d3llm.serve.launch import launched_server

FUZZ_EXAMPLES = int(os.environ.get("D3LLM_FUZZ_EXAMPLES", "300"))
TIMEOUT = float(os.environ.get("D3LLM_FUZZ_TIMEOUT", "60"))
MODEL = "arith-teacher"
WORDS = ["Tom", "has", "31", "pens.", "Then", "buys", "14", "from", "his", "friend", "Ray.", "How", "many", "does",
         "have", "now?"]


# -- strategies ------------------------------------------------------------------------------------------------------
EXTREMES = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -1, -(2**63) - 1, 10**30, 10**400, -(10**400), 0, 1, 0.0, -0.0,
            1e-300, 5e-324, 1e308, 1.5, 2.0, 100.0, 101.0, 1e9, float("nan"), float("inf"), float("-inf")]


def huge_integers():
    return st.one_of(st.integers(min_value=-(2**70), max_value=2**70),
                     st.sampled_from([e for e in EXTREMES if isinstance(e, int)]))


odd_text = st.one_of(
    st.text(max_size=40),  # any code point hypothesis draws (lone surrogates included)
    st.sampled_from(["", " ", "\x00", "\ud800", "\udfff", "a\ud83d", "😀" * 20, "\u202e", "\n" * 50,
                     "####", "<|mdm_mask|>", "<|endoftext|>", "x" * 3000]),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=30).map(" ".join),
)
numbers = st.one_of(st.sampled_from(EXTREMES), huge_integers(), st.floats(allow_nan=True, allow_infinity=True))
json_scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(odd_text, inner, max_size=4)),
                           max_leaves=12)

good_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer"]),
                                      "content": st.lists(st.sampled_from(WORDS), min_size=1,
                                                          max_size=12).map(" ".join)})
messages = st.one_of(
    st.lists(good_message, min_size=1, max_size=3).map(lambda m: m[:-1] + [{**m[-1], "role": "user"}]),
    st.lists(st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "robot"]), json_scalars),
                                    "content": st.one_of(odd_text, json_values)}), max_size=3),
    json_values,
)
prompts = st.one_of(st.lists(st.sampled_from(WORDS), min_size=1, max_size=20).map(" ".join), odd_text,
                    st.lists(st.one_of(st.integers(0, 200), huge_integers()), max_size=20), json_values)

# valid values of each field, and anything at all
VALID = {
    "max_tokens": st.integers(1, 48), "temperature": st.sampled_from([0, 0.0, 0.7, 1.0]),
    "seed": st.integers(0, 2**64 - 1), "stop": st.lists(st.sampled_from(["\n", "####", " pens"]), max_size=3),
    "stream": st.booleans(), "threshold": st.sampled_from([0.0, 0.1, 0.5, 3.0]), "n": st.just(1),
    "top_p": st.just(1), "user": odd_text, "model": st.just(MODEL),
}
ANYTHING = {
    "max_tokens": numbers, "temperature": numbers, "seed": numbers, "stop": odd_text, "stream": json_values,
    "stream_options": json_values, "threshold": numbers, "steps": st.one_of(st.integers(1, 64), numbers),
    "n": json_values, "top_p": numbers, "logprobs": json_values, "metadata": json_values, "model": odd_text,
    "block_size": json_values, "method": json_values, "max_completion_tokens": numbers,
}


def fields(table: dict, max_size: int, min_size: int = 0):
    """Bodies' fields: some names of ``table``, each with a value from its strategy."""
    return st.dictionaries(st.sampled_from(sorted(table)), st.none(), min_size=min_size, max_size=max_size).flatmap(
        lambda keys: st.fixed_dictionaries({k: table[k] for k in keys}))


def with_stream_options(body: dict) -> dict:
    return {**body, "stream_options": {"include_usage": True}} if body.get("stream") else body


def bodies(kind: str):
    """Valid bodies, near-valid ones (one field anything) and hostile ones (several fields anything, unknown
    fields)."""
    good = st.fixed_dictionaries({"messages": st.lists(good_message, min_size=1, max_size=3).map(
        lambda m: m[:-1] + [{**m[-1], "role": "user"}])} if kind == "chat" else {
        "prompt": st.lists(st.sampled_from(WORDS), min_size=1, max_size=20).map(" ".join)},
        optional={"stream": st.booleans()})
    valid = st.tuples(good, fields(VALID, 6)).map(lambda p: with_stream_options({**p[0], **p[1]}))
    near = st.tuples(valid, fields(ANYTHING, 2, min_size=1)).map(lambda p: {**p[0], **p[1]})
    own = {"messages": messages} if kind == "chat" else {"prompt": prompts}
    hostile = st.tuples(st.fixed_dictionaries({}, optional=own), fields(ANYTHING, 5),
                        st.dictionaries(odd_text, json_values, max_size=2)).map(lambda p: {**p[0], **p[1], **p[2]})
    return st.one_of(valid, near, hostile)


def to_bytes(body) -> bytes:
    """JSON the way a hostile client writes it: non-finite floats as NaN/Infinity literals, lone surrogates as
    escapes, integers of any length."""
    return json.dumps(body, allow_nan=True).encode()


hostile_raw = st.one_of(
    st.binary(max_size=200),
    st.integers(1, 20000).map(lambda d: b'{"messages": ' + b"[" * d + b"]" * d + b"}"),
    st.integers(1, 6000).map(lambda n: b'{"prompt": "Tom", "max_tokens": 1' + b"0" * n + b"}"),
    st.integers(300, 5000).map(lambda n: b'{"prompt": "Tom", "temperature": 1' + b"0" * n + b"}"),
    st.sampled_from([b'{"prompt": "Tom", "threshold": NaN}', b'{"prompt": "Tom", "seed": -Infinity}',
                     b'{"prompt": "Tom", "temperature": 1e999}', b'{"prompt": "\\ud800"}', b"[]", b"null",
                     b'{"prompt": "Tom"', b'{"prompt": "Tom", "prompt": [1, 2]}', b"\xff\xfe{}",
                     b'\xef\xbb\xbf{"prompt": "Tom"}', b'{"messages": [{"role": "user", "content": "\\udfff"}]}']),
)
requests = st.one_of(
    st.tuples(st.just("chat"), bodies("chat").map(to_bytes)),
    st.tuples(st.just("completion"), bodies("completion").map(to_bytes)),
    st.tuples(st.sampled_from(["chat", "completion"]), hostile_raw),
)
PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


# -- the server ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    with launched_server(["--max-batch", "8", "--no-access-log"]) as s:
        yield s


def post(server, path: str, raw: bytes) -> tuple[int, bytes, str]:
    url = urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("content-type") or ""
    finally:
        conn.close()


def check_answer(status: int, data: bytes, content_type: str) -> None:
    """A 2xx (a JSON body, or a stream without error events) or an OpenAI-shaped 4xx."""
    assert status < 500, (status, data[:500])
    if content_type.startswith("text/event-stream"):
        events = [e for e in data.decode().split("\n\n") if e]
        assert events and events[-1] == "data: [DONE]", data[-300:]
        for event in events[:-1]:
            chunk = json.loads(event.removeprefix("data: "))
            assert "error" not in chunk, chunk
        return
    body = json.loads(data)
    if status >= 400:
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    else:
        assert body["choices"], body


FIXED = json.dumps({"messages": [{"role": "user", "content": "Tom has 31 pens. Then Tom buys 14 pens from his "
                                  "friend Ray. How many pens does Tom have now?"}], "temperature": 0}).encode()


def test_fuzzed_bodies_never_get_a_5xx_or_a_hang(server):
    status, before, _ = post(server, PATHS["chat"], FIXED)
    assert status == 200
    tried = []

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(requests)
    def one(request):
        kind, raw = request
        tried.append(kind)
        check_answer(*post(server, PATHS[kind], raw))

    one()
    print(f"fuzz: {len(tried)} bodies")
    assert len(tried) >= min(FUZZ_EXAMPLES, 100)
    status, after, _ = post(server, PATHS["chat"], FIXED)
    assert status == 200
    assert json.loads(after)["choices"][0]["message"]["content"] == json.loads(before)["choices"][0]["message"][
        "content"]
    url = urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()
