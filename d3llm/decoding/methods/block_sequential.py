"""Block-sequential baselines: one block at a time, left to right, each step committing part of the block.

* ``vanilla`` (SPEC 4.1): LLaDA low-confidence (or random) remasking. ``steps`` forwards per generation are split
  evenly over the blocks; step i of a block commits ``quota[i]`` tokens (``m // s`` plus one for the first
  ``m % s`` steps, m = masks of the block when it starts, s = steps per block). ``steps == max_new_tokens`` gives
  exactly one token per forward.
* ``block_entropy`` (SPEC 4.3, dParallel style): every candidate with entropy ``<= threshold`` plus the
  lowest-entropy one, one forward per step.
* ``fast_dllm`` (SPEC 4.4, Fast-dLLM v1): the most confident candidate plus every candidate with confidence
  ``>= threshold`` (quota mode when ``threshold`` is None), with ``cache`` in {none, prefix, dual}:

  - ``prefix``: per block one full forward that keeps the keys/values, truncated to the block start; then steps
    forward the block and everything after it against that prefix (read-only).
  - ``dual``: per block one full forward keeping every position; then steps forward only the block, replacing its
    cached keys/values in place (queries see prefix, fresh block and the stale suffix).

  With a cache the block-initial forward commits too, and at least one cached step follows it even when that
  forward finished the block (as in the reference). Candidates of a step are the masked positions before the end
  of the current block.

Our cache stores keys after RoPE; the reference Fast-dLLM model caches them before RoPE and rotates on every call:
mathematically the same, not bit-identical.

Dream (SPEC 4.3, 4.4; its vanilla decoder is :mod:`~d3llm.decoding.methods.dream_vanilla`): ``block_entropy``
commits, among the (masks left in the block) lowest-entropy candidates, the lowest and every one with entropy
``< threshold`` (entropy in the logits' dtype, ``ln(p + 1e-8)``); ``fast_dllm`` spends each block's first forward
on the block's first position only (a block-local forward cannot score it: Dream's logits are shifted), then
commits the most confident mask plus every mask with confidence ``>= threshold``. Sampling is multinomial at every
position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from d3llm.decoding import rules
from d3llm.decoding.canvas import Canvas
from d3llm.decoding.methods.base import Commit, DecodingMethod, MethodState, StepPlan
from d3llm.decoding.params import Params
from d3llm.errors import GenerationError


@dataclass
class VanillaParams(Params):
    steps: int | None = None  # None: follows max_new_tokens (one token per forward)
    max_new_tokens: int = 128
    block_size: int = 128
    temperature: float = 0.0
    remasking: str = "low_confidence"

    derived_steps = True

    def validate(self, method: str) -> None:
        self.check_blocks(method)
        self.check_int(method, "steps", self.steps)
        blocks = self.max_new_tokens // self.block_size
        if self.steps % blocks:
            raise GenerationError(
                f"{method}: {self.show('steps')} must be a multiple of the number of blocks, "
                f"{self.show('max_new_tokens')} / {self.show('block_size')} = {blocks} (e.g. steps="
                f"{max(blocks, self.steps - self.steps % blocks)}, or omit steps for one token per forward)"
            )
        self.check_range(method, "temperature", self.temperature, 0.0, None, "sampling temperature")
        self.check_choice(method, "remasking", self.remasking, ("low_confidence", "random"))


@dataclass
class BlockEntropyParams(VanillaParams):
    threshold: float = 0.5

    def validate(self, method: str) -> None:
        super().validate(method)
        self.check_range(method, "threshold", self.threshold, 0.0, None, "an entropy threshold in nats")


@dataclass
class FastDLLMParams(VanillaParams):
    threshold: float | None = 0.9
    cache: str = "dual"

    def validate(self, method: str) -> None:
        super().validate(method)
        self.check_range(method, "threshold", self.threshold, 0.0, 1.0, "a confidence threshold", allow_none=True)
        self.check_choice(method, "cache", self.cache, ("none", "prefix", "dual"))


@dataclass
class BlockState(MethodState):
    row_fields = ("block", "step", "quota", "inner", "done", "left")
    block: np.ndarray  # [n] current generation block (0-based)
    step: np.ndarray  # [n] steps taken in the current block
    quota: np.ndarray  # [n, steps per block] tokens to commit at each step (quota mode)
    inner: np.ndarray  # [n] the block-initial forward is done (cached Fast-dLLM, Dream Fast-dLLM)
    done: np.ndarray  # [n] every block is decoded
    left: np.ndarray | None = None  # [n] masks left in the current block
    prompt_has_masks: bool = False


class BlockSequential(DecodingMethod):
    """Shared loop of ``vanilla``, ``block_entropy`` and ``fast_dllm``; ``rule`` picks the commit rule."""

    rule: str = "quota"  # quota | entropy | confidence

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **kwargs)
        if self.family == "dream":
            if params.remasking != "low_confidence":
                raise GenerationError(f"{self.name}: remasking={params.remasking!r} is a LLaDA option; Dream ranks "
                                      f"by entropy or confidence")
            if self.rule == "confidence" and params.threshold is None:
                raise GenerationError(f"{self.name}: Dream needs a confidence threshold (threshold=None selects "
                                      f"LLaDA's quota schedule)")

    @property
    def phased(self) -> bool:
        """Blocks start with a dedicated forward (cached Fast-dLLM, and Dream's Fast-dLLM in every cache mode)."""
        return self.uses_cache or (self.family == "dream" and self.rule == "confidence")

    @property
    def cache_mode(self) -> str:
        return "none"

    @property
    def uses_cache(self) -> bool:
        return self.cache_mode != "none"

    @property
    def steps_per_block(self) -> int:
        p = self.params
        return p.steps // (p.max_new_tokens // p.block_size)

    def _quota(self, masks: np.ndarray) -> np.ndarray:
        """``[n, s]`` quota schedule from the masks of each row's block when it starts."""
        s = self.steps_per_block
        base, rem = masks // s, masks % s
        return base[:, None] + (np.arange(s)[None, :] < rem[:, None])

    def _block_counts(self, canvas: Canvas) -> np.ndarray:
        """``[n, blocks]`` masks left in every generation block."""
        gen = canvas.x[:, canvas.gen_start:]
        return (gen == canvas.mask_id).reshape(canvas.size, -1, self.params.block_size).sum(-1)

    def init_state(self, canvas: Canvas) -> BlockState:
        n = canvas.size
        counts = self._block_counts(canvas)
        prompt_masks = bool((canvas.x[:, : canvas.gen_start] == canvas.mask_id).any())
        return BlockState(block=np.zeros(n, dtype=np.int64), step=np.zeros(n, dtype=np.int64),
                          quota=self._quota(counts[:, 0]), inner=np.zeros(n, dtype=bool),
                          done=np.zeros(n, dtype=bool), left=counts[:, 0].copy(), prompt_has_masks=prompt_masks)

    def plan(self, canvas: Canvas, state: BlockState, step: int) -> StepPlan:
        run = ~state.done
        if not self.uses_cache:
            return self.full_plan(canvas, run)
        n, length, b = canvas.size, canvas.length, self.params.block_size
        bs = canvas.gen_start + state.block * b
        inner = state.inner
        start = np.where(inner, bs, 0)
        if self.cache_mode == "prefix":
            end = np.full(n, length, dtype=np.int64)
            cache_length = bs
        else:  # dual
            end = np.where(inner, bs + b, length)
            cache_length = np.full(n, length, dtype=np.int64)
        return StepPlan(run=run, start=start, end=end, cache_length=cache_length)

    def commit(self, canvas: Canvas, state: BlockState, logits: torch.Tensor, offset: int, plan: StepPlan) -> Commit:
        p = self.params
        bs = canvas.gen_start + state.block * p.block_size
        be = bs + p.block_size
        first = 0 if state.prompt_has_masks else canvas.gen_start
        lo = np.where(state.inner, bs, first)  # block-initial and uncached steps: every mask before the block end
        w0, w1, cand = self.window_candidates(canvas, lo, be)
        window = logits[:, w0 - offset : w1 - offset]
        if self.family == "dream":
            return Commit(*self._dream_rule(state, window, cand, bs - w0), start=w0)
        tokens = rules.gumbel_sample(window, p.temperature, self.generator, exclude=self.mask_id)
        if p.remasking == "random":
            score = rules.random_scores(cand.shape, window.device, self.generator)
        elif self.rule == "entropy":
            score = rules.entropy(window)
        else:
            score = rules.confidence(window, tokens)
        score, tokens = rules.to_host(score, tokens)
        if self.rule == "entropy":
            transfer = rules.commit_entropy_llada(score, cand, p.threshold)
        elif self.rule == "confidence" and p.threshold is not None:
            transfer = rules.commit_confidence(score, cand, p.threshold)
        else:
            i = np.minimum(state.step, state.quota.shape[1] - 1)
            quota = np.where(state.step < state.quota.shape[1], state.quota[np.arange(canvas.size), i], 1)
            transfer = rules.commit_quota(score, cand, quota)
        return Commit(transfer, tokens, start=w0)

    def _dream_rule(self, state: BlockState, window: torch.Tensor, cand: np.ndarray, block_col: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Dream's commit rules (module docstring); ``block_col`` is each row's block start in window columns."""
        p = self.params
        if self.rule == "entropy":
            tokens = rules.multinomial_sample(window, p.temperature, self.generator, exclude=self.mask_id)
            h, tokens = rules.to_host(rules.dream_entropy(window), tokens)
            return rules.commit_lowest_k(h, cand, state.left, p.threshold), tokens
        conf, tokens = rules.to_host(*rules.dream_sample(window, p.temperature, None, None, "confidence",
                                                         self.generator, exclude=self.mask_id))
        transfer = rules.commit_confidence(conf, cand, p.threshold)
        first = np.arange(cand.shape[1])[None, :] == block_col[:, None]  # block-initial forward: first position only
        return np.where(state.inner[:, None], transfer, first), tokens

    def update(self, canvas: Canvas, state: BlockState, commit: Commit) -> None:
        counts = self._block_counts(canvas)
        rows = np.arange(canvas.size)
        left = counts[rows, np.minimum(state.block, counts.shape[1] - 1)]
        state.left = left
        state.step += 1
        if self.phased:
            finished = state.inner & (left == 0)
            state.inner = state.inner | ~finished  # the step after the block-initial forward is a cached one
            state.inner[finished] = False
        else:
            finished = left == 0
        if finished.any():
            state.block[finished] += 1
            state.step[finished] = 0
            state.done = state.block >= counts.shape[1]
            nxt = np.minimum(state.block, counts.shape[1] - 1)
            state.quota[finished] = self._quota(counts[rows, nxt])[finished]
            state.left[finished] = counts[rows, nxt][finished]


class Vanilla(BlockSequential):
    name = "vanilla"
    Params = VanillaParams
    rule = "quota"


class BlockEntropy(BlockSequential):
    name = "block_entropy"
    Params = BlockEntropyParams
    rule = "entropy"


class FastDLLM(BlockSequential):
    name = "fast_dllm"
    Params = FastDLLMParams
    rule = "confidence"

    @property
    def cache_mode(self) -> str:
        return self.params.cache
