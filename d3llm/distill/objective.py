"""Stage 2 of pseudo-trajectory distillation (SPEC 7): the objective that ``d3llm distill`` plugs into the training
loop of :mod:`d3llm.training.trainer`.

The student starts as a copy of the teacher (full fine-tune, or LoRA adapters merged on save). Each record of the
trajectory set is one example: the teacher's prompt, the target response (the teacher's own output by default, or
the source data's response) and the teacher's decoding ``order``. A step's global batch is cut into micro-batches
that each draw one mask ratio ``t`` (progressive noise) and share the step's block size (progressive window); every
sample masks one random block the way the teacher's trajectory had it (:mod:`d3llm.distill.masking`). The loss of a
micro-batch (SPEC 7.4), with ``ce`` the mean cross-entropy over the hidden positions of the noisy input, ``ce_rev``
the same for the complementary input, and ``ent`` the mean entropy at temperature 0.5 over the hidden positions the
student already predicts correctly::

    LLaDA:  (ce + ce_rev + w * ent) / 4                  w = 2
    Dream:  (ce + ce_rev + w * (ent + ent_rev)) / 4      w = 1

Both inputs go through one forward (concatenated along the batch). Our Dream model applies its logit shift inside
the model (position i scores token i), so Dream's ``logits[:, :-1]`` against ``targets[:, 1:]`` is the same
position-wise comparison here; its responses count their end-of-text padding, and trajectory padding reads as
revealed (LLaDA: hidden).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from d3llm.distill.curricula import noise_lower, window_size
from d3llm.distill.masking import noisy_inputs, response_lengths
from d3llm.distill.store import TrajectoryError, canonical_key, model_hashes, read_trajectories
from d3llm.errors import ConfigError
from d3llm.training.collate import Encoded, Encoder
from d3llm.distill.config import DistillConfig
from d3llm.training.objective import Objective, StepLoss, seed_of

ENTROPY_WEIGHT = {"llada": 2.0, "dream": 1.0}
#: the reference's LoRA target list; on LLaDA it matches only q_proj, k_proj, v_proj and up_proj (SPEC 7.6)
REFERENCE_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: every linear layer of a block, by each family's real module names
ALL_LORA_TARGETS = {"llada": ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"),
                    "dream": REFERENCE_LORA_TARGETS}
MB_EVAL = dict(block_add_threshold=0.1, decoded_token_threshold=0.95, early_stop=True)


@dataclass
class DistillBatch:
    """The rank's share of one step: noisy inputs, targets and loss masks ``[b, L]``, the micro-batch of each
    sample ``[b]``, and what the step drew (for the log)."""

    noisy: torch.Tensor
    complement: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    hidden: torch.Tensor
    hidden_complement: torch.Tensor
    piece: torch.Tensor
    n_pieces: int
    t: float
    lower: float
    window: int

    def to(self, device) -> "DistillBatch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return DistillBatch(**moved)


@dataclass
class LossParts:
    loss: torch.Tensor
    ce: float
    ce_rev: float
    ent: float
    hidden: int


def _piece_mean(values: torch.Tensor, piece: torch.Tensor, weights: torch.Tensor, n: int) -> torch.Tensor:
    """``[n]`` per-piece ``sum(values * weights) / sum(weights)`` (0 where a piece has no weight)."""
    total = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, piece, values * weights)
    count = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, piece, weights)
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


def _masked_terms(logits: torch.Tensor, targets: torch.Tensor, hidden: torch.Tensor, piece: torch.Tensor, n: int,
                  temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-piece mean CE over hidden positions, mean entropy (at ``temperature``) over the hidden positions predicted
    correctly, and hidden counts."""
    rows, cols = hidden.nonzero(as_tuple=True)
    lg = logits[rows, cols].float()
    y = targets[rows, cols]
    tok_piece = piece[rows]
    ones = torch.ones_like(y, dtype=lg.dtype)
    ce = _piece_mean(F.cross_entropy(lg, y, reduction="none"), tok_piece, ones, n)
    p = F.softmax(lg / temperature, dim=-1)
    entropy = -(p * torch.log(p + 1e-12)).sum(-1)
    correct = (lg.argmax(-1) == y).to(lg.dtype)
    ent = _piece_mean(entropy, tok_piece, correct, n)
    counts = torch.zeros(n, dtype=torch.long, device=logits.device).index_add(0, tok_piece, torch.ones_like(y))
    return ce, ent, counts


def distillation_loss(logits: torch.Tensor, logits_rev: torch.Tensor | None, batch: DistillBatch, family: str,
                      entropy_weight: float, temperature: float = 0.5) -> LossParts:
    """SPEC 7.4 averaged over the rank's micro-batches (see the module docstring). ``logits_rev`` is None without
    the complementary pass."""
    n, piece = batch.n_pieces, batch.piece
    ce, ent, counts = _masked_terms(logits, batch.targets, batch.hidden, piece, n, temperature)
    present = torch.zeros(n, dtype=torch.bool, device=logits.device)
    present[piece] = True
    if logits_rev is not None:
        ce_rev, ent_rev, _ = _masked_terms(logits_rev, batch.targets, batch.hidden_complement, piece, n, temperature)
        reg = ent + ent_rev if family == "dream" else ent
        per_piece = (ce + ce_rev + entropy_weight * reg) / 4.0
    else:
        ce_rev = torch.zeros_like(ce)
        per_piece = (ce + entropy_weight * ent) / 4.0
    loss = per_piece[present].mean() + 0.0 * logits.sum()   # the zero term keeps the graph when nothing is hidden
    k = max(int(present.sum()), 1)
    return LossParts(loss, float(ce.detach().sum()) / k, float(ce_rev.detach().sum()) / k,
                     float(ent.detach().sum()) / k, int(counts.sum()))


class DistillationObjective(Objective):
    """Pseudo-trajectory distillation of a teacher folder into a student of the same architecture."""

    name = "distill"
    resume_keys = ("teacher_hash", "trajectories_hash", "targets", "data", "batch_size", "seed", "window_sizes",
                   "min_noise", "max_noise", "fixed_noise", "fixed_window", "random_mask", "micro_batch_size",
                   "response_length", "keep_incorrect", "lora", "lora_r", "lora_alpha", "lora_targets",
                   "whole_response", "complementary")

    def __init__(self, cfg: DistillConfig):
        super().__init__(cfg)
        self.cfg: DistillConfig = cfg

    # -- setup ------------------------------------------------------------------------------------------------
    def setup(self, info, out: Path) -> None:
        from d3llm.models.checkpoint import load_model
        from d3llm.models.tokenizer import load_tokenizer
        from d3llm.tasks.data import ListDataset
        from d3llm.training.sft import DataStream

        cfg = self.cfg
        teacher = Path(cfg.teacher).expanduser()
        model = load_model(teacher, device="cpu")
        self.family = model.family
        self.tokenizer, self.tokenizer_dir = load_tokenizer(teacher), teacher
        self.sets = [read_trajectories(folder) for folder in trajectory_folders(cfg.trajectories)]
        for traj in self.sets:
            self._check_teacher(traj, teacher, model)
        traj = self.traj = self.sets[0]            # the first set's source and template define the evaluation
        cfg.teacher_hash = traj.manifest.get("teacher_hash")           # recorded with the options (resume check)
        keys = [store_key(t.manifest) for t in self.sets]
        cfg.trajectories_hash = keys[0] if len(keys) == 1 else canonical_key(keys)
        self.lengths = []
        for t in self.sets:
            length = max(cfg.response_length or 0, t.gen_length)
            if cfg.response_length is not None and cfg.response_length < t.gen_length:
                raise ConfigError(f"--response-length {cfg.response_length} is shorter than the generation length "
                                  f"{t.gen_length} of the trajectories in {t.folder}")
            self.lengths.append(length)
        self.response_length = min(self.lengths)
        self.encoder = Encoder(self.tokenizer, self.response_length)
        self.eos_id = self.tokenizer.eos_token_id
        self.mask_id = model.config.mask_token_id
        self.set_examples = [self._examples(t, n) for t, n in zip(self.sets, self.lengths)]
        self.examples = [e for part in self.set_examples for e in part]
        if not self.examples:
            raise TrajectoryError(f"{traj.folder}: no usable trajectories (every record is marked incorrect; pass "
                                  f"--keep-incorrect to train on them)")
        for part, t, n in zip(self.set_examples, self.sets, self.lengths):
            longest = max((len(e[0].prompt) for e in part), default=0) + n
            if longest > model.config.max_length:
                raise ConfigError(f"sequences of {longest} tokens ({t.folder}) exceed the teacher's "
                                  f"max_sequence_length {model.config.max_length}")
        self.streams = [DataStream(ListDataset(list(range(len(part))), str(t.folder)), cfg.seed if k == 0 else
                                   seed_of("set", cfg.seed, k)) for k, (part, t) in
                        enumerate(zip(self.set_examples, self.sets))]
        self.schedule = SetSchedule([len(part) for part in self.set_examples], cfg.seed)
        names = ", ".join(f"{len(part):,} of {t.gen_length} tokens from {t.folder}"
                          for part, t in zip(self.set_examples, self.sets))
        self.data_name = f"{len(self.examples):,} trajectories ({names})" if len(self.sets) > 1 else \
            f"{len(self.examples):,} trajectories from {traj.folder}"
        self.entropy_weight = ENTROPY_WEIGHT[self.family] if cfg.entropy_weight is None else cfg.entropy_weight
        model.generation_config = self._generation_config(model.generation_config)
        if cfg.lora:
            model = self._wrap_lora(model)
        self.model = model
        self.eval_prompts, self.eval_golds = [], []
        if info.is_main and cfg.eval_size > 0:
            self._setup_eval(traj)

    def _check_teacher(self, traj, teacher: Path, model) -> None:
        manifest_file = traj.folder / "manifest.json"
        hashes = model_hashes(teacher)
        for key, what in (("teacher_hash", "teacher (config.json and weights)"),
                          ("tokenizer_hash", "tokenizer files")):
            made = traj.manifest.get(key)
            if made is None:
                import warnings

                warnings.warn(f"{manifest_file} records no {key}: the trajectories' {what} cannot be checked "
                              f"against {teacher}", stacklevel=2)
            elif made != hashes[key]:
                raise TrajectoryError(f"{manifest_file} was made by another {what.split(' ')[0]}: its {key} "
                                      f"{made[:12]}... differs from {teacher}'s {str(hashes[key])[:12]}...; extract "
                                      f"trajectories with this --teacher, or pass the teacher that made them")
        if traj.mask_id != model.config.mask_token_id:
            raise TrajectoryError(f"{manifest_file}: mask_id {traj.mask_id} differs from the teacher's mask_token_id "
                                  f"{model.config.mask_token_id}")

    def _examples(self, traj, length: int) -> list[tuple[Encoded, torch.Tensor]]:
        """(encoded prompt + target response of ``length`` tokens, padded order) per usable record."""
        cfg, n = self.cfg, traj.gen_length
        correct = traj.columns.get("is_correct") or [True] * len(traj)
        responses = self._data_responses(traj) if cfg.targets == "data" else None
        pad_order = -1 if self.family == "dream" else n     # Dream: padding revealed; LLaDA: hidden
        out = []
        for i in range(len(traj)):
            if not cfg.keep_incorrect and correct[i] is False:
                continue
            if responses is not None:
                body = self.encoder.encode("", responses[int(traj.idx[i])], f"{cfg.data} row {traj.idx[i]}",
                                           canvas=length).response
            else:
                body = traj.output_ids[i].tolist() + [self.eos_id] * (length - n)
            order = torch.full((length,), pad_order, dtype=torch.long)
            order[:n] = torch.from_numpy(traj.order[i])
            out.append((Encoded(list(traj.prompt_ids[i]), body, 0), order))
        return out

    def _data_responses(self, traj) -> dict[int, str]:
        from d3llm.distill.extract import load_source

        rows, _ = load_source(self.cfg.data, int(traj.idx.max()) + 1 if self.cfg.data.startswith("arith") else None,
                              int(traj.manifest.get("source", {}).get("data_seed", 0) or 0))
        by_idx = {r.idx: r.response for r in rows}
        missing = [int(i) for i in traj.idx if by_idx.get(int(i)) is None]
        if missing:
            raise ConfigError(f"--data {self.cfg.data}: no response ('llm_response' or 'answer') for trajectory "
                              f"row(s) idx {missing[:5]}; --targets data needs one per trajectory row")
        return by_idx

    def _generation_config(self, base):
        """The student's decoding defaults: the teacher's, with the evaluation decoder's settings (multi_block)."""
        from d3llm.models.generation_config import GenerationConfig

        values = {k: v for k, v in (base.values if base is not None else {}).items()
                  if k not in ("method", "threshold", "block_size", "cache_delay_iter", "refresh_interval")}
        values.update(method="multi_block", eos_token_id=self.eos_id,
                      **{k: v for k, v in self.eval_params().items() if v is not None})
        return GenerationConfig.from_dict(values)

    def _wrap_lora(self, model):
        from d3llm.distill.lora import wrap_lora

        targets = REFERENCE_LORA_TARGETS if self.cfg.lora_targets == "reference" else ALL_LORA_TARGETS[self.family]
        return wrap_lora(model, targets, self.cfg.lora_r, self.cfg.lora_alpha)

    def _setup_eval(self, traj) -> None:
        from d3llm.distill.extract import load_source, prompt_of

        spec = self.cfg.eval_data or ("arith:test" if str(traj.manifest.get("source", {}).get("spec", "")).startswith(
            "arith") else None)
        if spec is None:
            return
        rows, _ = load_source(spec, self.cfg.eval_size, 0)
        chat = bool(traj.manifest.get("chat_template", True))
        self.eval_prompts = [prompt_of(r, self.tokenizer, chat) for r in rows]
        self.eval_golds = [r.gold for r in rows]

    # -- one step ---------------------------------------------------------------------------------------------
    def window(self, step: int) -> int:
        cfg = self.cfg
        return cfg.fixed_window or window_size(self.epoch(step * cfg.batch_size), cfg.window_sizes)

    def batch(self, step: int, rank: int, world_size: int, device) -> DistillBatch:
        cfg = self.cfg
        k, position = self.schedule.at(step)       # this step's trajectory set, and how many steps used it before
        examples, stream, length = self.set_examples[k], self.streams[k], self.lengths[k]
        g_size, local = cfg.batch_size, cfg.batch_size // world_size
        micro = cfg.micro_batch_size or g_size
        gen = torch.Generator().manual_seed(seed_of("distill", cfg.seed, step))
        lower = noise_lower(step, cfg.steps, cfg.min_noise, cfg.max_noise)
        t_micro = lower + torch.rand(g_size // micro, generator=gen, dtype=torch.float64) * (cfg.max_noise - lower)
        if cfg.fixed_noise is not None:
            t_micro = torch.full_like(t_micro, cfg.fixed_noise)
        block_u = torch.rand(g_size, generator=gen, dtype=torch.float64)
        mask_u = torch.rand(g_size, length, generator=gen, dtype=torch.float64)
        rows = range(rank * local, (rank + 1) * local)
        first = position * g_size
        picked = [examples[stream.index(first + r)] for r in rows]
        batch = self.encoder.collate([e for e, _ in picked])
        order = torch.stack([o for _, o in picked])
        response = batch.input_ids[:, batch.response_start:]
        lengths = response_lengths(response, self.eos_id, padding_counts=self.family == "dream")
        piece_global = torch.tensor([r // micro for r in rows])
        t = t_micro[piece_global]
        window = self.window(step)
        noisy = noisy_inputs(batch.input_ids, batch.response_start, order, lengths, window, t,
                             block_u[list(rows)], mask_u[list(rows)], self.mask_id, self.sets[k].gen_length,
                             random_mask=cfg.random_mask, whole_response=cfg.whole_response)
        piece = piece_global - piece_global.min()
        return DistillBatch(noisy.noisy, noisy.complement, batch.attention_mask, batch.input_ids, noisy.hidden,
                            noisy.hidden_complement, piece, int(piece.max()) + 1, float(t.mean()), lower,
                            window).to(device)

    def loss(self, net, batch: DistillBatch) -> StepLoss:
        cfg = self.cfg
        if cfg.complementary:
            x = torch.cat([batch.noisy, batch.complement])
            logits = net(x, attention_mask=torch.cat([batch.attention_mask, batch.attention_mask])).logits
            lg, lg_rev = logits[: x.shape[0] // 2], logits[x.shape[0] // 2:]
        else:
            lg, lg_rev = net(batch.noisy, attention_mask=batch.attention_mask).logits, None
        parts = distillation_loss(lg, lg_rev, batch, self.family, self.entropy_weight, cfg.entropy_temperature)
        tokens = int(batch.attention_mask.sum()) * (2 if cfg.complementary else 1)
        return StepLoss(parts.loss, tokens, {"ce": parts.ce, "ce_rev": parts.ce_rev, "entropy": parts.ent,
                                             "t": batch.t, "noise_lower": batch.lower, "window": batch.window,
                                             "hidden_frac": parts.hidden / max(int(batch.targets.numel()), 1)})

    def epoch(self, examples: int) -> float:
        return examples / len(self.examples)

    # -- evaluation -------------------------------------------------------------------------------------------
    def eval_params(self) -> dict:
        cfg = self.cfg
        return dict(MB_EVAL, max_new_tokens=self.response_length, block_size=cfg.eval_block_size or
                    self.response_length, threshold=cfg.eval_threshold, cache_delay_iter=cfg.eval_cache_delay,
                    refresh_interval=None)

    def evaluate(self, model, device) -> dict[str, float] | None:
        from d3llm.training.sft import decode_accuracy

        if not self.eval_prompts:
            return None
        plain = self.export_model(model)
        with torch.no_grad():
            return decode_accuracy(plain, self.tokenizer, self.eval_prompts, self.eval_golds, "multi_block",
                                   self.eval_params())

    # -- checkpoints ------------------------------------------------------------------------------------------
    def export_model(self, model):
        if not self.cfg.lora:
            return model
        from d3llm.distill.lora import merged_copy

        return merged_copy(model)

    def extra_state(self, model) -> dict[str, torch.Tensor] | None:
        if not self.cfg.lora:
            return None
        from d3llm.distill.lora import adapter_state

        return adapter_state(model)

    def restore(self, model, loaded, extra) -> None:
        if not self.cfg.lora:
            return super().restore(model, loaded, extra)
        from d3llm.distill.lora import load_adapter_state

        if extra is None:
            raise ConfigError("the checkpoint has no extra.safetensors with the LoRA adapters; it was not written by "
                              "a --lora run")
        load_adapter_state(model, extra)

    def summary(self) -> dict[str, Any]:
        sets = [{"folder": str(t.folder), "rows": len(t), "used": len(part), "decoder": t.manifest.get("decoder"),
                 "source": t.manifest.get("source"), "teacher_hash": t.manifest.get("teacher_hash")}
                for t, part in zip(self.sets, self.set_examples)]
        return {"teacher": str(Path(self.cfg.teacher).expanduser().resolve()),
                "trajectories": sets[0] if len(sets) == 1 else sets,
                "eval_decoder": {"method": "multi_block", **self.eval_params()}}


def trajectory_folders(spec: str) -> list[str]:
    """``--trajectories A,B``: the folders of one or more trajectory sets (e.g. one per canvas length)."""
    folders = [f.strip() for f in str(spec).split(",") if f.strip()]
    if not folders:
        raise ConfigError("--trajectories names no folder; expected DIR or DIR,DIR,...")
    return folders


class SetSchedule:
    """Which trajectory set each optimizer step draws its whole batch from (one canvas length per batch, so no row
    pays for a longer neighbour): step s takes set k with probability proportional to its usable records, drawn from
    a generator seeded by ``(seed, s)``. :meth:`at` also counts the earlier steps that took the same set, the
    position of step s in that set's own data stream, so every set is read in order and a resumed run is exact."""

    def __init__(self, sizes: list[int], seed: int):
        total = sum(sizes)
        self.weights = torch.tensor([n / total for n in sizes], dtype=torch.float64)
        self.seed = seed
        self._steps: list[tuple[int, int]] = []   # (set, position) of every step drawn so far
        self._taken = [0] * len(sizes)             # steps drawn so far that took each set

    def _choice(self, step: int) -> int:
        if len(self.weights) == 1:
            return 0
        gen = torch.Generator().manual_seed(seed_of("set-schedule", self.seed, step))
        return int(torch.multinomial(self.weights, 1, generator=gen))

    def at(self, step: int) -> tuple[int, int]:
        """(set of step ``step``, number of earlier steps that took it)."""
        while len(self._steps) <= step:
            k = self._choice(len(self._steps))
            self._steps.append((k, self._taken[k]))
            self._taken[k] += 1
        return self._steps[step]


def store_key(manifest: dict) -> str:
    """A short identity of a trajectory set: the hash of its shard checksums."""
    from d3llm.distill.store import canonical_key

    return canonical_key([s.get("sha256") for s in manifest.get("shards", [])])


__all__ = ["DistillBatch", "DistillConfig", "DistillationObjective", "distillation_loss"]
