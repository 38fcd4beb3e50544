"""``d3llm serve`` on the shipped teacher, in a subprocess on a free loopback port, through the official ``openai``
client and raw HTTP: completions, chat, streaming, stop strings, usage, a bounded concurrent load test against
``d3llm.generate`` alone, every error case, cancellation on disconnect and the access log (faults and hostile
input: tests/test_serve_faults.py, tests/test_serve_fuzz.py)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import openai
import pytest

import d3llm
from d3llm.assets import default_model_path
from d3llm.models.prompts import encode_text
from d3llm.serve.launch import launched_server
from d3llm.tasks import load_dataset

KEY = "test-key"
MODEL = "arith-teacher"
BLOCK = 16  # the teacher's generation_config.json block_size
TIMEOUT = 60  # seconds, any single request


@pytest.fixture(scope="module")
def teacher():
    folder = default_model_path()
    return d3llm.load_model(folder), d3llm.load_tokenizer(folder)


@pytest.fixture(scope="module")
def server():
    """The teacher with its own decoding defaults (multi_block), an API key and small limits."""
    with launched_server(["--api-key", KEY, "--max-batch", "16", "--max-queue", "64",
                          "--max-body-bytes", "65536"]) as s:
        yield s


@pytest.fixture(scope="module")
def slow_server():
    """One row at a time, one waiting: vanilla decoding of 512 tokens takes seconds, long enough to disconnect
    mid-way and to fill the queue. No access log."""
    with launched_server(["--method", "vanilla", "--max-batch", "1", "--max-queue", "1", "--no-access-log"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, timeout=TIMEOUT, max_retries=0)


QUESTIONS = [load_dataset("arith:test")[i].question for i in range(8)]
SHORT = ("Tom has 31 pens. Then Tom buys 14 pens from his friend Ray. Then Tom talks for a bit with his friend Ray. "
         "Then Tom talks for a bit with his friend Ray. Then Tom talks for a bit with his friend Ray. How many pens "
         "does Tom have now?")  # one step, in the task's layout (off-layout questions get an empty answer)


def chat(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def alone(teacher, messages, max_tokens=48, **params):
    """What ``d3llm.generate`` gives for this request alone: text, token count and NFE (``max_tokens`` cut from a
    canvas of whole blocks, as the server decodes)."""
    model, tokenizer = teacher
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = encode_text(tokenizer, text)
    canvas = -(-max_tokens // BLOCK) * BLOCK
    result = d3llm.generate(model, [ids], max_new_tokens=canvas, **params)
    tokens = result.tokens[0][:max_tokens]
    reason = "length" if len(result.tokens[0]) >= max_tokens else "stop"
    return tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), int(result.nfe[0]), reason, len(ids)


# -- raw HTTP --------------------------------------------------------------------------------------------------------
def request(server, method, path, body=None, key=KEY, headers=None, raw: bytes | None = None):
    """(status, headers, parsed JSON body) of one request."""
    url = urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT)
    try:
        head = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            head["Authorization"] = f"Bearer {key}"
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=payload, headers=head)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, dict(resp.getheaders()), json.loads(data) if data else None
    finally:
        conn.close()


def assert_error(status, body, expected_status, code, param=None):
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["param"] == param, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def metrics(server, key=None) -> dict[str, float]:
    """The server's Prometheus samples by name (with labels)."""
    url = urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {})
        resp = conn.getresponse()
        text = resp.read().decode()
        status = resp.status
    finally:
        conn.close()
    assert status == 200, text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_for(predicate, timeout=TIMEOUT, what="a condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# -- the OpenAI client ------------------------------------------------------------------------------------------------
def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    status, _, body = request(server, "GET", "/health", key=None)
    assert status == 200 and body == {"status": "ok"}


def test_chat_completion_equals_generate_alone(client, teacher):
    messages = chat(QUESTIONS[0])
    reply = client.chat.completions.create(model=MODEL, messages=messages, temperature=0)
    text, n, nfe, reason, prompt = alone(teacher, messages)
    assert reply.choices[0].message.content == text and "####" in text
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].finish_reason == reason == "stop"
    usage = reply.usage.model_dump()
    assert usage["prompt_tokens"] == prompt and usage["completion_tokens"] == n
    assert usage["total_tokens"] == prompt + n and usage["nfe"] == nfe
    assert usage["tokens_per_forward"] == pytest.approx(n / nfe, abs=1e-4)


def test_completion_of_raw_text_and_of_token_ids(client, teacher):
    model, tokenizer = teacher
    prompt = tokenizer.apply_chat_template(chat(QUESTIONS[1]), tokenize=False, add_generation_prompt=True)
    ids = encode_text(tokenizer, prompt)
    ref = d3llm.generate(model, [ids])
    expected = ref.texts(tokenizer)[0]
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=48)
    reason = "stop" if len(ref.tokens[0]) < 48 else "length"  # a four-step answer fills the 48 positions
    assert reply.choices[0].text == expected and reply.choices[0].finish_reason == reason
    assert reply.usage.prompt_tokens == len(ids) and reply.usage.completion_tokens == len(ref.tokens[0])
    by_ids = client.completions.create(model=MODEL, prompt=ids)
    assert by_ids.choices[0].text == expected


def test_streamed_chat_equals_the_whole_reply(client, teacher):
    for question in QUESTIONS[2:4]:
        messages = chat(question)
        whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=48)
        chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=48,
                                                     stream=True, stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        ref_text, _, _, reason, _ = alone(teacher, messages)
        assert text == whole.choices[0].message.content == ref_text
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finals == [whole.choices[0].finish_reason] == [reason]
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
        assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_and_completion_stream(client, server):
    chunks = list(client.chat.completions.create(model=MODEL, messages=chat(QUESTIONS[6]), stream=True))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"
    pieces = list(client.completions.create(model=MODEL, prompt="Tom has 31 pens.", max_tokens=16, stream=True))
    assert pieces[-1].choices[0].finish_reason in ("stop", "length")
    # the wire format: data lines, then data: [DONE]
    url = urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({"messages": chat(SHORT), "stream": True}),
                 headers={"Authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    events = [e for e in resp.read().decode().split("\n\n") if e]
    conn.close()
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_stop_strings_cut_including_one_spanning_two_blocks(client, teacher):
    model, tokenizer = teacher
    messages = chat(QUESTIONS[0])
    full, *_ = alone(teacher, messages)
    ids = encode_text(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    tokens = d3llm.generate(model, [ids]).tokens[0]
    pieces = [tokenizer.decode(tokens[:k], skip_special_tokens=True) for k in range(len(tokens) + 1)]
    # a stop string made of the last two tokens of block 0 and the first of block 1
    spanning = pieces[BLOCK + 1][len(pieces[BLOCK - 2]):]
    assert spanning and spanning in full
    # with threshold 0 the committed prefix grows a block at a time: the stop string's text arrives in two events
    deltas = [c.choices[0].delta.content for c in client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, extra_body={"threshold": 0.0}) if c.choices]
    assert "".join(d or "" for d in deltas) == full and not any(spanning in (d or "") for d in deltas)
    for stop in ([spanning], [spanning, "####"], ["\n"], ["no such text"]):
        cut = min((full.find(s) for s in stop if s in full), default=len(full))
        for threshold in (None, 0.0):  # 0.0: one token per block and step, so the stop string arrives in pieces
            extra = {} if threshold is None else {"extra_body": {"threshold": threshold}}
            whole = client.chat.completions.create(model=MODEL, messages=messages, stop=stop, **extra)
            streamed = list(client.chat.completions.create(model=MODEL, messages=messages, stop=stop, stream=True,
                                                           **extra))
            text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
            reason = "stop"
            assert whole.choices[0].message.content == text == full[:cut], (stop, threshold)
            assert whole.choices[0].finish_reason == streamed[-1].choices[0].finish_reason == reason


def test_concurrent_streaming_clients_get_exactly_their_own_answers(server, teacher):
    """16 clients, 4 streaming requests each, prompts of three lengths and mixed max_tokens (20 is cut from a
    32-token canvas): every response equals d3llm.generate of that request alone."""
    first = QUESTIONS[0]
    first_answer = alone(teacher, chat(first))[0]
    shapes = [
        lambda q: chat(q),
        lambda q: [{"role": "user", "content": first}, {"role": "assistant", "content": first_answer},
                   {"role": "user", "content": q}],
        lambda q: chat(q.split(". Then")[0] + ". How many" + q.rsplit("How many", 1)[1]),
    ]
    jobs = []
    for c in range(16):
        for r in range(4):
            k = c * 4 + r
            messages = shapes[k % 3](QUESTIONS[k % len(QUESTIONS)])
            jobs.append((c, messages, (16, 20, 32, 48, 64)[k % 5]))
    expected = [alone(teacher, m, t) for _, m, t in jobs]
    assert len({e[4] for e in expected}) == 3  # three prompt lengths

    def one_client(c: int) -> list:
        api = openai.OpenAI(base_url=server.base_url, api_key=KEY, timeout=TIMEOUT, max_retries=0)
        out = []
        for i, (owner, messages, max_tokens) in enumerate(jobs):
            if owner != c:
                continue
            chunks = list(api.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                      temperature=0, stream=True,
                                                      stream_options={"include_usage": True}))
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            reason = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
            out.append((i, text, reason, chunks[-1].usage))
        return out

    before = metrics(server, key=KEY)
    with ThreadPoolExecutor(16) as pool:
        results = [r for rs in pool.map(one_client, range(16), timeout=240) for r in rs]
    after = metrics(server, key=KEY)
    batched = {le: after[f'd3llm_step_rows_bucket{{le="{le}"}}'] - before[f'd3llm_step_rows_bucket{{le="{le}"}}']
               for le in ("1.0", "4.0", "16.0", "+Inf")}
    print("rows per step (cumulative buckets):", batched)
    assert batched["+Inf"] > batched["4.0"]  # rows really decoded together (some steps ran more than 4 rows)
    assert sorted(i for i, *_ in results) == list(range(len(jobs)))
    for i, text, reason, usage in results:
        ref_text, n, nfe, ref_reason, prompt = expected[i]
        assert text == ref_text, (i, jobs[i][2])
        assert reason == [ref_reason]
        assert usage.prompt_tokens == prompt and usage.completion_tokens == n
        if ref_reason == "stop":  # not cut by max_tokens: the row took exactly the forwards it takes alone
            assert usage.model_extra["nfe"] == nfe


def test_per_row_parameters_and_seeded_sampling(client, teacher):
    messages = chat(QUESTIONS[4])
    base = client.chat.completions.create(model=MODEL, messages=messages)
    careful = client.chat.completions.create(model=MODEL, messages=messages, extra_body={"threshold": 0.0})
    text, n, nfe, _, _ = alone(teacher, messages, threshold=0.0)
    assert careful.choices[0].message.content == text and careful.usage.model_extra["nfe"] == nfe
    assert careful.usage.model_extra["nfe"] > base.usage.model_extra["nfe"]
    hot = [client.chat.completions.create(model=MODEL, messages=messages, temperature=1.5, seed=7)
           for _ in range(2)]
    assert hot[0].choices[0].message.content == hot[1].choices[0].message.content
    assert hot[0].choices[0].message.content == alone(teacher, messages, temperature=1.5, seed=7)[0]


# -- errors -----------------------------------------------------------------------------------------------------------
BODY = {"model": MODEL, "messages": chat(SHORT)}


@pytest.mark.parametrize("change,code,param", [
    ({"temperature": "hot"}, "invalid_parameter", "temperature"),
    ({"temperature": -1}, "invalid_parameter", "temperature"),
    ({"max_tokens": 0}, "invalid_parameter", "max_tokens"),
    ({"seed": 1.5}, "invalid_parameter", "seed"),
    ({"stop": [1, 2]}, "invalid_parameter", "stop"),
    ({"stream": "yes"}, "invalid_parameter", "stream"),
    ({"stream_options": {"include_usage": True}}, "invalid_parameter", "stream_options"),
    ({"messages": []}, "invalid_parameter", "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "invalid_parameter", "messages"),
    ({"n": 2}, "unsupported_parameter", "n"),
    ({"top_p": 0.5}, "unsupported_parameter", "top_p"),
    ({"logprobs": True}, "unsupported_parameter", "logprobs"),
    ({"block_size": 32}, "unsupported_parameter", "block_size"),
    ({"method": "vanilla"}, "unsupported_parameter", "method"),
    ({"max_new_tokens": 32}, "unknown_parameter", "max_new_tokens"),
    ({"colour": "blue"}, "unknown_parameter", "colour"),
    ({"threshold": -1.0}, "invalid_parameter", "threshold"),  # refused by the engine, for this request alone
])
def test_bad_parameters_are_400_naming_the_field(server, change, code, param):
    status, _, body = request(server, "POST", "/v1/chat/completions", {**BODY, **change})
    assert_error(status, body, 400, code, param)
    assert param in body["error"]["message"]


def test_bad_parameters_through_the_client(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=chat(SHORT), extra_body={"colour": "blue"})
    assert info.value.status_code == 400 and info.value.body["param"] == "colour"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=chat(SHORT))
    assert info.value.body["code"] == "model_not_found"
    assert client.chat.completions.create(model=MODEL, messages=chat(SHORT), n=1, top_p=1).choices


def test_malformed_json_and_non_object_bodies(server):
    for raw in (b"{not json", b"[1, 2]", "\udcff".encode("utf-8", "surrogatepass")):
        status, _, body = request(server, "POST", "/v1/completions", raw=raw)
        assert_error(status, body, 400, "invalid_json")


def test_prompt_too_long_and_max_tokens_too_large(server):
    status, _, body = request(server, "POST", "/v1/chat/completions",
                              {**BODY, "messages": chat(" ".join([SHORT] * 60))})
    assert_error(status, body, 400, "context_length_exceeded", "messages")
    assert "1024" in body["error"]["message"]
    status, _, body = request(server, "POST", "/v1/completions", {"prompt": "Tom has 31 pens.", "max_tokens": 5000})
    assert_error(status, body, 400, "context_length_exceeded", "max_tokens")
    status, _, body = request(server, "POST", "/v1/completions", {"prompt": [7] * 1020})
    assert_error(status, body, 400, "context_length_exceeded", "prompt")


def test_unknown_model_and_unknown_route(server):
    status, _, body = request(server, "POST", "/v1/chat/completions", {**BODY, "model": "nope"})
    assert_error(status, body, 404, "model_not_found", "model")
    status, _, body = request(server, "GET", "/v1/models/nope")
    assert_error(status, body, 404, "model_not_found", "model")
    status, _, body = request(server, "GET", "/v2/everything")
    assert_error(status, body, 404, "not_found")


def test_api_key_is_required_everywhere_but_health(server):
    for path, method, body in (("/v1/models", "GET", None), ("/v1/chat/completions", "POST", BODY),
                               ("/v1/completions", "POST", {"prompt": "Tom"}), ("/metrics", "GET", None)):
        for key in (None, "wrong-key"):
            status, headers, reply = request(server, method, path, body, key=key)
            assert_error(status, reply, 401, "invalid_api_key")
            assert headers.get("www-authenticate") == "Bearer"
    status, _, _ = request(server, "GET", "/health", key=None)
    assert status == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).models.list()


def test_request_bodies_are_bounded(server):
    status, _, body = request(server, "POST", "/v1/completions", {"prompt": "Tom " * 20000})
    assert_error(status, body, 413, "request_too_large")


def test_metrics_count_requests_rows_and_tokens(server):
    values = metrics(server, key=KEY)
    assert values['d3llm_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 1
    assert values['d3llm_requests_total{endpoint="/v1/models",status="401"}'] >= 1
    for name in ("d3llm_queue_depth", "d3llm_active_rows", "d3llm_engine_steps_total", "d3llm_tokens_per_forward",
                 "d3llm_generation_tokens_total", "d3llm_engine_steps_per_second",
                 "d3llm_generation_tokens_per_second", "d3llm_request_latency_seconds_count",
                 "d3llm_time_to_first_token_seconds_count", "d3llm_step_duration_seconds_count"):
        assert name in values, name
    assert values["d3llm_tokens_per_forward"] > 1  # the teacher's multi_block commits several tokens per forward
    assert values["d3llm_engine_alive"] == 1


def test_one_access_log_line_per_request_without_prompt_or_key(server, client, slow_server):
    reply = client.chat.completions.create(model=MODEL, messages=chat(SHORT), max_tokens=16)
    status, _, _ = request(server, "GET", "/v1/models", key="wrong-key")
    assert status == 401
    tokens = reply.usage.completion_tokens
    lines = wait_for(lambda: [line for line in server.stderr().splitlines() if "d3llm.serve.access" in line
                              and '"POST /v1/chat/completions" 200 ' in line], what="the access log line")
    assert any(f" 200 {tokens} tokens " in line and line.endswith(" s") for line in lines), lines
    assert '"GET /v1/models" 401 - tokens' in server.stderr()
    log = server.stderr()
    assert SHORT[:20] not in log and KEY not in log and "Bearer" not in log
    request(slow_server, "GET", "/health", key=None)
    assert "d3llm.serve.access" not in slow_server.stderr()  # --no-access-log


# -- queueing and cancellation (the slow server) --------------------------------------------------------------------
LONG = {"messages": chat(QUESTIONS[5]), "max_tokens": 512, "temperature": 0}


class OpenStream:
    """A streaming request on a raw socket, kept open until closed (as a client that goes away)."""

    def __init__(self, server, body):
        url = urlparse(server.url)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT)
        self.conn.request("POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True}))
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200

    def read_event(self) -> str:
        lines = []
        while True:
            line = self.resp.fp.readline().decode()
            if line in ("\n", ""):
                return "".join(lines)
            lines.append(line)

    def close(self):
        self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def finished(server, reason) -> float:
    return metrics(server).get(f'd3llm_requests_finished_total{{reason="{reason}"}}', 0.0)


def test_a_closed_stream_frees_its_row_within_one_step(slow_server):
    before = metrics(slow_server)
    stream = OpenStream(slow_server, LONG)
    assert '"role":"assistant"' in stream.read_event()
    assert '"content"' in stream.read_event()  # decoding: committed text arrives
    assert metrics(slow_server)["d3llm_active_rows"] == 1
    stream.close()
    wait_for(lambda: finished(slow_server, "cancelled") == before.get(
        'd3llm_requests_finished_total{reason="cancelled"}', 0) + 1, what="the cancellation")
    after = wait_for(lambda: (m := metrics(slow_server))["d3llm_active_rows"] == 0 and m, what="a free row")
    count = after["d3llm_cancel_delay_steps_count"] - before.get("d3llm_cancel_delay_steps_count", 0)
    within_one = after['d3llm_cancel_delay_steps_bucket{le="1.0"}'] - before.get(
        'd3llm_cancel_delay_steps_bucket{le="1.0"}', 0)
    assert count == 1 and within_one == 1  # it left the batch at the step after the cancellation
    steps = after["d3llm_engine_steps_total"]
    time.sleep(0.3)
    assert metrics(slow_server)["d3llm_engine_steps_total"] == steps  # nothing is decoding any more


def test_a_client_that_leaves_a_whole_request_has_its_row_cancelled(slow_server):
    before = finished(slow_server, "cancelled")
    url = urlparse(slow_server.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=TIMEOUT)
    body = json.dumps(LONG).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    wait_for(lambda: metrics(slow_server)["d3llm_active_rows"] == 1, what="the row to start")
    sock.close()
    wait_for(lambda: finished(slow_server, "cancelled") == before + 1, what="the cancellation")
    wait_for(lambda: metrics(slow_server)["d3llm_active_rows"] == 0, what="a free row")


def test_a_full_queue_is_503_with_retry_after(slow_server):
    streams = [OpenStream(slow_server, LONG)]  # decoding
    streams[0].read_event()
    streams.append(OpenStream(slow_server, LONG))  # waiting (max-batch 1, max-queue 1)
    try:
        streams[1].read_event()
        status, headers, body = request(slow_server, "POST", "/v1/chat/completions", LONG, key=None)
        assert_error(status, body, 503, "queue_full")
        assert headers.get("retry-after") == "1"
        assert metrics(slow_server)["d3llm_queue_depth"] == 1
    finally:
        for s in streams:
            s.close()
    wait_for(lambda: (m := metrics(slow_server))["d3llm_active_rows"] == 0 and m["d3llm_queue_depth"] == 0,
             what="the queue to drain")


def test_bad_launch_settings_are_one_line_errors():
    for args, words in ((["--threshold", "-1"], "threshold"), (["--max-batch", "0"], "--max-batch"),
                        (["--max-queue", "-1"], "--max-queue must be 0 or more"),
                        (["--port", "99999"], "--port must be a port number from 0 to 65535"),
                        (["--api-key", ""], "--api-key is empty"), (["--api-key", "  "], "--api-key is empty"),
                        (["--body-timeout", "0"], "--body-timeout must be a positive number of seconds"),
                        (["--env-key", ""], "D3LLM_API_KEY is set but empty")):
        env = dict(os.environ)
        if args[0] == "--env-key":
            env["D3LLM_API_KEY"], args = args[1], []
        done = subprocess.run([sys.executable, "-m", "d3llm.cli.main", "serve", "--port", "0", *args],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("d3llm serve: error:") and words in lines[0], done.stderr


def test_a_suffix_cached_server_answers_each_request_as_generate_alone(teacher):
    """``d3llm serve --suffix-cache``: 8 concurrent streaming requests (two prompt shapes, three max_tokens) decoded
    together equal ``d3llm.generate`` of each alone with the same cache, and the usage counts the same forwards."""
    jobs = [(chat(QUESTIONS[k]) if k % 2 else chat(SHORT), (20, 48, 64)[k % 3]) for k in range(8)]
    params = dict(suffix_cache=True, suffix_refresh_interval=2)
    expected = [alone(teacher, m, t, **params) for m, t in jobs]
    with launched_server(["--suffix-cache", "--suffix-refresh-interval", "2", "--max-batch", "8"]) as s:
        api = openai.OpenAI(base_url=s.base_url, api_key="unused", timeout=TIMEOUT, max_retries=0)

        def one(job):
            messages, max_tokens = job
            chunks = list(api.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                      temperature=0, stream=True,
                                                      stream_options={"include_usage": True}))
            return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices), chunks[-1].usage

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, jobs, timeout=120))
    for (text, usage), (ref_text, n, nfe, reason, prompt) in zip(results, expected):
        assert text == ref_text
        assert usage.completion_tokens == n
        if reason == "stop":
            assert usage.model_extra["nfe"] == nfe
