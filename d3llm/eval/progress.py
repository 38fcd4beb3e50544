"""The progress of an evaluation or a sweep, counted in problems and moving with every decoding step.

The count (``12/1900``) is the problems finished: a problem counts the moment its row leaves the decoder, not at the
end of its batch. Between those moments the bar moves by the share of the in-flight batch's canvases already filled,
so that a batch of one-token-per-forward decodes (all of its rows finish at the last step) shows progress after its
first steps rather than after the whole batch. Problems finished by an earlier, interrupted run count as done from
the start. :func:`step_watcher` turns ``d3llm.generate``'s per-step events into these updates; :class:`ProblemBar`
draws them with rich.
"""

from __future__ import annotations

from collections.abc import Callable


class ProblemBar:
    """A rich progress bar over ``total`` problems (``done`` of them finished before it starts), with the running
    TPF of the current point; ``title`` is its first description."""

    def __init__(self, total: int, title: str = "", done: int = 0) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.total, self.done = total, done
        self.tokens = self.nfe = 0
        self.progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                 TextColumn("TPF {task.fields[tpf]}"), TimeRemainingColumn())
        self.task = self.progress.add_task(title, total=total, completed=done, count=self._count(0), tpf="-")
        self.progress.start()

    def _count(self, finished: int) -> str:
        return f"{self.done + finished}/{self.total}"

    def describe(self, text: str) -> None:
        """A new point starts: its label, and a fresh running TPF."""
        self.tokens = self.nfe = 0
        self.progress.update(self.task, description=text, tpf="-")

    def step(self, finished: int, filled: float) -> None:
        """Within a batch: ``finished`` of its rows are done, ``filled`` problems' worth of its canvases filled."""
        self.progress.update(self.task, completed=self.done + filled, count=self._count(finished))

    def advance(self, requests: int, tokens: int, nfe: int) -> None:
        """A batch of ``requests`` problems is finished, with these generated tokens and forwards (``requests`` 0:
        batches kept from an earlier run, counted done already, join the running TPF)."""
        self.done += requests
        self.tokens, self.nfe = self.tokens + tokens, self.nfe + nfe
        self.progress.update(self.task, completed=self.done, count=self._count(0),
                             tpf=f"{self.tokens / max(self.nfe, 1):.2f}")

    def close(self) -> None:
        self.progress.stop()


def step_watcher(progress, rows: int, mask_id: int) -> Callable:
    """A ``generate`` callback for a batch of ``rows`` prompts: after every step, ``progress.step(finished,
    filled)`` with the rows that have left the decoder and, counting each row still decoding by the share of its
    generated positions no longer ``mask_id``, the problems' worth of work done."""

    def watch(event) -> None:
        finished = rows - len(event.rows)
        filled = float((event.canvas[:, event.gen_start:] != mask_id).mean(axis=1).sum()) if event.rows else 0.0
        progress.step(finished, finished + filled)

    return watch

