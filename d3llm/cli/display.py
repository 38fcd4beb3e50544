"""Terminal rendering of a decoding canvas filling in (``d3llm generate --show-steps``).

A :class:`CanvasView` is a ``generate`` callback. In a terminal it redraws one live panel per step with ``rich``;
otherwise (pipes, logs, tests) it prints one plain frame per step. Masked positions show as ``░``, tokens committed
in the current step are highlighted (in a terminal), ``|`` separates blocks and end-of-text shows as ``·``; before
its first frame the view prints this key once (:func:`legend`).
"""

from __future__ import annotations

import sys

from d3llm.decoding.result import StepEvent

MASK_GLYPH, EOS_GLYPH, BLOCK_GLYPH, NEWLINE_GLYPH, EMPTY_GLYPH = "░", "·", "|", "⏎", "∅"
NEW_STYLE = "bold green"  # tokens committed in the step just drawn (live view only)


def legend(live: bool) -> str:
    """The one-line key of the canvas glyphs (the live view also highlights the tokens of the latest step)."""
    new = f"{NEW_STYLE}: committed in this step, " if live else ""
    return (f"canvas: {MASK_GLYPH} masked, {new}{BLOCK_GLYPH} between blocks, {EOS_GLYPH} end of text, "
            f"{NEWLINE_GLYPH} line break, {EMPTY_GLYPH} a token without text")


class CanvasView:
    """Args: ``label`` prefixes every row (a format string of ``step`` and ``row``); ``transient`` clears the live
    panel when closed (the chat prints the final reply in its place)."""

    def __init__(self, tokenizer, mask_id: int, eos_id: int | None, *, stream=None, live: bool | None = None,
                 label: str = "step {step:3d} row {row}: ", transient: bool = False) -> None:
        self.tokenizer = tokenizer
        self.label, self.transient = label, transient
        self.mask_id = mask_id
        self.eos_id = eos_id
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self._pieces: dict[int, str] = {}
        self._live = None
        self._legend_shown = False

    def _piece(self, token: int) -> str:
        if token not in self._pieces:
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            self._pieces[token] = text.replace("\n", NEWLINE_GLYPH) or EMPTY_GLYPH
        return self._pieces[token]

    def frame(self, event: StepEvent, row: int) -> list[tuple[str, str]]:
        """(text, style) pieces of one row's generation region; style is '', 'new' or 'mask'."""
        gen = event.canvas[row, event.gen_start:].tolist()
        new = event.committed[row, event.gen_start:].tolist()
        out: list[tuple[str, str]] = []
        for i, (token, fresh) in enumerate(zip(gen, new)):
            if event.block_size and i and i % event.block_size == 0:
                out.append((f" {BLOCK_GLYPH} ", "sep"))
            if token == self.mask_id:
                out.append((MASK_GLYPH, "mask"))
            elif token == self.eos_id:
                out.append((EOS_GLYPH, "new" if fresh else "eos"))
            else:
                out.append((self._piece(token), "new" if fresh else ""))
        return out

    def __call__(self, event: StepEvent) -> None:
        if not self._legend_shown:  # once per view, before its first frame (a chat keeps one view for every reply)
            print(legend(self.live), file=self.stream, flush=True)
            self._legend_shown = True
        if not self.live:
            for i, row in enumerate(event.rows):
                text = "".join(piece for piece, _ in self.frame(event, i))
                print(self.label.format(step=event.step, row=row) + text, file=self.stream)
            return
        from rich.console import Group
        from rich.live import Live
        from rich.text import Text

        styles = {"new": NEW_STYLE, "mask": "dim", "sep": "blue", "eos": "dim", "": ""}
        lines = []
        for i, row in enumerate(event.rows):
            line = Text(self.label.format(step=event.step, row=row))
            for piece, style in self.frame(event, i):
                line.append(piece, style=styles[style])
            lines.append(line)
        if self._live is None:
            self._live = Live(Group(*lines), refresh_per_second=30, transient=self.transient)
            self._live.start(refresh=True)
        else:
            self._live.update(Group(*lines), refresh=True)  # every step is drawn, however fast decoding is

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
