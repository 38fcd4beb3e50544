"""d3LLM entropy-based multi-block decoding, with an optional delayed KV cache, refresh and early stop
(SPEC 4.5-4.9).

Several ``block_size`` blocks decode concurrently in a pipeline. Block 0 is the prompt; generation block b >= 1
covers canvas columns ``[G + (b-1)B, G + bB)``. A created block that is not *fully activated* is
*semi-activated*: its masks are candidates but nothing forces its progress. Each iteration:

1. early stop (``early_stop`` and an EOS id): after the first EOS every position becomes EOS, blocks after it are
   finished, no new block is created;
2. a block becomes fully activated once its predecessor's progress (decoded fraction) reaches
   ``decoded_token_threshold``;
3. at most one new block is created, when the last block's progress reaches ``block_add_threshold`` (or it has no
   mask left); it is fully activated at once if that progress also reaches ``decoded_token_threshold``;
4. one forward (whole canvas, or everything after the cached prefix); candidates are the masked positions before
   the end ``a`` of the last block that is fully activated or still has masks;
5. commit: LLaDA takes the lowest-entropy candidate plus every candidate with entropy ``<= threshold``; Dream every
   candidate with entropy ``< threshold``. With ``commit_rule="budget"`` (EB-Sampler's rule, both families) the
   candidates of every active block together are taken in ascending entropy while the entropies before each sum to
   at most ``threshold`` (an entropy budget for the step, nats, instead of a per-token bound). The first fully
   activated block with masks that got nothing gets its lowest-entropy mask (LLaDA: the argmax token; Dream: the
   sampled token).

Delayed KV cache (``cache_delay_iter`` = D, None = no cache): a finished block (prompt included) is appended to the
prefix cache only D iterations after it was first seen finished; while a block waits ("stabilises") every forward
is a full refresh whose logits are that step's logits (``refresh_while_waiting=False``: the forward starts at the
cached prefix as usual, so the waiting blocks are recomputed in its slice and the prefix's keys and values are kept);
``refresh_interval`` R makes every R-th iteration a refresh.
Cached forwards still run from the end of the cached prefix to the end of the canvas, unless ``suffix_cache``:
then a forward ends with the last active block and attends to the keys and values of the masked tail after it
computed by an earlier forward; the tail is recomputed every ``suffix_refresh_interval`` iterations (see
:meth:`MultiBlock._suffix_due` and :meth:`MultiBlock._suffix_end`), so each step costs what its active blocks
cost.

One deliberate difference from the reference: when a periodic refresh falls on an iteration that appends newly
cacheable blocks, the reference appends against the stale prefix cache and skips the refresh; here the refresh
happens and the appended blocks come from its full forward (so ``refresh_interval=1`` is exactly the uncached
decoder). ``reference_exact=True`` restores the reference's order.

Block state is kept per row in numpy arrays ``[rows, blocks + 1]`` (index 0 = prompt), updated with vectorised
operations that reproduce the reference's sequential rules, next to the host canvas they read (masks per block,
first EOS). Only the candidates' scores come from the device.

Dream runs the same pipeline with its own commit rule and, with a cache, forwards from one position before the
cached prefix so that the first uncached position is scored by its left neighbour's output (the clean variant of
SPEC 4.6); its KV scan caches blocks contiguously, like LLaDA's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from d3llm.decoding import rules
from d3llm.decoding.canvas import Canvas
from d3llm.decoding.methods.base import Commit, DecodingMethod, MethodState, RowSetup, StepPlan
from d3llm.decoding.params import Params
from d3llm.decoding.rows import pad_columns
from d3llm.errors import GenerationError

SUFFIX_REFRESH_INTERVAL = 4  # suffix_cache: iterations between forwards that recompute the masked tail


@dataclass
class MultiBlockParams(Params):
    per_row = ("max_new_tokens", "temperature", "threshold")
    max_new_tokens: int = 512
    block_size: int = 32
    temperature: float = 0.0
    remasking: str = "low_confidence"
    threshold: float = 0.5
    block_add_threshold: float = 0.5
    decoded_token_threshold: float = 0.5
    cache_delay_iter: int | None = None
    refresh_interval: int | None = None
    early_stop: bool = False
    reference_exact: bool = False
    refresh_while_waiting: bool = True
    suffix_cache: bool = False
    suffix_refresh_interval: int | None = SUFFIX_REFRESH_INTERVAL
    commit_rule: str = "entropy"  # entropy: a per-token bound; budget: EB-Sampler's budget over the step

    def validate(self, method: str) -> None:
        self.check_blocks(method)
        self.check_temperature(method)
        self.check_choice(method, "remasking", self.remasking, ("low_confidence", "random"))
        self.check_choice(method, "commit_rule", self.commit_rule, ("entropy", "budget"))
        if self.commit_rule == "budget" and self.remasking != "low_confidence":
            raise GenerationError(f"{method}: commit_rule='budget' spends an entropy budget; remasking="
                                  f"{self.remasking!r} ranks by random scores, not entropies (use "
                                  f"remasking='low_confidence'){self.label('commit_rule')}")
        self.check_range(method, "threshold", self.threshold, 0.0, None,
                         "an entropy budget in nats" if self.commit_rule == "budget" else "an entropy threshold in nats")
        self.check_range(method, "block_add_threshold", self.block_add_threshold, 0.0, 1.0,
                         "the progress of the last block that opens a new one")
        self.check_range(method, "decoded_token_threshold", self.decoded_token_threshold, 0.0, 1.0,
                         "the progress of the previous block that fully activates a block")
        self.check_int(method, "cache_delay_iter", self.cache_delay_iter, minimum=1, allow_none=True)
        self.check_int(method, "refresh_interval", self.refresh_interval, minimum=1, allow_none=True)
        self.check_int(method, "suffix_refresh_interval", self.suffix_refresh_interval, minimum=1, allow_none=True)
        for name in ("early_stop", "reference_exact", "refresh_while_waiting", "suffix_cache"):
            self.check_bool(method, name)
        if not self.refresh_while_waiting and self.reference_exact:
            raise GenerationError(f"{method}: refresh_while_waiting=False and reference_exact do not combine (the "
                                  f"reference always refreshes while a block waits){self.label('refresh_while_waiting')}")
        if self.suffix_cache and self.cache_delay_iter is None:
            raise GenerationError(f"{method}: suffix_cache=True needs the delayed KV cache: set cache_delay_iter "
                                  f"(e.g. 2){self.label('suffix_cache')}")
        if self.suffix_cache and self.reference_exact:
            raise GenerationError(f"{method}: suffix_cache and reference_exact do not combine (the reference has no "
                                  f"suffix cache){self.label('suffix_cache')}")


@dataclass
class MultiBlockState(MethodState):
    row_fields = {"created": False, "masks": 0, "full": False, "done_at": -1, "cached": False, "next_block": 2,
                  "cache_len": 0, "has_kv": False, "tail_kv": False, "nfe": 0, "any_mask": False, "eos_pos": -1,
                  "eos_block_masks": 0, "masks_before_eos": 0, "canvas_masks": 0, "start": 0, "end": 0, "blocks": 0,
                  "first": 0,
                  "eos": -1, "early_stop": False, "temperature": 0.0, "threshold": 0.0, "generators": None}
    step_fields = ("pos", "valid", "in_f", "suffix_due")
    created: np.ndarray  # [n, K] block exists (K = most blocks + 1, index 0 = prompt)
    masks: np.ndarray  # [n, K] masks left (bookkeeping)
    full: np.ndarray  # [n, K] fully activated
    done_at: np.ndarray  # [n, K] iteration at which the block was first seen finished (-1: not yet)
    cached: np.ndarray  # [n, K] the block is part of the cached prefix
    next_block: np.ndarray  # [n] id of the next block to create
    cache_len: np.ndarray  # [n] end of the cached prefix (the decoder's count)
    has_kv: np.ndarray  # [n] a cache exists for the row
    tail_kv: np.ndarray  # [n] suffix_cache: the cache holds keys and values of every position of the row
    nfe: np.ndarray  # [n] iterations (the reference's NFE counter while decoding)
    # canvas statistics from the last transfer
    any_mask: np.ndarray  # [n] a mask is left in the generation region
    eos_pos: np.ndarray  # [n] first EOS position in the generation region (-1: none)
    eos_block_masks: np.ndarray  # [n] masks from the EOS block's start to the EOS (inclusive)
    masks_before_eos: np.ndarray  # [n] masks in the generation region up to the EOS
    canvas_masks: np.ndarray  # [n, K - 1] masks per generation block in the canvas
    # geometry and parameters of each row
    start: np.ndarray  # [n, K] first position of every block (blocks past a row's end: unused)
    end: np.ndarray  # [n, K] one past the last position of every block
    blocks: np.ndarray  # [n] generation blocks of the row
    first: np.ndarray  # [n] first candidate position without a cache (0 when the prompt holds masks)
    eos: np.ndarray  # [n] end-of-text id (-1: none)
    early_stop: np.ndarray  # [n] early stop applies (the parameter and an EOS id)
    temperature: np.ndarray  # [n]
    threshold: np.ndarray  # [n]
    generators: list  # [n]
    # per-iteration values handed from plan() to commit()
    pos: np.ndarray | None = None  # [n, K] position of each candidate (padding entries: any position of the slice)
    valid: np.ndarray | None = None  # [n, K] the entry is a real candidate
    in_f: np.ndarray | None = None  # [n, K] the candidate lies in the row's guaranteed block (None: no row has one)
    suffix_due: np.ndarray | None = None  # [n] suffix_cache: this forward recomputes the masked tail


class MultiBlock(DecodingMethod):
    name = "multi_block"
    Params = MultiBlockParams

    def __init__(self, params: MultiBlockParams, **kwargs) -> None:
        super().__init__(params, **kwargs)
        # Whether a block with m masks left (m = 0..block_size) has reached each threshold. The progress
        # 1 - m / block_size is computed once per m, in float64 as the reference's Python floats.
        progress = 1.0 - np.arange(params.block_size + 1) / float(params.block_size)
        self._activates = progress >= params.decoded_token_threshold
        self._opens = progress >= params.block_add_threshold

    @property
    def uses_cache(self) -> bool:
        return self.params.cache_delay_iter is not None

    # -- state -----------------------------------------------------------------------------------------------------
    def init_state(self, canvas: Canvas, rows: list[RowSetup]) -> MultiBlockState:
        n, p, b = canvas.size, self.params, self.params.block_size
        g = canvas.gen_start
        blocks = canvas.gen_lengths // b
        k = int(blocks.max()) + 1
        start = g[:, None] + (np.arange(k) - 1) * b
        start[:, 0] = 0
        end = start + b
        end[:, 0] = g
        eos = np.array([-1 if r.eos_id is None else r.eos_id for r in rows], dtype=np.int64)
        state = MultiBlockState(
            created=np.zeros((n, k), dtype=bool), masks=np.zeros((n, k), dtype=np.int64),
            full=np.zeros((n, k), dtype=bool), done_at=np.full((n, k), -1, dtype=np.int64),
            cached=np.zeros((n, k), dtype=bool), next_block=np.full(n, 2, dtype=np.int64),
            cache_len=np.zeros(n, dtype=np.int64), has_kv=np.zeros(n, dtype=bool),
            tail_kv=np.zeros(n, dtype=bool), nfe=np.zeros(n, dtype=np.int64),
            any_mask=np.ones(n, dtype=bool), eos_pos=np.full(n, -1, dtype=np.int64),
            eos_block_masks=np.zeros(n, dtype=np.int64), masks_before_eos=np.zeros(n, dtype=np.int64),
            canvas_masks=np.full((n, k - 1), b, dtype=np.int64), start=start, end=end, blocks=blocks,
            first=canvas.first_candidates(), eos=eos, early_stop=p.early_stop & (eos >= 0),
            temperature=self.row_values(rows, "temperature"), threshold=self.row_values(rows, "threshold"),
            generators=[r.generator for r in rows],
        )
        state.created[:, :2] = True
        state.full[:, 0] = True
        state.done_at[:, 0] = 0
        state.masks[:, 1] = b
        state.full[:, 1] = 1.0 >= p.decoded_token_threshold
        self._refresh_stats(canvas, state)
        return state

    # -- plan ------------------------------------------------------------------------------------------------------
    def plan(self, canvas: Canvas, st: MultiBlockState) -> StepPlan:
        n = canvas.size
        blocks = st.blocks
        ids = np.arange(st.created.shape[1])
        rows = np.arange(n)

        active = st.any_mask | (st.next_block <= blocks)
        st.nfe += active

        eos_seen = snapshot = None
        if st.early_stop.any():
            eos_seen = active & st.early_stop & (st.eos_pos >= 0)
            if eos_seen.any():
                snapshot = self._apply_early_stop(canvas, st, eos_seen, ids)
                active &= ~(eos_seen & (st.masks_before_eos == 0))

        masks = st.masks  # the prompt block has none: its progress is 1
        st.full[:, 1:] |= st.created[:, 1:] & self._activates[masks[:, :-1]]

        last = st.next_block - 1
        last_masks = masks[rows, last]
        grow = active & (last < blocks) & (last > 0) & (self._opens[last_masks] | (last_masks == 0))
        if eos_seen is not None:
            grow &= ~eos_seen
        if grow.any():
            r, b = rows[grow], st.next_block[grow]
            st.created[r, b] = True
            masks[r, b] = st.canvas_masks[r, b - 1]
            st.full[r, b] = self._activates[last_masks[grow]]
            st.next_block[grow] += 1

        has_masks = masks > 0
        last_active = (st.created & (st.full | has_masks)).cumsum(axis=1).argmax(axis=1)
        active &= last_active > 0
        a = st.end[rows, last_active]

        if not self.uses_cache:
            lo = st.first
            plan = self.full_plan(canvas, active, None, None)
        else:
            plan = self._plan_cache(canvas, st, active, has_masks, ids, a)
            active = plan.run
            if snapshot is not None and self.params.suffix_cache:
                # a row whose forward stops before the tail scores the masks left after the fill (the reference,
                # and a row forwarding to its end, also score the masks it just filled with end-of-text)
                short = ~st.suffix_due
                snapshot[short] = canvas.x[short] == canvas.mask_id
            lo = np.maximum(plan.start, canvas.gen_start)

        fa = st.created & st.full & has_masks
        has_f = fa.any(axis=1)
        f = fa.argmax(axis=1)
        plan.score_width = self._gather_candidates(canvas, st, lo, a, snapshot, has_f, st.start[rows, f],
                                                   st.end[rows, f])
        plan.score_pos = st.pos
        plan.run = active
        if self.params.suffix_cache:
            plan.end = self._suffix_end(canvas, st, plan)
        return plan

    def _gather_candidates(self, canvas: Canvas, st: MultiBlockState, lo: np.ndarray, a: np.ndarray,
                           snapshot: np.ndarray | None, has_f: np.ndarray, f_start: np.ndarray, f_end: np.ndarray
                           ) -> np.ndarray:
        """This iteration's candidates, listed before the forward: the masked positions (as of the iteration's
        start, before early stop) in ``[lo, a)`` of each row, in position order (``st.pos`` ``[n, K]``, padded with
        the row's ``lo`` where ``st.valid`` is False), and which of them lie in the guaranteed block. Returns the
        width of each row's random draws: its candidate count, at least 1 (a row without candidates draws as
        if it had one, as a batch of one does)."""
        w0, w1 = int(lo.min()), int(a.max())
        cand = snapshot[:, w0:w1].copy() if snapshot is not None else canvas.x[:, w0:w1] == canvas.mask_id
        if (lo != w0).any() or (a != w1).any():
            cols = np.arange(w0, w1)
            cand &= (cols >= lo[:, None]) & (cols < a[:, None])
        if canvas.size == 1:  # no padding between rows
            pos = cand[0].nonzero()[0][None, :] + w0
            st.valid = np.ones(pos.shape, dtype=bool) if pos.size else np.zeros((1, 1), dtype=bool)
            st.pos = pos if pos.size else lo[:, None]
            counts = np.array([pos.size])
        else:
            rr, cc = np.nonzero(cand)
            counts = np.bincount(rr, minlength=canvas.size)
            k = max(int(counts.max()), 1)
            st.valid = np.arange(k)[None, :] < counts[:, None]
            st.pos = np.repeat(lo[:, None], k, axis=1)
            st.pos[rr, np.arange(rr.size) - (np.cumsum(counts) - counts)[rr]] = cc + w0
        st.in_f = None
        if has_f.any():
            st.in_f = st.valid & (st.pos >= f_start[:, None]) & (st.pos < f_end[:, None]) & has_f[:, None]
        return np.maximum(counts, 1)

    def _apply_early_stop(self, canvas: Canvas, st: MultiBlockState, eos_seen: np.ndarray, ids: np.ndarray
                          ) -> np.ndarray | None:
        """SPEC 4.7: fill after the first EOS with EOS, finish the blocks after it, pre-create the rest. Returns the
        masks of the canvas before the fill (this iteration's candidates), or None when the fill changed nothing."""
        p = self.params
        e = st.eos_pos
        rows = np.arange(canvas.size)
        cols = np.arange(canvas.width)[None, :]
        after_eos = (cols > np.where(eos_seen, e, canvas.width)[:, None]) & (cols < canvas.lengths[:, None])
        eos = st.eos[:, None]
        snapshot = None
        if ((canvas.x != eos) & after_eos).any():
            snapshot = canvas.x == canvas.mask_id  # this iteration's candidates are read before the fill
            np.copyto(canvas.x, eos, where=after_eos)

        blk = np.where(eos_seen, (e - canvas.gen_start) // p.block_size + 1, 0)
        after = ids[None, :] > blk[:, None]
        at = ids[None, :] == blk[:, None]
        if self.family == "dream":  # every block recounted from the canvas
            new = np.zeros_like(st.masks)
            new[:, 1:] = st.canvas_masks
        else:  # only the blocks at and after the EOS change
            new = st.masks.copy()
        new = np.where(after, 0, np.where(at, st.eos_block_masks[:, None], new))
        changed = eos_seen[:, None] & st.created & (ids[None, :] >= 1) & (new != st.masks)
        st.masks = np.where(changed, new, st.masks)
        st.full |= changed & (new == 0)

        blocks = st.blocks
        nb = st.next_block
        precreate = eos_seen & (nb <= blocks)
        precreate &= st.start[rows, np.minimum(nb, blocks)] > e
        if precreate.any():
            fill = precreate[:, None] & (ids[None, :] >= nb[:, None]) & (ids[None, :] <= blocks[:, None])
            st.created |= fill
            st.masks[fill] = 0
            st.full |= fill
            if self.uses_cache:
                st.done_at = np.where(fill, st.nfe[:, None], st.done_at)
                st.cached |= fill
            st.next_block[precreate] = blocks[precreate] + 1
        return snapshot

    def _plan_cache(self, canvas: Canvas, st: MultiBlockState, active: np.ndarray, has_masks: np.ndarray,
                    ids: np.ndarray, a: np.ndarray) -> StepPlan:
        """SPEC 4.6: which blocks become cacheable, then branch A (append), B (cached), C (refresh) or D (full)."""
        p = self.params
        length = canvas.lengths
        nfe = st.nfe[:, None]

        # Scan the blocks after the cached prefix in order: a finished block is stamped when first seen finished
        # and becomes cacheable D iterations later; the scan stops at a block with masks or one still waiting.
        eligible = st.created & (st.end > st.cache_len[:, None]) & active[:, None]
        finished = eligible & ~has_masks
        unseen = finished & (st.done_at < 0)
        first_seen = np.where(unseen, nfe, st.done_at)
        ready = nfe - first_seen >= p.cache_delay_iter
        stop = eligible & (has_masks | ~ready)
        first_stop = np.where(stop.any(axis=1), stop.argmax(axis=1), ids.size)[:, None]
        st.done_at = np.where(unseen & (ids <= first_stop), nfe, st.done_at)
        to_cache = finished & ready & (ids < first_stop) & ~st.cached
        st.cached |= to_cache
        newest = np.where(to_cache, ids, -1).max(axis=1)
        upd = np.where(newest >= 0, st.end[np.arange(canvas.size), np.maximum(newest, 0)] - st.cache_len, 0)

        stab = st.created & ~has_masks & (st.done_at >= 0) & ~st.cached
        has_stab = stab.any(axis=1)
        open_start = np.where(stab | (st.created & has_masks), st.start, length[:, None]).min(axis=1)
        run = active & (np.minimum(st.cache_len, open_start) < a)

        periodic = (st.nfe % p.refresh_interval == 0) if p.refresh_interval else False
        if p.reference_exact:  # the reference appends against the (stale) prefix even when a refresh is due
            refresh = st.has_kv & (upd == 0) & (periodic | has_stab)
        else:  # a due periodic refresh takes precedence; its full forward also provides the appended blocks
            waiting = has_stab & (upd == 0) if p.refresh_while_waiting else False
            refresh = st.has_kv & (periodic | waiting)
        cached_forward = ~refresh & (st.has_kv | (upd > 0))  # A (append) or B (read the cache)
        lead = 1 if self.family == "dream" else 0
        new_cache_len = st.cache_len + upd
        plan_start = np.where(cached_forward, np.maximum(st.cache_len - lead, 0), 0)
        keeps = cached_forward | refresh
        if p.suffix_cache:  # every forward leaves every position in the cache: prefix, the slice and the tail
            st.suffix_due = self._suffix_due(st)
            st.tail_kv |= run
            new_len = length
        else:
            new_len = np.where(keeps, np.maximum(new_cache_len - lead, 0), 0)
        st.cache_len = np.where(run, new_cache_len, st.cache_len)
        st.has_kv |= run & keeps
        return StepPlan(run=run, start=plan_start, end=length, cache_length=new_len, score_pos=None,
                        score_width=None)

    def _suffix_due(self, st: MultiBlockState) -> np.ndarray:
        """Suffix cache: the rows whose forward recomputes the masked tail after the active blocks: a row's first
        forward and every ``suffix_refresh_interval``-th iteration (None: no other). The end-of-text tokens
        early stop writes into the tail join the cache at the next of these (until then the tail's keys and values
        are those of its masks)."""
        interval = self.params.suffix_refresh_interval
        due = ~st.tail_kv
        if interval is not None:
            due = due | (st.nfe % interval == 0)
        return due

    def _suffix_end(self, canvas: Canvas, st: MultiBlockState, plan: StepPlan) -> np.ndarray:
        """Suffix cache: where each row's forward ends. A row not due (:meth:`_suffix_due`) forwards up to the end of
        the block of its last candidate and attends to the keys and values the cache holds after it (computed by
        the last forward that covered them); a due row forwards to its end."""
        b = self.params.block_size
        last = np.where(st.valid, st.pos, -1).max(axis=1)
        last = np.maximum(last, plan.start)
        g = canvas.gen_start
        block_end = np.where(last >= g, g + ((last - g) // b + 1) * b, g)
        return np.where(st.suffix_due, canvas.lengths, np.minimum(block_end, canvas.lengths))

    # -- commit ----------------------------------------------------------------------------------------------------
    def commit(self, canvas: Canvas, st: MultiBlockState, logits: torch.Tensor, plan: StepPlan) -> Commit:
        """``logits`` ``[n, K, V]`` at the candidates :meth:`_gather_candidates` listed."""
        p = self.params
        device = logits.device
        pos, valid, width = st.pos, st.valid, plan.score_width
        greedy = not (st.temperature > 0).any()
        if p.remasking == "low_confidence":
            h = rules.entropy(logits)
        else:
            h = rules.random_rows(width, pos.shape[1], st.generators, device)
        if greedy and p.remasking == "low_confidence":  # nothing reads the logits after this
            tokens = rules.argmax_excluding(logits, self.mask_id, inplace=True)
        else:
            sampler = rules.multinomial_sample if self.family == "dream" else rules.gumbel_sample
            tokens = rules.sample_rows(lambda l, t, g: sampler(l, t, g, exclude=self.mask_id), logits,
                                       st.temperature, width, st.generators)
        guaranteed = st.in_f is not None
        extra = []
        if guaranteed and p.remasking != "low_confidence":  # the guarantee ranks by true entropy even then
            extra.append(rules.entropy(logits))
        if guaranteed and self.family != "dream" and not greedy:  # LLaDA forces the argmax token
            extra.append(rules.argmax_excluding(logits, self.mask_id))
        h, tokens, *extra = rules.to_host(h, tokens, *extra)

        threshold = st.threshold[:, None]
        if p.commit_rule == "budget":
            transfer = rules.commit_entropy_budget(h, valid, threshold)
        elif self.family == "dream":
            transfer = rules.commit_entropy_dream(h, valid, threshold)
        else:
            transfer = rules.commit_entropy_llada(h, valid, threshold)
        if guaranteed:
            block_h = extra.pop(0) if p.remasking != "low_confidence" else h
            self._guarantee(transfer, tokens, block_h, st.in_f, extra[0] if extra else None)
        return Commit(transfer, tokens, positions=pos)

    @staticmethod
    def _guarantee(transfer: np.ndarray, tokens: np.ndarray, h: np.ndarray, block: np.ndarray,
                   forced_tokens: np.ndarray | None) -> None:
        """The first fully activated block with masks, if the rule committed none of its positions, commits its
        lowest-entropy mask (in place; ``block`` marks that block's candidates). LLaDA gives the forced position
        the argmax token (``forced_tokens``; at temperature 0 the chosen token already is)."""
        untouched = block & ~(transfer & block).any(axis=1, keepdims=True)
        before = transfer.copy() if forced_tokens is not None else None
        rules.add_best(transfer, h, untouched, lowest=True)
        if before is not None:
            forced = transfer & ~before
            tokens[forced] = forced_tokens[forced]

    # -- bookkeeping -------------------------------------------------------------------------------------------------
    def update(self, canvas: Canvas, st: MultiBlockState, commit: Commit) -> None:
        committed = commit.per_block(canvas.gen_start, self.params.block_size, st.masks.shape[1] - 1)
        st.masks[:, 1:] = np.maximum(st.masks[:, 1:] - committed, 0)
        self._refresh_stats(canvas, st)

    def _refresh_stats(self, canvas: Canvas, st: MultiBlockState) -> None:
        """Canvas statistics the next plan needs: masks per block, and the first EOS with the masks around it."""
        gen = canvas.gen()
        n, b = canvas.size, self.params.block_size
        is_mask = gen == canvas.mask_id
        st.canvas_masks = pad_columns(is_mask.reshape(n, -1, b).sum(-1), st.masks.shape[1] - 1, 0)
        st.any_mask = is_mask.any(axis=1)
        if st.early_stop.any():
            is_eos = gen == st.eos[:, None]
            has_eos = is_eos.any(axis=1) & st.early_stop
            e = is_eos.argmax(axis=1)
            st.eos_pos = np.where(has_eos, e + canvas.gen_start, -1)
            if has_eos.any():
                cum = np.cumsum(is_mask, axis=1)
                rows = np.arange(n)
                upto = cum[rows, e]
                block_first = (e // b) * b
                before_block = np.where(block_first > 0, cum[rows, np.maximum(block_first - 1, 0)], 0)
                st.eos_block_masks = upto - before_block
                st.masks_before_eos = upto
