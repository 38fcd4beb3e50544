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

* ``eb_sampler`` (EB-Sampler, Ben-Hamu et al., arXiv 2505.24857): the candidates in ascending entropy, committing
  the longest prefix whose entropies less their largest sum to at most ``threshold`` (the entropy budget gamma,
  nats; :func:`~d3llm.decoding.rules.commit_entropy_budget`), one forward per step. Entropy as everywhere here:
  float64, from the untempered logits. Defaults from the authors' LLaDA GSM8K setting: gamma 0.01, one block of
  the whole generation.

Our cache stores keys after RoPE; the reference Fast-dLLM model caches them before RoPE and rotates on every call:
mathematically the same, not bit-identical.

Dream (SPEC 4.3, 4.4; its vanilla decoder is :mod:`~d3llm.decoding.methods.dream_vanilla`): ``block_entropy``
commits, among the (masks left in the block) lowest-entropy candidates, the lowest and every one with entropy
``< threshold`` (entropy in the logits' dtype, ``ln(p + 1e-8)``); ``fast_dllm`` spends each block's first forward
on the block's first position only (a block-local forward cannot score it: Dream's logits are shifted), then
commits the most confident mask plus every mask with confidence ``>= threshold``. Sampling is multinomial at every
position; ``eb_sampler`` samples the same way and applies the LLaDA rule above to the float64 entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from d3llm.decoding import rules
from d3llm.decoding.canvas import Canvas
from d3llm.decoding.methods.base import Commit, DecodingMethod, MethodState, RowSetup, StepPlan
from d3llm.decoding.params import Params
from d3llm.errors import GenerationError


@dataclass
class VanillaParams(Params):
    per_row = ("max_new_tokens", "steps", "temperature")
    steps: int | None = None  # None: follows max_new_tokens (one token per forward)
    max_new_tokens: int = 128
    block_size: int = 128
    temperature: float = 0.0
    remasking: str = "low_confidence"

    derived_steps = True

    def validate(self, method: str) -> None:
        self.check_blocks(method)
        self.check_steps(method)
        blocks = self.max_new_tokens // self.block_size
        if self.steps % blocks:
            raise GenerationError(
                f"{method}: {self.show('steps')} must be a multiple of the number of blocks, "
                f"{self.show('max_new_tokens')} / {self.show('block_size')} = {blocks} (e.g. steps="
                f"{max(blocks, self.steps - self.steps % blocks)}, or omit steps for one token per forward)"
            )
        self.check_temperature(method)
        self.check_choice(method, "remasking", self.remasking, ("low_confidence", "random"))


@dataclass
class BlockEntropyParams(VanillaParams):
    per_row = ("max_new_tokens", "steps", "temperature", "threshold")
    threshold: float = 0.5

    def validate(self, method: str) -> None:
        super().validate(method)
        self.check_range(method, "threshold", self.threshold, 0.0, None, "an entropy threshold in nats")


@dataclass
class EBSamplerParams(VanillaParams):
    per_row = ("max_new_tokens", "steps", "temperature", "threshold")
    threshold: float = 0.01  # the entropy budget gamma

    def validate(self, method: str) -> None:
        super().validate(method)
        self.check_range(method, "threshold", self.threshold, 0.0, None, "an entropy budget in nats")


@dataclass
class FastDLLMParams(VanillaParams):
    per_row = ("max_new_tokens", "steps", "temperature", "threshold")
    threshold: float | None = 0.9
    cache: str = "dual"

    def validate(self, method: str) -> None:
        super().validate(method)
        self.check_range(method, "threshold", self.threshold, 0.0, 1.0, "a confidence threshold", allow_none=True)
        self.check_choice(method, "cache", self.cache, ("none", "prefix", "dual"))


@dataclass
class BlockState(MethodState):
    row_fields = {"block": 0, "step": 0, "quota": 0, "inner": False, "done": False, "left": 0, "blocks": 1,
                  "steps_per_block": 1, "first": 0, "temperature": 0.0, "threshold": np.nan, "generators": None}
    block: np.ndarray  # [n] current generation block (0-based)
    step: np.ndarray  # [n] steps taken in the current block
    quota: np.ndarray  # [n, steps per block] tokens to commit at each step (quota mode)
    inner: np.ndarray  # [n] the block-initial forward is done (cached Fast-dLLM, Dream Fast-dLLM)
    done: np.ndarray  # [n] every block is decoded
    left: np.ndarray  # [n] masks left in the current block
    blocks: np.ndarray  # [n] generation blocks of the row
    steps_per_block: np.ndarray  # [n] steps / blocks
    first: np.ndarray  # [n] first candidate position (0 when the prompt holds masks, else the generation start)
    temperature: np.ndarray  # [n]
    threshold: np.ndarray  # [n] NaN: none (Fast-dLLM's quota schedule; vanilla)
    generators: list  # [n] torch.Generator or None


class BlockSequential(DecodingMethod):
    """Shared step rules of ``vanilla``, ``block_entropy``, ``eb_sampler`` and ``fast_dllm``; ``rule`` picks the
    commit rule."""

    rule: str = "quota"  # quota | entropy | budget | confidence
    swept: str = "threshold"  # the per-row parameter the commit rule compares with (state.threshold)

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **kwargs)
        if self.family == "dream" and params.remasking != "low_confidence":
            raise GenerationError(f"{self.name}: remasking={params.remasking!r} is a LLaDA option; Dream ranks "
                                  f"by entropy or confidence")

    def check_row(self, params) -> None:
        if self.family == "dream" and self.rule == "confidence" and getattr(params, self.swept) is None:
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

    @staticmethod
    def _quota(masks: np.ndarray, steps: np.ndarray, width: int) -> np.ndarray:
        """``[n, width]`` quota schedule from the masks of each row's block when it starts (``steps`` ``[n]`` steps
        per block, at most ``width``; entries past a row's steps are unused)."""
        base, rem = masks // steps, masks % steps
        return base[:, None] + (np.arange(width)[None, :] < rem[:, None])

    def _block_counts(self, canvas: Canvas) -> np.ndarray:
        """``[n, max blocks]`` masks left in every generation block (0 for blocks past a row's end)."""
        return (canvas.gen() == canvas.mask_id).reshape(canvas.size, -1, self.params.block_size).sum(-1)

    def init_state(self, canvas: Canvas, rows: list[RowSetup]) -> BlockState:
        n = canvas.size
        counts = self._block_counts(canvas)
        blocks = canvas.gen_lengths // self.params.block_size
        steps_per_block = self.row_values(rows, "steps", np.int64) // blocks
        threshold = self.row_values(rows, self.swept) if hasattr(self.params, self.swept) else np.full(n, np.nan)
        first = canvas.first_candidates()
        return BlockState(block=np.zeros(n, dtype=np.int64), step=np.zeros(n, dtype=np.int64),
                          quota=self._quota(counts[:, 0], steps_per_block, int(steps_per_block.max())), inner=np.zeros(n, dtype=bool),
                          done=np.zeros(n, dtype=bool), left=counts[:, 0].copy(), blocks=blocks,
                          steps_per_block=steps_per_block, first=first,
                          temperature=self.row_values(rows, "temperature"), threshold=threshold,
                          generators=[r.generator for r in rows])

    def plan(self, canvas: Canvas, state: BlockState) -> StepPlan:
        run = ~state.done
        b = self.params.block_size
        bs = canvas.gen_start + state.block * b
        # candidates: every mask before the block end, from the block start once the block-initial forward is done
        score_pos, width = self.windows(np.where(state.inner, bs, state.first), bs + b)
        if not self.uses_cache:
            return self.full_plan(canvas, run, score_pos, width)
        length = canvas.lengths
        start = np.where(state.inner, bs, 0)
        if self.cache_mode == "prefix":
            end, cache_length = length, bs
        else:  # dual
            end, cache_length = np.where(state.inner, bs + b, length), length
        return StepPlan(run=run, start=start, end=end, cache_length=cache_length, score_pos=score_pos,
                        score_width=width)

    def confidence_rule(self, conf: np.ndarray, cand: np.ndarray, threshold: np.ndarray) -> np.ndarray:
        """``[n, K]`` the commit of the confidence-ranked rule (``threshold`` ``[n, 1]``, the swept parameter); the
        zoo's rules (:mod:`~d3llm.decoding.methods.confidence_rules`) replace Fast-dLLM's."""
        return rules.commit_confidence(conf, cand, threshold)

    def adjust_logits(self, canvas: Canvas, state: BlockState, logits: torch.Tensor, plan: StepPlan,
                      cand: np.ndarray) -> torch.Tensor:
        """The logits the rule ranks and samples from (CreditDecoding fuses its credit here); unchanged here."""
        return logits

    def commit(self, canvas: Canvas, state: BlockState, logits: torch.Tensor, plan: StepPlan) -> Commit:
        p = self.params
        pos, width = plan.score_pos, plan.score_width
        cand = self.candidates(canvas, pos, width)
        logits = self.adjust_logits(canvas, state, logits, plan, cand)
        if self.family == "dream":
            bs = canvas.gen_start + state.block * p.block_size
            return Commit(*self._dream_rule(state, logits, cand, width, bs - pos[:, 0]), positions=pos)
        tokens = rules.sample_rows(lambda l, t, g: rules.gumbel_sample(l, t, g, exclude=self.mask_id), logits,
                                   state.temperature, width, state.generators)
        if p.remasking == "random":
            score = rules.random_rows(width, pos.shape[1], state.generators, logits.device)
        elif self.rule in ("entropy", "budget"):
            score = rules.entropy(logits)
        else:
            score = rules.confidence(logits, tokens)
        score, tokens = rules.to_host(score, tokens)
        threshold = state.threshold[:, None]
        if self.rule == "entropy":
            transfer = rules.commit_entropy_llada(score, cand, threshold)
        elif self.rule == "budget":
            transfer = rules.commit_entropy_budget(score, cand, threshold)
        else:
            transfer = None
            by_quota = np.isnan(state.threshold)
            if self.rule == "confidence" and not by_quota.all():
                transfer = self.confidence_rule(score, cand, threshold)
            if by_quota.any():
                spb = state.steps_per_block
                i = np.minimum(state.step, spb - 1)
                quota = np.where(state.step < spb, state.quota[np.arange(canvas.size), i], 1)
                by_rank = rules.commit_quota(score, cand, quota)
                transfer = by_rank if transfer is None else np.where(by_quota[:, None], by_rank, transfer)
        return Commit(transfer, tokens, positions=pos)

    def _dream_rule(self, state: BlockState, logits: torch.Tensor, cand: np.ndarray, width: np.ndarray,
                    block_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dream's commit rules (module docstring); ``block_col`` is each row's block start in window columns."""
        if self.rule in ("entropy", "budget"):
            tokens = rules.sample_rows(lambda l, t, g: rules.multinomial_sample(l, t, g, exclude=self.mask_id),
                                       logits, state.temperature, width, state.generators)
            if self.rule == "budget":
                h, tokens = rules.to_host(rules.entropy(logits), tokens)
                return rules.commit_entropy_budget(h, cand, state.threshold[:, None]), tokens
            h, tokens = rules.to_host(rules.dream_entropy(logits), tokens)
            return rules.commit_lowest_k(h, cand, state.left, state.threshold[:, None]), tokens
        conf, tokens = rules.to_host(*rules.sample_rows(
            lambda l, t, g: rules.dream_sample(l, t, None, None, "confidence", g, exclude=self.mask_id),
            logits, state.temperature, width, state.generators))
        transfer = self.confidence_rule(conf, cand, state.threshold[:, None])
        first = np.arange(cand.shape[1])[None, :] == block_col[:, None]  # block-initial forward: first position only
        return np.where(state.inner[:, None], transfer, first), tokens

    def update(self, canvas: Canvas, state: BlockState, commit: Commit) -> None:
        counts = self._block_counts(canvas)
        rows = np.arange(canvas.size)
        last = state.blocks - 1
        left = counts[rows, np.minimum(state.block, last)]
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
            state.done = state.block >= state.blocks
            nxt = counts[rows, np.minimum(state.block, last)]
            state.quota[finished] = self._quota(nxt[finished], state.steps_per_block[finished], state.quota.shape[1])
            state.left[finished] = nxt[finished]


class Vanilla(BlockSequential):
    name = "vanilla"
    Params = VanillaParams
    rule = "quota"


class BlockEntropy(BlockSequential):
    name = "block_entropy"
    Params = BlockEntropyParams
    rule = "entropy"


class EBSampler(BlockSequential):
    name = "eb_sampler"
    Params = EBSamplerParams
    rule = "budget"


class FastDLLM(BlockSequential):
    name = "fast_dllm"
    Params = FastDLLMParams
    rule = "confidence"

    @property
    def cache_mode(self) -> str:
        return self.params.cache
