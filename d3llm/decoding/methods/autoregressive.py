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
All active rows are at the same position (prompts are left-padded to G, and each step commits one token per row),
so the plan is one slice for the whole batch. The placeholder id (``mask_id``) is never chosen as a token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from d3llm.decoding import rules
from d3llm.decoding.canvas import Canvas
from d3llm.decoding.methods.base import Commit, DecodingMethod, MethodState, StepPlan
from d3llm.decoding.params import Params


@dataclass
class AutoregressiveParams(Params):
    max_new_tokens: int = 128
    temperature: float = 0.0

    def validate(self, method: str) -> None:
        self.check_int(method, "max_new_tokens", self.max_new_tokens)
        self.check_range(method, "temperature", self.temperature, 0.0, None, "sampling temperature (0 = greedy)")


@dataclass
class AutoregressiveState(MethodState):
    """No per-row state: a row's next position is ``gen_start + step``, its stop is read from the canvas."""


class Autoregressive(DecodingMethod):
    name = "autoregressive"
    Params = AutoregressiveParams
    causal = True

    @property
    def uses_cache(self) -> bool:
        return True

    def init_state(self, canvas: Canvas) -> AutoregressiveState:
        return AutoregressiveState()

    def plan(self, canvas: Canvas, state: AutoregressiveState, step: int) -> StepPlan:
        n, p = canvas.size, canvas.gen_start + step
        if p >= canvas.length:
            return StepPlan(run=np.zeros(n, dtype=bool), start=np.zeros(n, dtype=np.int64),
                            end=np.zeros(n, dtype=np.int64))
        run = np.ones(n, dtype=bool)
        if step > 0 and self.eos_id is not None:
            stopped = canvas.x[:, p - 1] == self.eos_id
            if stopped.any():
                canvas.x[stopped, p:] = self.eos_id  # EOS padding after the end, as the diffusion decoders leave it
                run = ~stopped
        start = 0 if step == 0 else p - 1
        end = p + 1 if step == 0 else p
        return StepPlan(run=run, start=np.full(n, start, dtype=np.int64), end=np.full(n, end, dtype=np.int64),
                        cache_length=np.full(n, p, dtype=np.int64))

    def commit(self, canvas: Canvas, state: AutoregressiveState, logits: torch.Tensor, offset: int,
               plan: StepPlan) -> Commit:
        p = int(plan.cache_length[0])  # the position this step fills
        scores = logits[:, -1]  # step 0: column G of [0, G + 1); later: the one forwarded token's own output
        if self.params.temperature == 0:
            tokens = rules.argmax_excluding(scores, self.mask_id, inplace=True)
        else:
            tokens = rules.multinomial_sample(scores, self.params.temperature, self.generator, exclude=self.mask_id)
        (tokens,) = rules.to_host(tokens)
        return Commit(np.ones((canvas.size, 1), dtype=bool), tokens[:, None], start=p)

    def update(self, canvas: Canvas, state: AutoregressiveState, commit: Commit) -> None:
        pass
