"""One bad request never takes the server down (issue 19): the reproductions of a fuzzing pass (each used to kill
the engine thread, hang, or answer 500), a row that raises mid-decode, an engine thread that dies, and the server's
edges (body deadline, HEAD /health, empty API key). In-process servers on loopback (tests reach into their
engines)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urlparse

import numpy as np
import openai
import pytest

import d3llm
from d3llm.assets import default_model_path
from d3llm.decoding.engine import Engine
from d3llm.models.prompts import encode_text
from d3llm.serve import worker as worker_module
from d3llm.serve.app import ServeConfig, Server
from d3llm.serve.launch import served_in_thread
from test_serve import (BODY, MODEL, QUESTIONS, SHORT, TIMEOUT, alone, assert_error, chat, metrics, request,
                        wait_for)


@pytest.fixture(scope="module")
def teacher():
    folder = default_model_path()
    return d3llm.load_model(folder), d3llm.load_tokenizer(folder)


@contextmanager
def local_server(method: str | None = None, max_batch: int = 16, **config):
    """The shipped teacher served from this process (its own model copy, so a test may patch it)."""
    folder = default_model_path()
    engine = Engine(d3llm.load_model(folder), method, max_batch=max_batch, isolate_faults=True)
    server = Server(engine, d3llm.load_tokenizer(folder), ServeConfig(model_name=MODEL, **config))
    with served_in_thread(server) as address:
        address.server = server
        yield address


@pytest.fixture(scope="module")
def servers():
    """One in-process server per decoding method the reproductions need (started on first use)."""
    started, stack = {}, []

    def get(method: str | None):
        if method not in started:
            context = local_server(method)
            started[method] = context.__enter__()
            stack.append(context)
        return started[method]

    yield get
    for context in reversed(stack):
        context.__exit__(None, None, None)


def raw_body(fields: str, messages: str | None = None) -> bytes:
    """A chat body with extra raw JSON ``fields`` (text that json.dumps could not write, e.g. huge literals)."""
    messages = messages or json.dumps(chat(SHORT))
    return ('{"model": "%s", "messages": %s%s}' % (MODEL, messages, ", " + fields if fields else "")).encode()


NESTED = "[" * 5000 + "]" * 5000
# (method the server runs, endpoint, raw body, expected code, expected param): each answered 500, 200 or not at all
# (the engine thread died) on eb2fbdb
REPRODUCTIONS = [
    (None, "chat", raw_body('"seed": 18446744073709551616'), "invalid_parameter", "seed"),
    (None, "chat", raw_body('"seed": -9223372036854775809'), "invalid_parameter", "seed"),
    (None, "chat", raw_body('"threshold": 1' + "0" * 400), "invalid_parameter", "threshold"),
    (None, "chat", raw_body('"temperature": 1' + "0" * 400), "invalid_parameter", "temperature"),
    (None, "chat", raw_body('"max_tokens": 1' + "0" * 5000), "invalid_parameter", "max_tokens"),
    (None, "chat", raw_body('"steps": "x"'), "unsupported_parameter", "steps"),
    (None, "chat", raw_body('"steps": 64'), "unsupported_parameter", "steps"),
    (None, "chat", raw_body('"metadata": ' + NESTED), "invalid_json", None),
    (None, "chat", raw_body("", '[{"role": "user", "content": "Tom \\ud800 has 3 pens"}]'), "invalid_parameter",
     "messages"),
    (None, "chat", raw_body("").replace(b'"model": "arith-teacher"', b'"model": "\\udfff"'), "invalid_parameter",
     "model"),
    (None, "completion", b'{"prompt": "Tom has \\ud800 pens", "max_tokens": 16}', "invalid_parameter", "prompt"),
    ("fast_dllm", "chat", raw_body('"steps": 9223372036854775808'), "invalid_parameter", "steps"),
    ("fast_dllm", "chat", raw_body('"steps": 1000000000'), "invalid_parameter", "steps"),
    ("vanilla", "chat", raw_body('"steps": 1000000000'), "invalid_parameter", "steps"),
    ("block_entropy", "chat", raw_body('"steps": 1000000000'), "invalid_parameter", "steps"),
]
PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


@pytest.mark.parametrize("method,kind,body,code,param", REPRODUCTIONS,
                         ids=[f"{m or 'default'}-{p}-{i}" for i, (m, _, _, _, p) in enumerate(REPRODUCTIONS)])
def test_each_reproduction_is_a_4xx_naming_the_field(servers, method, kind, body, code, param):
    server = servers(method)
    status, _, reply = request(server, "POST", PATHS[kind], key=None, raw=body)
    assert_error(status, reply, 400, code, param)
    if param is not None:
        assert param in reply["error"]["message"]
    status, _, health = request(server, "GET", "/health", key=None)
    assert status == 200 and health == {"status": "ok"}


def test_after_every_bad_request_the_server_answers_as_a_fresh_one(servers, teacher):
    server = servers(None)
    for _, kind, body, _, _ in REPRODUCTIONS:
        request(server, "POST", PATHS[kind], key=None, raw=body)
    assert request(server, "GET", "/health", key=None)[0] == 200
    assert server.server.worker.restarts == 0 and server.server.worker.alive
    messages = chat(QUESTIONS[3])
    reply = openai.OpenAI(base_url=server.base_url, api_key="none", timeout=TIMEOUT, max_retries=0
                          ).chat.completions.create(model=MODEL, messages=messages, temperature=0)
    assert reply.choices[0].message.content == alone(teacher, messages)[0]


def test_steps_the_method_does_not_use_names_its_parameters(servers):
    status, _, reply = request(servers(None), "POST", "/v1/chat/completions", {**BODY, "steps": 8}, key=None)
    assert_error(status, reply, 400, "unsupported_parameter", "steps")
    message = reply["error"]["message"]
    assert "multi_block" in message and "threshold" in message and "temperature" in message


# -- a row that raises mid-decode --------------------------------------------------------------------------------------
def prompt_ids(teacher, messages) -> list[int]:
    tokenizer = teacher[1]
    return encode_text(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_that_raises_mid_decode_fails_alone(monkeypatch, teacher, stream):
    """Four requests join one batch; the decoder raises for one of them at its third step. That request alone gets
    an error (a 500, or an error event in its stream), the three others get exactly their tokens alone, and the
    server goes on serving."""
    victim = chat("Ann has 40 coins. Then Ann wins 12 coins from her friend Joe. Then Ann sells 23 coins to her friend "
                  "Joe. Then Ann reads for a bit with her friend Joe. Then Ann reads for a bit with her friend Joe. "
                  "How many coins does Ann have now?")
    others = [chat(q) for q in QUESTIONS[:3]]
    victim_ids = np.array(prompt_ids(teacher, victim))
    with local_server() as server:
        engine = server.server.worker.engine
        original_commit, original_step = engine.method.commit, engine.step

        def commit(canvas, state, logits, plan):
            for request_, nfe in zip(engine.rows.requests, engine.rows.nfe):
                if nfe >= 2 and np.array_equal(request_.prompt, victim_ids):
                    raise RuntimeError("injected decoder fault")
            return original_commit(canvas, state, logits, plan)

        def step():  # the first step waits for all four requests (and does nothing), so that they join together
            wait_for(lambda: server.server.worker.in_flight == 4, what="the four requests")
            monkeypatch.setattr(engine, "step", original_step)
            return []

        monkeypatch.setattr(engine.method, "commit", commit)
        monkeypatch.setattr(engine, "step", step)
        api = openai.OpenAI(base_url=server.base_url, api_key="none", timeout=TIMEOUT, max_retries=0)

        def ask(messages):
            try:
                if not stream:
                    return api.chat.completions.create(model=MODEL, messages=messages,
                                                       temperature=0).choices[0].message.content
                chunks = api.chat.completions.create(model=MODEL, messages=messages, temperature=0, stream=True)
                return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            except openai.APIError as exc:
                return exc

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, [others[0], victim, others[1], others[2]], timeout=120))
        failed = answers.pop(1)
        assert isinstance(failed, openai.APIError) and "injected decoder fault" in str(failed)
        if not stream:
            assert failed.status_code == 500 and failed.body["code"] == "internal_error"
        for messages, answer in zip(others, answers):
            assert answer == alone(teacher, messages)[0]
        assert engine.stats.replays >= 1
        values = metrics(server)
        assert values['d3llm_requests_finished_total{reason="error"}'] == 1
        assert values["d3llm_engine_alive"] == 1 and values["d3llm_engine_restarts_total"] == 0
        status, _, health = request(server, "GET", "/health", key=None)
        assert status == 200 and health == {"status": "ok"}
        assert api.chat.completions.create(model=MODEL, messages=others[0], temperature=0
                                           ).choices[0].message.content == answers[0]


# -- the engine thread dying ---------------------------------------------------------------------------------------------
def test_a_dead_engine_thread_is_restarted_and_then_given_up(monkeypatch, teacher):
    broken = threading.Event()
    original = Engine.step

    def step(self):
        if broken.is_set():
            raise RuntimeError("injected device failure")
        return original(self)

    monkeypatch.setattr(Engine, "step", step)
    with local_server() as server:
        worker = server.server.worker
        first = worker.engine
        status, _, body = request(server, "POST", "/v1/chat/completions", BODY, key=None)
        assert status == 200 and body["choices"][0]["message"]["content"]
        broken.set()
        status, _, body = request(server, "POST", "/v1/chat/completions", BODY, key=None)
        assert_error(status, body, 500, "engine_error")
        assert "injected device failure" in body["error"]["message"]
        wait_for(lambda: worker.restarts == 1, what="the restart")
        status, _, health = request(server, "GET", "/health", key=None)
        assert status == 200 and health["status"] == "ok" and health["engine_restarts"] == 1
        assert "RuntimeError: injected device failure" in health["last_engine_failure"]
        values = metrics(server)
        assert values["d3llm_engine_restarts_total"] == 1 and values["d3llm_engine_alive"] == 1
        assert worker.engine is not first and worker.engine.params.as_dict() == first.params.as_dict()
        broken.clear()
        messages = chat(QUESTIONS[2])
        status, _, body = request(server, "POST", "/v1/chat/completions", {"messages": messages, "temperature": 0},
                                  key=None)
        assert status == 200 and body["choices"][0]["message"]["content"] == alone(teacher, messages)[0]
        # an engine that dies at every step: after MAX_RESTARTS restarts within the window the worker gives up
        broken.set()
        answers = [request(server, "POST", "/v1/chat/completions", BODY, key=None)[0]
                   for _ in range(worker_module.MAX_RESTARTS + 1)]
        assert answers[: worker_module.MAX_RESTARTS] == [500] * worker_module.MAX_RESTARTS
        wait_for(lambda: not worker.alive, what="the worker to give up")
        status, _, body = request(server, "GET", "/health", key=None)
        assert_error(status, body, 503, "engine_dead")
        status, _, body = request(server, "POST", "/v1/chat/completions", BODY, key=None)
        assert_error(status, body, 503, "engine_dead")
        assert metrics(server)["d3llm_engine_alive"] == 0


# -- the server's edges ----------------------------------------------------------------------------------------------------
def test_a_body_that_does_not_arrive_in_time_is_408():
    with local_server(body_timeout=0.5) as server:
        url = urlparse(server.url)
        sock = socket.create_connection((url.hostname, url.port), timeout=TIMEOUT)
        try:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 200\r\n\r\n{\"messages\": ")  # and then nothing
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        finally:
            sock.close()
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), reply
        assert json.loads(payload)["error"]["code"] == "request_timeout"
        status, _, body = request(server, "POST", "/v1/chat/completions", BODY, key=None)
        assert status == 200 and body["choices"][0]["message"]["content"]


def test_head_on_health():
    with local_server() as server:
        url = urlparse(server.url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT)
        try:
            conn.request("HEAD", "/health")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == b""
        finally:
            conn.close()


def test_an_empty_api_key_is_refused():
    for key in ("", "   "):
        with pytest.raises(ValueError, match="the API key is empty"):
            ServeConfig(model_name=MODEL, api_key=key)
