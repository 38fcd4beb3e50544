"""Committed tokens to text that is safe to send: whole-text detokenization, held-back incomplete UTF-8, stop strings
that may straddle blocks, and the request's token limit.

A diffusion decoder commits positions in any order, but the engine reports only a row's committed *prefix*
(:attr:`d3llm.RowEvent.new_tokens`, cut at the first end-of-text), which no later step can change. A
:class:`TextStream` turns that prefix, as it grows, into deltas a client can concatenate:

* the token ids are decoded as a whole (tokenizers merge pieces across token boundaries: a byte-level BPE spreads one
  character over several tokens), and trailing U+FFFD characters, an incomplete UTF-8 sequence, are held back until
  the next tokens complete them (dropped if the output ends there);
* a stop string may arrive split over two events (the end of one block and the start of the next): any suffix of the
  text that begins a stop string is held back until later text confirms or rules out the match. The output ends
  before the stop string that *ends* first (the earliest-starting one on a tie), which does not depend on how the
  tokens were split into events, so a streamed and a non-streamed response are the same text;
* at most ``max_tokens`` tokens are taken (the server rounds a row's canvas up to whole blocks).

``finish_reason`` becomes ``"stop"`` (a stop string) or ``"length"`` (``max_tokens``); the server then cancels the
row. Decoding the whole prefix on every event costs O(length) per event, far below a forward for the lengths a
model's context allows.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"  # what tokenizers decode an incomplete UTF-8 sequence to


class TextStream:
    """Incremental text of one request (see the module docstring).

    Args:
        tokenizer: decodes ids (``tokenizer.decode(ids, skip_special_tokens=True)``).
        stop: stop strings (non-empty); the text ends before the first one found.
        max_tokens: take at most this many tokens (None: no limit).
    """

    def __init__(self, tokenizer, stop: list[str] | tuple[str, ...] = (), max_tokens: int | None = None) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.max_tokens = max_tokens
        self.tokens: list[int] = []  # ids taken so far
        self.sent = ""  # text handed out so far: always a prefix of the final text
        self.finish_reason: str | None = None  # "stop" (stop string) or "length" (max_tokens); None: still open
        self.stop_end: int | None = None  # with a stop string: where the stop string ends in the decoded text

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def push(self, tokens: list[int]) -> str:
        """Take newly committed ids; return the text that is now safe to send (possibly empty)."""
        if self.finished or not tokens:
            return ""
        if self.max_tokens is not None and len(self.tokens) + len(tokens) >= self.max_tokens:
            tokens = tokens[: self.max_tokens - len(self.tokens)]
            self.tokens.extend(tokens)
            return self._advance(final=True, reason="length")
        self.tokens.extend(tokens)
        return self._advance(final=False)

    def close(self) -> str:
        """No more tokens will come (the row finished): the text held back, minus an incomplete UTF-8 tail."""
        if self.finished:
            return ""
        return self._advance(final=True, reason=None)

    def _advance(self, final: bool, reason: str | None = None) -> str:
        text = self._decode(self.tokens).rstrip(REPLACEMENT)
        if not text.startswith(self.sent):
            # a tokenizer whose decoding of a longer prefix rewrites earlier text: wait until it extends what was sent
            return ""
        start = len(self.sent)
        hit = self._first_stop(text, start)
        if hit is not None:
            at, end = hit
            self.finish_reason, self.stop_end = "stop", end
            return self._send(text[:at])
        if final:
            self.finish_reason = reason
            return self._send(text)
        return self._send(text[: len(text) - self._held_back(text, start)])

    def _send(self, upto: str) -> str:
        delta = upto[len(self.sent):]
        self.sent = upto
        return delta

    def _first_stop(self, text: str, start: int) -> tuple[int, int] | None:
        """(start, end) of the stop string ending first in ``text[start:]`` (no stop string can begin before
        ``start``: every suffix that could was held back)."""
        best = None
        for s in self.stop:
            i = text.find(s, start)
            if i >= 0 and (best is None or (i + len(s), i) < (best[1], best[0])):
                best = (i, i + len(s))
        return best

    def _held_back(self, text: str, start: int) -> int:
        """Length of the longest suffix of ``text[start:]`` that is a proper prefix of a stop string."""
        tail = text[start:]
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(tail)), hold, -1):
                if tail.endswith(s[:k]):
                    hold = k
                    break
        return hold

    def completion_tokens(self) -> int:
        """Tokens the output used: with a stop string, the fewest whose text reaches the stop string's end."""
        if self.finish_reason != "stop":
            return len(self.tokens)
        lo, hi = 1, len(self.tokens)
        while lo < hi:  # the decoded length grows with the number of tokens
            mid = (lo + hi) // 2
            if len(self._decode(self.tokens[:mid])) >= self.stop_end:
                hi = mid
            else:
                lo = mid + 1
        return lo
