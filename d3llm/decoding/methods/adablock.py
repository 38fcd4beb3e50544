"""AdaBlock (Lu et al., arXiv 2509.26432; lgxi24/AdaBlock-dLLM ``llada/generate_adablock.py``): Fast-dLLM's
threshold decoding with blocks whose end is chosen at run time, per row.

Each block starts with a forward of the whole sequence (with a cache, the one that refreshes it). From its logits,
in the look-ahead window ``[start, start + min(int(0.25 * max_new_tokens), remaining))``, the positions whose
predicted token is a **delimiter** (``delimiter_ids``: token ids that end a semantic step, e.g. the tokenizer's
newline) are candidates for the block's end: the most confident one ends the block just after itself when its
confidence reaches ``delimiter_threshold``; otherwise the block is ``block_size`` long (cut at the canvas end). That
forward commits, inside the new block, the most confident mask plus every mask at confidence ``>= threshold``;
then threshold steps follow until the block has no mask (none when that forward filled it):

* ``cache="none"``: every step forwards the whole sequence;
* ``"prefix"``: the block-initial forward's keys and values before the block are kept; steps forward the block and
  everything after it against them;
* ``"dual"``: every position is kept; steps forward only the block, replacing its keys and values.

The cache boundary follows each row's own block (its plan's ``start`` / ``cache_length``), so rows of one batch
decode blocks of different lengths. ``delimiter_threshold > 1`` never adapts: uncached, that is ``fast_dllm`` with
``cache="none"`` exactly. Defaults from the authors' LLaDA GSM8K script: ``block_size`` 32 (their initial block
length), ``threshold`` 0.9, ``delimiter_threshold`` 0.3. ``delimiter_ids`` has no default: the ids are the
tokenizer's (``delimiter_ids_from``; the CLI and evaluation take the tokenizer's newline when none is given), since
198 (their LLaDA config's newline) is not a newline in every vocabulary.

Differences from the authors' code: the mask token is never predicted (their argmax can pick it), rows are
independent in a batch (theirs asserts batch 1), and confidences are float64 everywhere (theirs too, for the rule;
the delimiter's from the raw logits, as here). LLaDA only: the authors' Dream variant is not implemented here.
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

WINDOW_FRACTION = 0.25  # the look-ahead window, as a fraction of max_new_tokens


def delimiter_ids_from(tokenizer, texts: tuple[str, ...] = ("\n",)) -> tuple[int, ...]:
    """The token ids that spell each of ``texts`` alone in ``tokenizer``'s vocabulary (a text that takes several
    tokens is left out); an error when none does."""
    ids = []
    for text in texts:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1:
            ids.append(int(encoded[0]))
    if not ids:
        raise GenerationError(f"adablock: no delimiter among {list(texts)!r} is a single token of this tokenizer; "
                              f"pass delimiter_ids=[...] (the token ids that end a block)")
    return tuple(ids)


@dataclass
class AdaBlockParams(Params):
    per_row = ("max_new_tokens", "temperature", "threshold")
    max_new_tokens: int = 512
    block_size: int = 32
    temperature: float = 0.0
    threshold: float = 0.9
    delimiter_ids: tuple | None = None
    delimiter_threshold: float = 0.3
    cache: str = "dual"

    def validate(self, method: str) -> None:
        self.check_int(method, "max_new_tokens", self.max_new_tokens)
        self.check_int(method, "block_size", self.block_size, maximum=self.max_new_tokens,
                       why=self.show("max_new_tokens"))
        self.check_temperature(method)
        self.check_range(method, "threshold", self.threshold, 0.0, 1.0, "a confidence threshold")
        self.check_range(method, "delimiter_threshold", self.delimiter_threshold, 0.0, None,
                         "the confidence a delimiter needs to end a block (above 1: never)")
        self.check_choice(method, "cache", self.cache, ("none", "prefix", "dual"))
        ids = self.delimiter_ids
        if ids is None:
            raise GenerationError(f"{method}: delimiter_ids is not set: give the token ids that end a block (e.g. "
                                  f"delimiter_ids=d3llm.decoding.methods.adablock.delimiter_ids_from(tokenizer), "
                                  f"the tokenizer's newline)")
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            ids = (ids,)
        if (not isinstance(ids, (list, tuple)) or not ids
                or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0 for i in ids)):
            raise GenerationError(f"{method}: delimiter_ids must be a non-empty list of token ids, got {ids!r}"
                                  f"{self.label('delimiter_ids')}")
        self.delimiter_ids = tuple(int(i) for i in ids)


@dataclass
class AdaBlockState(MethodState):
    row_fields = {"start": 0, "end": 0, "inner": False, "done": False, "temperature": 0.0, "threshold": 0.0,
                  "generators": None}
    start: np.ndarray  # [n] the current block's first position (canvas index)
    end: np.ndarray  # [n] its end, once the block-initial forward chose it (else unused)
    inner: np.ndarray  # [n] the block-initial forward is done
    done: np.ndarray  # [n]
    temperature: np.ndarray
    threshold: np.ndarray
    generators: list


class AdaBlock(DecodingMethod):
    name = "adablock"
    Params = AdaBlockParams

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **kwargs)
        if self.family != "llada":
            raise GenerationError("adablock: only LLaDA is supported (the authors' Dream variant is not implemented "
                                  "here); use fast_dllm or multi_block for Dream")
        self._delimiters = np.array(params.delimiter_ids, dtype=np.int64)

    @property
    def uses_cache(self) -> bool:
        return self.params.cache != "none"

    def init_state(self, canvas: Canvas, rows: list[RowSetup]) -> AdaBlockState:
        n = canvas.size
        return AdaBlockState(start=canvas.gen_start.copy(), end=canvas.gen_start.copy(), inner=np.zeros(n, bool),
                             done=np.zeros(n, bool), temperature=self.row_values(rows, "temperature"),
                             threshold=self.row_values(rows, "threshold"), generators=[r.generator for r in rows])

    def _window(self, canvas: Canvas, st: AdaBlockState) -> np.ndarray:
        """``[n]`` the look-ahead window's width at the block start (capped by what remains)."""
        remaining = canvas.gen_start + canvas.gen_lengths - st.start
        return np.minimum((WINDOW_FRACTION * canvas.gen_lengths).astype(np.int64), remaining)

    def plan(self, canvas: Canvas, st: AdaBlockState) -> StepPlan:
        b = self.params.block_size
        gen_end = canvas.gen_start + canvas.gen_lengths
        default_end = np.minimum(st.start + b, gen_end)
        # block-initial: score the window and the default block; then the chosen block
        hi = np.where(st.inner, st.end, np.maximum(st.start + self._window(canvas, st), default_end))
        score_pos, width = self.windows(st.start, hi)
        run = ~st.done
        length = canvas.lengths
        if not self.uses_cache:
            return self.full_plan(canvas, run, score_pos, width)
        start = np.where(st.inner, st.start, 0)
        if self.params.cache == "prefix":
            end, cache_length = length, st.start
        else:
            end, cache_length = np.where(st.inner, st.end, length), length
        return StepPlan(run=run, start=start, end=end, cache_length=cache_length, score_pos=score_pos,
                        score_width=width)

    def commit(self, canvas: Canvas, st: AdaBlockState, logits: torch.Tensor, plan: StepPlan) -> Commit:
        pos, width = plan.score_pos, plan.score_width
        tokens = rules.sample_rows(lambda l, t, g: rules.gumbel_sample(l, t, g, exclude=self.mask_id), logits,
                                   st.temperature, width, st.generators)
        conf, tokens = rules.to_host(rules.confidence(logits, tokens), tokens)
        cols = np.arange(pos.shape[1])[None, :]
        fresh = ~st.inner
        if fresh.any():  # choose each starting block's end: just after its most confident delimiter, if sure
            window = self._window(canvas, st)
            is_delim = np.isin(tokens, self._delimiters) & (cols < window[:, None])
            score = np.where(is_delim, conf, -1.0)
            best = score.argmax(axis=1)
            sure = score[np.arange(len(best)), best] >= self.params.delimiter_threshold
            gen_end = canvas.gen_start + canvas.gen_lengths
            default_end = np.minimum(st.start + self.params.block_size, gen_end)
            chosen = np.where(is_delim.any(axis=1) & sure, st.start + best + 1, default_end)
            st.end = np.where(fresh, chosen, st.end)
            st.inner = np.ones_like(st.inner)
        cand = self.candidates(canvas, pos, width) & (pos < st.end[:, None])
        return Commit(rules.commit_confidence(conf, cand, st.threshold[:, None]), tokens, positions=pos)

    def update(self, canvas: Canvas, st: AdaBlockState, commit: Commit) -> None:
        cols = np.arange(canvas.x.shape[1])[None, :]
        in_block = (cols >= st.start[:, None]) & (cols < st.end[:, None])
        finished = ~(in_block & (canvas.x == self.mask_id)).any(axis=1)
        if finished.any():
            st.start = np.where(finished, st.end, st.start)
            st.inner = st.inner & ~finished
            st.done = st.start >= canvas.gen_start + canvas.gen_lengths
