"""``max_tokens`` as a vLLM user expects it, against ``d3llm serve`` on the shipped teacher (a subprocess on a free
loopback port, through the official ``openai`` client): the reply never holds more than ``max_tokens`` tokens, it
ends at the first end-of-text of the decoded canvas (nothing after it is returned), and ``finish_reason`` is
``stop`` when the model ended (end-of-text or a stop string) and ``length`` when ``max_tokens`` cut it; for
completions and chat, streamed and not. The expected answer is worked out from the raw canvas that
``d3llm.generate`` decodes for the same request alone (``max_tokens`` rounded up to whole blocks). Last, the one
warning a server logs when requests exceed the length the model folder says it was trained for."""

from __future__ import annotations

import json
import shutil

import openai
import pytest

import d3llm
from d3llm.assets import default_model_path
from d3llm.models.prompts import encode_text
from d3llm.serve.launch import launched_server
from d3llm.tasks import load_dataset

MODEL = "arith-teacher"
BLOCK = 16  # the teacher's generation_config.json block_size
TIMEOUT = 60
TEST = load_dataset("arith:test")
# held-out problems whose answers end in the third block (37 tokens), in the second (26), and fill all 48 positions
# of the default canvas without an end-of-text (four steps: 47 tokens and the end-of-turn marker)
THIRD_BLOCK, SECOND_BLOCK, FULL, LONG_TAIL = (TEST[i].question for i in (0, 5, 1, 6))


@pytest.fixture(scope="module")
def teacher():
    folder = default_model_path()
    return d3llm.load_model(folder), d3llm.load_tokenizer(folder)


@pytest.fixture(scope="module")
def servers():
    """The teacher with its own defaults (multi_block, early stop) and with fast_dllm, which decodes every position
    of the canvas, after the end-of-text too (whatever is there must never be returned)."""
    with launched_server(["--no-access-log"]) as default, \
            launched_server(["--method", "fast_dllm", "--no-access-log"]) as fast:
        yield {None: default, "fast_dllm": fast}


def client_of(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=TIMEOUT, max_retries=0)


def prompt_ids(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    return encode_text(tokenizer, text)


def expected(teacher, question: str, max_tokens: int, method: str | None = None) -> dict:
    """What a vLLM-like server must answer, from the raw canvas of this request decoded alone: the tokens before the
    first end-of-text, at most ``max_tokens`` of them; ``stop`` when the end-of-text lies within ``max_tokens``."""
    model, tokenizer = teacher
    canvas = -(-max_tokens // BLOCK) * BLOCK
    result = d3llm.generate(model, [prompt_ids(tokenizer, question)], method, max_new_tokens=canvas)
    generated = result.generated[0].tolist()
    eos = model.eos_token_id
    first_eos = generated.index(eos) if eos in generated else len(generated)
    tokens = generated[: min(first_eos, max_tokens)]
    return {"text": tokenizer.decode(tokens, skip_special_tokens=True), "tokens": len(tokens),
            "reason": "stop" if first_eos < max_tokens else "length", "after_eos": generated[first_eos + 1:],
            "canvas": generated}


def ask(client, kind: str, stream: bool, question: str, tokenizer, **fields) -> dict:
    """One request: its text, finish reason and completion tokens (streamed: from the include_usage chunk)."""
    if kind == "chat":
        call = client.chat.completions.create
        body = dict(model=MODEL, messages=[{"role": "user", "content": question}], **fields)
    else:
        call = client.completions.create
        prompt = fields.pop("prompt", None)
        if prompt is None:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                   add_generation_prompt=True)
        body = dict(model=MODEL, prompt=prompt, **fields)
    if not stream:
        reply = call(**body)
        choice = reply.choices[0]
        text = choice.message.content if kind == "chat" else choice.text
        return {"text": text, "reason": choice.finish_reason, "tokens": reply.usage.completion_tokens}
    chunks = list(call(**body, stream=True, stream_options={"include_usage": True}))
    with_choice = [c for c in chunks if c.choices]
    pieces = [(c.choices[0].delta.content if kind == "chat" else c.choices[0].text) or "" for c in with_choice]
    reasons = [c.choices[0].finish_reason for c in with_choice if c.choices[0].finish_reason]
    assert len(reasons) == 1 and with_choice[-1].choices[0].finish_reason == reasons[0], reasons
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    return {"text": "".join(pieces), "reason": reasons[0], "tokens": chunks[-1].usage.completion_tokens}


MODES = [(kind, stream) for kind in ("chat", "completion") for stream in (False, True)]


@pytest.mark.parametrize("method", [None, "fast_dllm"])
def test_never_more_than_max_tokens_and_length_only_when_cut(servers, teacher, method):
    """max_tokens below the answer (whole blocks or not), at the answer's length, one above it, and well above it
    (rounded up or whole blocks): every mode gives the expected text, token count and finish reason."""
    client = client_of(servers[method])
    _, tokenizer = teacher
    seen = set()
    for question in (THIRD_BLOCK, SECOND_BLOCK, FULL):
        n = expected(teacher, question, 48, method)["tokens"]  # the answer's length at the default canvas
        assert n > 16
        for max_tokens in (1, 5, 16, 20, n - 1, n, n + 1, 48, 50, 64):
            want = expected(teacher, question, max_tokens, method)
            seen.add(want["reason"])
            for kind, stream in MODES:
                got = ask(client, kind, stream, question, tokenizer, max_tokens=max_tokens, temperature=0)
                where = (question[:20], max_tokens, kind, stream)
                assert got["tokens"] <= max_tokens, where
                assert got == {"text": want["text"], "reason": want["reason"], "tokens": want["tokens"]}, where
    assert seen == {"stop", "length"}


def test_tokens_stop_at_the_first_end_of_text_whatever_follows():
    """The engine's tokens (what the server returns) end before the first end-of-text even when the canvas holds
    text after it (a random model; the robust teacher itself fills its tails with end-of-text)."""
    model = d3llm.build_model("llada-tiny", seed=0)
    prompt = [3, 4, 5, 6]
    canvas = d3llm.generate(model, [prompt], "vanilla", max_new_tokens=32, block_size=32, steps=32,
                            eos_token_id=1).generated[0].tolist()
    # an "end-of-text" id that occurs early in this canvas and is followed by other tokens
    eos = next(v for i, v in enumerate(canvas[:-4]) if any(x != v for x in canvas[i + 1:]) and v != 1)
    result = d3llm.generate(model, [prompt], "vanilla", max_new_tokens=32, block_size=32, steps=32,
                            eos_token_id=eos)
    assert result.generated[0].tolist() == canvas  # the id only says where the answer ends
    assert result.tokens[0] == canvas[:canvas.index(eos)] and len(result.tokens[0]) < 31


def test_the_answer_ends_at_the_first_end_of_text(servers, teacher):
    """fast_dllm at 64 positions: the reply is the canvas up to its first end-of-text, in any mode, and the whole
    answer (finish_reason stop); nothing after the end-of-text is returned (the robust teacher fills the tail with
    end-of-text, so :func:`test_tokens_stop_at_the_first_end_of_text_whatever_follows` checks a tail with text)."""
    client = client_of(servers["fast_dllm"])
    model, tokenizer = teacher
    question = THIRD_BLOCK
    want = expected(teacher, question, 64, "fast_dllm")
    assert "####" in want["text"] and want["reason"] == "stop"
    for kind, stream in MODES:
        got = ask(client, kind, stream, question, tokenizer, max_tokens=64, temperature=0)
        assert got == {"text": want["text"], "reason": "stop", "tokens": want["tokens"]}, (kind, stream)
    ids = prompt_ids(tokenizer, question)  # a completion of token ids, too
    got = ask(client, "completion", False, question, tokenizer, prompt=ids, max_tokens=64)
    assert got["text"] == want["text"] and got["reason"] == "stop"


def test_stop_strings_finish_with_stop_unless_max_tokens_comes_first(servers, teacher):
    client = client_of(servers[None])
    _, tokenizer = teacher
    question = THIRD_BLOCK
    whole = expected(teacher, question, 48)
    assert "####" in whole["text"]
    before = whole["text"].split("####")[0]
    short = expected(teacher, question, 20)
    assert "####" not in short["text"]  # the stop string would come after the 20th token
    for kind, stream in MODES:
        got = ask(client, kind, stream, question, tokenizer, max_tokens=48, stop=["####"])
        assert (got["text"], got["reason"]) == (before, "stop") and got["tokens"] <= 48
        got = ask(client, kind, stream, question, tokenizer, max_tokens=20, stop=["####"])
        assert got == {"text": short["text"], "reason": "length", "tokens": 20}


def test_no_request_needs_to_know_the_trained_length(servers, teacher):
    """Without max_tokens a request gets the folder's default (48 here); a large max_tokens (256) is accepted and
    still ends at the first end-of-text with the whole answer."""
    client = client_of(servers[None])
    _, tokenizer = teacher
    question = LONG_TAIL
    default = expected(teacher, question, 48)
    for kind, stream in MODES:
        assert ask(client, kind, stream, question, tokenizer) == {k: default[k] for k in ("text", "reason", "tokens")}
    want = expected(teacher, question, 256)
    assert want["reason"] == "stop" and "####" in want["text"]  # a 256-token canvas still ends with the answer
    for kind, stream in MODES:
        got = ask(client, kind, stream, question, tokenizer, max_tokens=256)
        assert got == {k: want[k] for k in ("text", "reason", "tokens")} and got["tokens"] <= 256
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}],
                                          max_completion_tokens=20)
    assert chat.usage.completion_tokens == 20 and chat.choices[0].finish_reason == "length"


def test_one_warning_per_server_for_requests_beyond_the_trained_length(tmp_path, teacher):
    """A copy of the teacher declaring max_trained_new_tokens=32: requests whose canvas is at most 32 (max_tokens 20
    rounds up to 32) log nothing; the first longer one logs one warning on d3llm.serve, the next ones none."""
    folder = tmp_path / "teacher"
    shutil.copytree(default_model_path(), folder)
    file = folder / "generation_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), "max_trained_new_tokens": 32}))
    _, tokenizer = teacher
    question = THIRD_BLOCK
    with launched_server(["--model", str(folder), "--served-model-name", MODEL, "--no-access-log"]) as server:
        client = client_of(server)

        def warnings() -> list[str]:
            return [line for line in server.stderr().splitlines() if "trained on canvases" in line]

        for max_tokens in (32, 20, 1):
            ask(client, "chat", False, question, tokenizer, max_tokens=max_tokens)
        ask(client, "completion", True, question, tokenizer, max_tokens=32)
        assert warnings() == []
        long = ask(client, "chat", False, question, tokenizer, max_tokens=40)
        assert long["reason"] == "stop" and long["tokens"] <= 40  # decoded all the same
        ask(client, "chat", True, question, tokenizer, max_tokens=64)
        ask(client, "completion", False, question, tokenizer)  # the default canvas, 48
        found, log = warnings(), server.stderr()
    assert len(found) == 1, log
    assert " d3llm.serve: the model was trained on canvases up to 32 new tokens (max_trained_new_tokens in " \
           f"{file}) and this request asks for 48 (max_tokens=40, rounded up to whole blocks of 16), so quality " \
           "may degrade" in found[0]
