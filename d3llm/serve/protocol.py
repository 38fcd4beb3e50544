"""The OpenAI wire format: request validation, response and stream-chunk shapes, and the error object.

Everything a request asks for is either honoured or refused with a 400 that names the field; nothing is silently
ignored. The fields:

* honoured: ``model``, ``max_tokens`` (chat also ``max_completion_tokens``), ``temperature``, ``seed``, ``stop``
  (a string or a list of strings), ``stream``, ``stream_options.include_usage``; ``messages`` (chat, rendered with
  the model's chat template) or ``prompt`` (completions: a string or token ids, one prompt per request);
* metadata that changes nothing: ``user``, ``metadata``;
* OpenAI options this server cannot honour, accepted only at their neutral value (what the client libraries send
  when they send them at all): ``n=1``, ``top_p=1``, ``presence_penalty=0``, ``frequency_penalty=0``, ``logprobs``
  off, ``echo=false``, no ``logit_bias``, ``suffix``, ``tools``, ... anything else is a 400 ``unsupported_parameter``;
* the engine's per-row decoder parameters (:attr:`d3llm.Engine.per_row_params`, e.g. ``threshold``, ``steps``) as
  extra body fields; the engine validates their values. The parameters every row shares (``block_size``,
  ``cache``, the method itself) are fixed when the server starts: asking for them is a 400;
* any other field is a 400 ``unknown_parameter``.

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}`` (as vLLM does).

Bodies are bounded before and while they are parsed (:func:`parse_json`): at most :data:`MAX_JSON_DEPTH` levels of
nesting (checked on the raw bytes, before the recursive parser runs), integer literals of at most
:data:`MAX_INT_DIGITS` digits and floats within the float range (a longer or larger number becomes an
:class:`OutOfRange` value, which every numeric field refuses with a 400 naming it), no ``NaN``/``Infinity``
literals, and no lone UTF-16 surrogate in any string. The value ranges themselves (``seed`` from 0 to 2**64 - 1,
``temperature`` 0 or from 1e-5 to 100, ``steps`` at most the canvas, finite thresholds, ...) are the engine's
(:mod:`d3llm.decoding.params`), the one validation layer shared with ``d3llm.generate``.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
MAX_JSON_DEPTH = 64  # nesting levels of a request body
MAX_INT_DIGITS = 20  # digits of an integer literal (2**64 - 1, the largest seed, has 20)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          408: "invalid_request_error", 413: "invalid_request_error", 500: "server_error",
          503: "service_unavailable_error"}


class APIError(Exception):
    """An error answered in OpenAI's error shape (``status`` is the HTTP status)."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_parameter") -> APIError:
    return APIError(400, message, code=code, param=param)


# OpenAI options with no counterpart here: accepted only at these neutral values (None, i.e. JSON null, always is)
NEUTRAL = {
    "n": (1,), "best_of": (1,), "top_p": (1, 1.0), "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0),
    "logprobs": (False,), "top_logprobs": (0,), "echo": (False,), "logit_bias": ({},), "suffix": ("",),
    "tools": ([],), "tool_choice": ("none",), "functions": ([],), "function_call": ("none",),
    "parallel_tool_calls": (True, False), "response_format": ({"type": "text"},), "store": (False,),
    "service_tier": ("auto", "default"), "modalities": (["text"],),
}
METADATA = ("user", "metadata")
CHAT_FIELDS = ("messages", "max_completion_tokens")
COMPLETION_FIELDS = ("prompt",)
COMMON_FIELDS = ("model", "max_tokens", "temperature", "seed", "stop", "stream", "stream_options")
MESSAGE_KEYS = ("role", "content", "name")
ROLES = ("system", "developer", "user", "assistant")


@dataclass
class DecodeRequest:
    """What both endpoints ask of the engine, validated.

    Attributes:
        model: the model name the client asked for (None: not given).
        max_tokens: the most tokens to return (None: the server's default).
        temperature, seed: sampling (None: the server's default temperature; unseeded).
        stop: stop strings.
        stream, include_usage: server-sent events; a final chunk with ``usage``.
        engine_params: per-row decoder parameters given as extra fields (engine names).
        prompt: completions: the prompt text, or token ids.
        messages: chat: the conversation (``role``, ``content`` as text).
    """

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    engine_params: dict[str, Any] = field(default_factory=dict)
    prompt: str | list[int] | None = None
    messages: list[dict[str, str]] | None = None


@dataclass
class EngineFields:
    """Which extra fields the engine takes per request, and which it fixes for every row (with their values)."""

    per_row: tuple[str, ...]
    shared: dict[str, Any]
    method: str
    # parameters of the other decoding methods (asking for one is a 400 that names this method's own)
    foreign: frozenset[str] = frozenset()
    # per-row engine parameters a request sets through an OpenAI field instead
    openai_names: dict[str, str] = field(default_factory=lambda: {"max_new_tokens": "max_tokens",
                                                                  "temperature": "temperature"})


class OutOfRange:
    """A JSON number no field takes: an integer literal longer than :data:`MAX_INT_DIGITS` digits, or a float
    beyond the float range. Kept as its literal (never converted), so that the field it was sent in is named."""

    def __init__(self, literal: str) -> None:
        self.literal = literal

    def __repr__(self) -> str:
        head = self.literal if len(self.literal) <= 24 else self.literal[:20] + "..."
        return f"{head} (a number of {len(self.literal)} characters, beyond range)"


class _NonJSONConstant(ValueError):
    pass


def _parse_int(literal: str) -> int | OutOfRange:
    return OutOfRange(literal) if len(literal.lstrip("-")) > MAX_INT_DIGITS else int(literal)


def _parse_float(literal: str) -> float | OutOfRange:
    value = float(literal)
    return value if math.isfinite(value) else OutOfRange(literal)


def _parse_constant(name: str):
    raise _NonJSONConstant(name)


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # a JSON string literal (unrolled: linear time)
_SURROGATE = re.compile("[\ud800-\udfff]")
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (brackets inside strings do not count), without
    parsing it."""
    data = np.frombuffer(_STRING.sub(b'""', raw), np.uint8)
    if not data.size:
        return 0
    steps = np.isin(data, _OPEN).astype(np.int32) - np.isin(data, _CLOSE)
    return int(np.cumsum(steps).max(initial=0))


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object, else a 400 (see the module docstring for the bounds)."""
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise bad_request(f"the request body nests {depth} levels deep; at most {MAX_JSON_DEPTH} are allowed",
                          code="invalid_json")
    try:
        body = json.loads(raw, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except _NonJSONConstant as exc:
        raise bad_request(f"the request body holds {exc}, which is not a JSON value (JSON has no NaN or Infinity)",
                          code="invalid_json") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # the depth check bounds nesting; this is the last line of defence
        raise bad_request("the request body nests too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    for key, value in body.items():
        _check_strings(key, "a field name", None)
        _check_strings(value, key, key)
    return body


def _check_strings(value: Any, where: str, param: str | None) -> None:
    """Every string of ``value`` must be encodable as UTF-8 (a lone surrogate such as ``"\\ud800"`` is not)."""
    if isinstance(value, str):
        bad = _SURROGATE.search(value)
        if bad:
            raise bad_request(f"{where} holds the lone UTF-16 surrogate \\u{ord(bad.group()):04x} at character "
                              f"{bad.start()}, which is not text; send a valid surrogate pair or the character "
                              f"itself", param=param)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_strings(item, f"{where}[{i}]", param)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, f"a key of {where}", param)
            _check_strings(item, f"{where}.{key}", param)


def shown(value: Any, limit: int = 80) -> str:
    """A request value as JSON, shortened for an error message."""
    if isinstance(value, OutOfRange):
        return repr(value)
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer beyond any float
        return False


def _check_neutral(name: str, value: Any) -> None:
    if value is None or value in NEUTRAL[name]:
        return
    allowed = " or ".join(json.dumps(v) for v in NEUTRAL[name]) or "null"
    raise bad_request(f"'{name}'={shown(value)} is not supported by this server (a diffusion decoder without that option); "
                      f"omit it or send {allowed}", param=name, code="unsupported_parameter")


def parse_request(body: dict, kind: str, fields: EngineFields) -> DecodeRequest:
    """Validate a ``completion`` or ``chat`` request body (see the module docstring)."""
    own = CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS
    req = DecodeRequest()
    decoder_fields = ", ".join(p for p in fields.per_row if p not in fields.openai_names)  # for the error messages
    for name, value in body.items():
        if name in COMMON_FIELDS or name in own or name in METADATA:
            continue
        if name in fields.per_row and name not in fields.openai_names:
            req.engine_params[name] = value
        elif name in NEUTRAL:
            _check_neutral(name, value)
        elif name in fields.openai_names:
            raise bad_request(f"'{name}' is set through the OpenAI field '{fields.openai_names[name]}'",
                              param=name, code="unknown_parameter")
        elif name in fields.shared:
            raise bad_request(f"'{name}' is fixed when the server starts ({fields.method}, {name}="
                              f"{fields.shared[name]!r}) and cannot be set per request; per-request decoder "
                              f"fields: {decoder_fields}",
                              param=name, code="unsupported_parameter")
        elif name in fields.foreign:
            raise bad_request(f"'{name}' is not a parameter of {fields.method}, the decoding method of this server; "
                              f"its per-request decoder fields: {decoder_fields} (besides the OpenAI fields "
                              f"{', '.join(fields.openai_names.values())} and seed)", param=name,
                              code="unsupported_parameter")
        elif name == "method":
            raise bad_request(f"the decoding method is fixed when the server starts ({fields.method}); start a "
                              f"server with --method to use another", param=name, code="unsupported_parameter")
        else:
            raise bad_request(f"unknown field '{name}'; this server takes the OpenAI fields {', '.join(COMMON_FIELDS)}"
                              f" and the per-request decoder fields {decoder_fields}", param=name,
                              code="unknown_parameter")

    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request(f"'model' must be a string, got {shown(model)}", param="model")
    req.model = model
    req.max_tokens = _max_tokens(body, kind)
    temperature = body.get("temperature")
    if temperature is not None and (not _is_number(temperature) or temperature < 0):
        raise bad_request(f"'temperature' must be a number >= 0, got {shown(temperature)}",
                          param="temperature")
    req.temperature = None if temperature is None else float(temperature)
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad_request(f"'seed' must be an integer, got {shown(seed)}", param="seed")
    req.seed = seed
    req.stop = _stop(body.get("stop"))
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request(f"'stream' must be true or false, got {shown(stream)}", param="stream")
    req.stream = stream
    req.include_usage = _stream_options(body.get("stream_options"), stream)
    if kind == "chat":
        req.messages = _messages(body.get("messages"))
    else:
        req.prompt = _prompt(body.get("prompt"))
    return req


def _max_tokens(body: dict, kind: str) -> int | None:
    names = ["max_tokens"] + (["max_completion_tokens"] if kind == "chat" else [])
    given = {n: body[n] for n in names if body.get(n) is not None}
    if len(given) > 1 and len(set(map(shown, given.values()))) > 1:
        raise bad_request("'max_tokens' and 'max_completion_tokens' differ; send one of them", param="max_tokens")
    for name, value in given.items():
        if not _is_int(value) or value < 1:
            raise bad_request(f"'{name}' must be an integer >= 1, got {shown(value)}", param=name)
        return value
    return None


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request(f"'stop' must be a string or a list of strings, got {shown(value)}", param="stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"'stop' has {len(stops)} strings; at most {MAX_STOP_STRINGS} are allowed", param="stop")
    for s in stops:
        if not s or len(s) > MAX_STOP_LENGTH:
            raise bad_request(f"every stop string must have 1 to {MAX_STOP_LENGTH} characters, got {s[:40]!r}"
                              f"{'...' if len(s) > 40 else ''} ({len(s)} characters)", param="stop")
    return list(dict.fromkeys(stops))


def _stream_options(value: Any, stream: bool) -> bool:
    if value is None:
        return False
    if not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", param="stream_options")
    if not isinstance(value, dict) or set(value) - {"include_usage"}:
        raise bad_request(f"'stream_options' must be an object with the key include_usage, got "
                          f"{shown(value)}", param="stream_options")
    usage = value.get("include_usage", False)
    if not isinstance(usage, bool):
        raise bad_request("'stream_options.include_usage' must be true or false", param="stream_options")
    return usage


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", param="messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object with 'role' and 'content'", param="messages")
        unknown = sorted(set(message) - set(MESSAGE_KEYS))
        if unknown:
            raise bad_request(f"{where} has the unsupported key(s) {', '.join(unknown)}; messages take "
                              f"{', '.join(MESSAGE_KEYS)}", param="messages")
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(f"{where}.role is {shown(role, 40)}; expected one of {', '.join(ROLES)}",
                              param="messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise bad_request(f"{where}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are "
                                  f"supported", param="messages")
            content = "".join(p["text"] for p in content)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise bad_request(f"{where}.content must be a string or a list of text parts", param="messages")
        entry = {"role": role, "content": content}
        if message.get("name") is not None:
            if not isinstance(message["name"], str):
                raise bad_request(f"{where}.name must be a string", param="messages")
            entry["name"] = message["name"]
        out.append(entry)
    return out


def _prompt(value: Any) -> str | list[int]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]  # a batch of one prompt
    if isinstance(value, str):
        if not value:
            raise bad_request("'prompt' is empty", param="prompt")
        return value
    if isinstance(value, list) and value and all(_is_int(t) for t in value):
        return value
    if isinstance(value, list) and value and all(isinstance(p, (str, list)) for p in value):
        raise bad_request(f"'prompt' holds {len(value)} prompts; this server takes one prompt per request (send "
                          f"them as separate, concurrent requests: they are batched)", param="prompt",
                          code="unsupported_parameter")
    raise bad_request("'prompt' must be a non-empty string or a non-empty list of token ids", param="prompt")


# -- responses ---------------------------------------------------------------------------------------------------------
def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int, nfe: int) -> dict:
    """OpenAI's usage object plus the diffusion figures: forwards the row took part in and tokens per forward."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "nfe": nfe,
            "tokens_per_forward": round(completion_tokens / nfe, 4) if nfe else 0.0}


def completion_body(kind: str, rid: str, created: int, model: str, text: str, finish_reason: str,
                    usage_: dict) -> dict:
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], "usage": usage_}


def chunk_body(kind: str, rid: str, created: int, model: str, *, text: str | None = None, role: bool = False,
               finish_reason: str | None = None, with_usage: bool = False) -> dict:
    """One stream chunk: a text delta (or the role, first) and, in the last one, the finish reason."""
    if kind == "chat":
        delta: dict[str, str] = {}
        if role:
            delta = {"role": "assistant", "content": ""}
        elif text is not None:
            delta = {"content": text}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    out = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
    if with_usage:
        out["usage"] = None  # OpenAI sends usage: null on every chunk but the last when include_usage is set
    return out


def usage_chunk(kind: str, rid: str, created: int, model: str, usage_: dict) -> dict:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage_}


def sse(data: dict | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def now() -> int:
    return int(time.time())
