"""Autoregressive decoding of a causal model (the Llama family): one token per forward with the KV cache.

The baseline that diffusion decoders are measured against, decoded the way autoregressive engines do it: the first
forward reads the prompt (and fills the cache), every later forward reads only the token committed last, against
the cached prefix, and commits exactly one token, so TPF is 1 by construction (the metric counts tokens before
end-of-text, so a row that stops at EOS spent one forward on the EOS itself). Rows stop at EOS, leave the batch,
and the rest of their canvas is filled with EOS.

Which logits score the next position (the model's next-token shift is inside it, see
:mod:`d3llm.models.llama_style`): in a forwarded slice ``[s, e)`` column j scores position ``s + j`` from the raw
output at ``s + j - 1``, except the slice's first column, which keeps its own raw output, the next-token
distribution of position ``s + 1``. So:

* step 0 forwards ``[0, G + 1)`` (the prompt and the first placeholder) and reads column G;
* step k >= 1 forwards the single token at ``p - 1`` (p = G + k) and reads column 0.

The placeholder at G is forwarded once (its cache slot is never counted valid and is overwritten next step).
Every row keeps its own coordinates (prompt length G_i, step k_i), so rows of different prompt lengths, and rows
that joined at different steps, decode together, each forwarding its own one-token slice against its own cache
row. The placeholder id (``mask_id``) is never chosen as a token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from d3llm.decoding import rules
from d3llm.decoding.canvas import Canvas
from d3llm.decoding.methods.base import Commit, DecodingMethod, MethodState, RowSetup, StepPlan
from d3llm.decoding.params import Params


@dataclass
class AutoregressiveParams(Params):
    max_new_tokens: int = 128
    temperature: float = 0.0

    def validate(self, method: str) -> None:
        self.check_int(method, "max_new_tokens", self.max_new_tokens)
        self.check_temperature(method)


@dataclass
class AutoregressiveState(MethodState):
    """Per row: tokens committed so far (the next position is ``gen_start + step``), end-of-text id, sampling."""

    row_fields = {"step": 0, "eos": -1, "temperature": 0.0, "generators": None}
    step: np.ndarray  # [n] tokens committed
    eos: np.ndarray  # [n] end-of-text id (-1: none)
    temperature: np.ndarray  # [n]
    generators: list  # [n] torch.Generator or None


class Autoregressive(DecodingMethod):
    name = "autoregressive"
    Params = AutoregressiveParams
    causal = True

    @property
    def uses_cache(self) -> bool:
        return True

    def init_state(self, canvas: Canvas, rows: list[RowSetup]) -> AutoregressiveState:
        return AutoregressiveState(step=np.zeros(canvas.size, dtype=np.int64),
                                   eos=np.array([-1 if r.eos_id is None else r.eos_id for r in rows], dtype=np.int64),
                                   temperature=self.row_values(rows, "temperature"),
                                   generators=[r.generator for r in rows])

    def plan(self, canvas: Canvas, state: AutoregressiveState) -> StepPlan:
        p = canvas.gen_start + state.step  # the position each row fills in this step
        first = state.step == 0
        last = canvas.x[np.arange(canvas.size), np.maximum(p - 1, 0)]
        stopped = ~first & (state.eos >= 0) & (last == state.eos)
        if stopped.any():  # EOS padding after the end, as the diffusion decoders leave it
            ends = canvas.lengths
            for i in np.flatnonzero(stopped).tolist():
                canvas.x[i, p[i] : ends[i]] = state.eos[i]
        run = ~stopped & (state.step < canvas.gen_lengths)
        start = np.where(first, 0, p - 1)
        return StepPlan(run=run, start=start, end=np.where(first, p + 1, p), cache_length=p,
                        score_pos=np.where(first, p, p - 1)[:, None], score_width=np.ones(canvas.size, np.int64))

    def commit(self, canvas: Canvas, state: AutoregressiveState, logits: torch.Tensor, plan: StepPlan) -> Commit:
        # step 0: position G scores G from the raw output at G - 1; later: the one forwarded token keeps its own
        # raw output, the distribution of the position after it
        tokens = rules.sample_rows(lambda l, t, g: rules.multinomial_sample(l, t, g, exclude=self.mask_id), logits,
                                   state.temperature, plan.score_width, state.generators)
        (tokens,) = rules.to_host(tokens)
        n = canvas.size
        return Commit(np.ones((n, 1), dtype=bool), tokens.reshape(n, 1), positions=plan.cache_length[:, None])

    def update(self, canvas: Canvas, state: AutoregressiveState, commit: Commit) -> None:
        state.step += 1
