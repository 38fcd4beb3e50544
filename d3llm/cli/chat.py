"""d3llm chat: a multi-turn chat in the terminal, with the model's chat template.

    d3llm chat                         # the shipped teacher, its own decoding defaults
    d3llm chat --model DIR --method fast_dllm --threshold 0.9

While a reply decodes, the canvas fills in live: committed text plain, tokens committed in the last step
highlighted, still-masked positions as ░, | between blocks (a one-line key is printed before the first canvas).
After each reply one line gives its forwards (NFE), tokens, tokens per forward (TPF, the point of a parallel
decoder) and tokens/s (decoding time only, the drawing of the canvas excluded). Commands: /reset forgets the
conversation, /method shows the decoder and /method NAME switches to another (the folder's defaults for it), /quit
(or Ctrl-D) leaves.
The chat drives the same step-wise engine as d3llm serve, one request per reply.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from d3llm.cli.options import (METHODS, add_decoder_flags, add_model_flags, add_parser, apply_threads,
                               decoder_params, model_folder)

HELP = "/reset forgets the conversation, /method [NAME] shows or switches the decoder, /quit leaves"


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "chat", "chat with a model in the terminal", __doc__)
    add_model_flags(p)
    add_decoder_flags(p)
    p.set_defaults(func=run)


@dataclass
class Reply:
    """One decoded reply: its text, the turns dropped from the conversation's start to make room, and its figures
    (``tokens`` before end-of-text, forwards, seconds spent in the engine's steps)."""

    text: str
    dropped: int
    method: str
    tokens: int
    nfe: int
    wall_s: float

    @property
    def tpf(self) -> float:
        return self.tokens / self.nfe if self.nfe else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    def stats(self) -> str:
        """The line printed after the reply (the figures of ``d3llm generate``'s last line)."""
        return (f"[{self.method}] NFE {self.nfe}  tokens {self.tokens}  TPF {self.tpf:.2f}  "
                f"{self.tokens_per_s:.1f} tokens/s")


class ChatSession:
    """A conversation and the engine that decodes its replies.

    Args:
        model, tokenizer: the model folder's model and tokenizer (with a chat template).
        method: the decoder (None: the folder's); params: its parameters (None for the folder's defaults).
        seed: sampling seed of every reply (None: unseeded).
    """

    def __init__(self, model, tokenizer, method: str | None, params: dict, seed: int | None = None) -> None:
        from d3llm.errors import GenerationError

        if not getattr(tokenizer, "chat_template", None):
            raise GenerationError("d3llm chat: this model's tokenizer has no chat template")
        self.model, self.tokenizer, self.seed = model, tokenizer, seed
        self.messages: list[dict[str, str]] = []
        self.replies = 0
        self.set_method(method, params)

    def set_method(self, method: str | None, params: dict) -> None:
        """Decode with ``method`` from now on; one untimed decode first, so that the next reply's tokens/s does not
        pay the first forward's set-up cost (as ``d3llm serve`` warms up)."""
        import d3llm
        from d3llm.cli.serve import warm_up

        self.engine = d3llm.Engine(self.model, method, **params)
        warm_up(self.engine, d3llm.encode_prompt(self.tokenizer, ""))

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.engine.params.as_dict().items() if v is not None)
        return f"{self.engine.method_name} ({shown})"

    def prompt(self, question: str) -> tuple[list[int], int]:
        """Prompt ids of the conversation plus ``question``; the oldest turns are dropped (their count returned)
        until the prompt leaves room for a reply."""
        from d3llm.errors import GenerationError
        from d3llm.models.prompts import encode_messages

        room = self.model.config.max_length - self.engine.params.max_new_tokens
        history = list(self.messages)
        dropped = 0
        while True:
            turns = history + [{"role": "user", "content": question}]
            ids = encode_messages(self.tokenizer, turns)
            if len(ids) <= room:
                return ids, dropped
            if not history:
                raise GenerationError(f"the question is {len(ids)} tokens long; this model leaves {room} for a "
                                      f"prompt")
            history = history[2:]
            dropped += 1

    def reply(self, question: str, view=None) -> Reply:
        """Decode the answer to ``question`` (calling ``view`` with a StepEvent after every step); it joins the
        conversation."""
        ids, dropped = self.prompt(question)
        if dropped:
            self.messages = self.messages[2 * dropped:]
        rid = f"reply-{self.replies}"
        self.replies += 1
        engine = self.engine
        engine.add_request(ids, request_id=rid, seed=self.seed)
        output = None
        wall = 0.0
        while output is None:
            start = time.perf_counter()
            events = engine.step()
            wall += time.perf_counter() - start  # the engine's time only: drawing the canvas is not decoding
            for event in events:
                if event.request_id != rid:
                    continue
                if event.finished:
                    output = event.output
                elif view is not None:
                    view(row_event(engine, event))
        text = self.tokenizer.decode(output.tokens, skip_special_tokens=True).strip()
        self.messages += [{"role": "user", "content": question}, {"role": "assistant", "content": text}]
        return Reply(text, dropped, engine.method_name, len(output.tokens), output.nfe, wall)

    def reset(self) -> None:
        self.messages = []


def row_event(engine, event):
    """The :class:`~d3llm.StepEvent` of one running row after its step (what ``CanvasView`` draws)."""
    import numpy as np

    from d3llm.decoding.result import StepEvent

    i = engine.active_ids.index(event.request_id)
    canvas = engine.canvas
    start, n = int(canvas.prompt_lengths[i]), int(canvas.gen_lengths[i])
    x = canvas.x[i : i + 1, : start + n]
    committed = np.zeros(x.shape, dtype=bool)
    committed[0, start + event.committed] = True
    return StepEvent(step=event.step, rows=[0], canvas=x, committed=committed, gen_start=start,
                     block_size=getattr(engine.params, "block_size", None))


def run(args: argparse.Namespace) -> int:
    import d3llm
    from d3llm.cli.display import CanvasView
    from d3llm.errors import D3LLMError

    folder = model_folder(args)
    model = d3llm.load_model(folder, device=args.device, dtype=args.dtype)
    apply_threads(args.threads, model)
    tokenizer = d3llm.load_tokenizer(folder)
    session = ChatSession(model, tokenizer, args.method, decoder_params(args), seed=args.seed)
    # one view for the whole chat, so that its key of the glyphs is printed once, before the first canvas
    view = CanvasView(tokenizer, model.mask_token_id, session.engine.eos_id, live=True, transient=True,
                      label="bot> ") if sys.stdout.isatty() else None
    print(f"d3llm chat: {folder}\ndecoder: {session.describe()}\n{HELP}", flush=True)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            session.reset()
            print("(conversation cleared)", flush=True)
            continue
        if line == "/method" or line.startswith("/method "):
            name = line[len("/method"):].strip()
            if name:
                if name not in METHODS:
                    print(f"unknown method {name!r}; expected one of {', '.join(METHODS)}", flush=True)
                    continue
                try:
                    session.set_method(name, {})
                except D3LLMError as exc:
                    print(f"error: {exc}", flush=True)
                    continue
            print(f"decoder: {session.describe()}", flush=True)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", flush=True)
            continue
        try:
            reply = session.reply(line, view)
        except D3LLMError as exc:
            print(f"error: {exc}", flush=True)
            continue
        finally:
            if view is not None:
                view.close()
        if reply.dropped:
            print(f"(the conversation was too long: dropped its {reply.dropped} oldest turn(s))")
        print(f"bot> {reply.text}\n{reply.stats()}", flush=True)
