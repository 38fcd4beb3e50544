"""The masked-diffusion SFT objective of ``d3llm train`` (LLaDA guidelines), from scratch or from a model folder.

One optimizer step processes a *global* batch of ``batch_size`` examples: examples ``[s * G, (s + 1) * G)`` of the
data stream at step s (the stream is the built-in task's problem sequence, or a file's rows reshuffled every epoch
with a seeded permutation), and noise drawn from a generator seeded by ``(seed, step)``. Data-parallel ranks take
equal contiguous slices of the global batch and of its noise, so the result does not depend on the number of
processes (up to floating-point reduction order). Every ``eval_every`` steps the held-out loss (fixed examples,
fixed masks) is measured, and, with ``eval_decode``, exact-match accuracy of decoded answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from d3llm.errors import ConfigError
from d3llm.models.generation_config import GenerationConfig
from d3llm.models.prompts import encode_conversation
from d3llm.training import distributed as distm
from d3llm.training.collate import Batch, Encoder
from d3llm.training.loss import draw_noise, masked_diffusion_loss
from d3llm.training.mixes import Mix
from d3llm.training.config import TrainConfig
from d3llm.training.objective import Objective, StepLoss, seed_of


class DataStream:
    """Global example ``g`` -> dataset item: the built-in task is already i.i.d. (identity order); a file is read in
    a fresh seeded permutation every epoch."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def index(self, g: int) -> int:
        n = len(self.dataset)
        if getattr(self.dataset, "iid", False):
            return g % n
        epoch, pos = divmod(g, n)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(seed_of("epoch", self.seed, epoch))
            self._perm = (epoch, torch.randperm(n, generator=gen))
        return int(self._perm[1][pos])

    def epoch(self, g: int) -> float:
        return g / len(self.dataset)


# ------------------------------------------------------------------------------------------------------------------
# setup helpers
# ------------------------------------------------------------------------------------------------------------------

def is_model_folder(spec: str) -> bool:
    """Whether ``--model`` names a model folder (a path, or a shipped model's name) rather than a named config."""
    from d3llm.assets import resolve_model

    return (resolve_model(spec) / "config.json").is_file()


def _tokenizer_for(cfg: TrainConfig, info: distm.DistInfo, out: Path):
    """(tokenizer, folder holding its files). Built-in task tokenizer for ``arith`` data from scratch; else the
    ``--tokenizer`` folder, else the ``--model`` folder."""
    from d3llm.models.tokenizer import load_tokenizer

    source = cfg.tokenizer or (cfg.model if is_model_folder(cfg.model) else None)
    if source is not None:
        return load_tokenizer(source), Path(source)
    if cfg.data.split(":")[0] == "arith":
        from d3llm.tasks.tokenizer import build_tokenizer

        folder = out  # the final model folder: the run's one copy of the tokenizer files
        if info.is_main:
            tok = build_tokenizer(folder)
        distm.barrier(info)
        if not info.is_main:
            tok = load_tokenizer(folder)
        return tok, folder
    raise ConfigError(f"training from the named config {cfg.model!r} on {cfg.data!r} needs a tokenizer: pass "
                      f"--tokenizer FOLDER (or --model a model folder that has one)")


def _build_model(cfg: TrainConfig, tokenizer):
    from d3llm.models.checkpoint import build_model, load_model
    from d3llm.models.configs import NAMED_CONFIGS

    if is_model_folder(cfg.model):
        model = load_model(cfg.model, device="cpu")
        if cfg.set:
            raise ConfigError("--set changes the architecture of a new model; it cannot apply to a loaded --model "
                              "folder")
        return model
    if cfg.model not in NAMED_CONFIGS:
        raise ConfigError(f"--model {cfg.model!r} is neither a model folder (no config.json there) nor a named "
                          f"config ({', '.join(sorted(NAMED_CONFIGS))})")
    mask_id = tokenizer.mask_token_id
    if mask_id is None and cfg.objective == "diffusion":
        raise ConfigError("the tokenizer has no mask_token; a masked-diffusion model needs one (e.g. <|mdm_mask|>)")
    # a causal model keeps the mask id too, when the tokenizer has one: the decoders' placeholder
    ids = dict(vocab_size=len(tokenizer), mask_token_id=mask_id, eos_token_id=tokenizer.eos_token_id)
    family = NAMED_CONFIGS[cfg.model]["family"]
    ids["pad_token_id" if family == "llada" else "bos_token_id"] = tokenizer.eos_token_id
    overrides = {**ids, **cfg.set}
    return build_model(cfg.model, seed=cfg.seed, **overrides)


def _length_flag(cfg: TrainConfig) -> str:
    if cfg.canvas_lengths is not None:
        return f"--canvas-lengths {cfg.canvas_lengths}"
    if cfg.response_length is not None:
        return f"--response-length {cfg.response_length}"
    return "the default canvas mix"


def _check_lengths(cfg: TrainConfig, encoder: Encoder, dataset, model, turns: Mix | None) -> None:
    """Fail at start, not at step 3000: every example of a file must fit; the built-in task has a known bound."""
    max_len, canvas = model.config.max_length, cfg.canvas_mix()
    if getattr(dataset, "iid", False):
        need = dataset.max_answer_tokens + (1 if encoder.eot_id is not None else 0)
        if canvas.values[-1] < need:
            raise ConfigError(f"{_length_flag(cfg)} is too short for the built-in task: its answers take up to "
                              f"{need} tokens with the end-of-turn token")
        most = turns.values[-1] if turns is not None else 1
        sample = [encoder.encode_example(dataset.example(i, most) if turns is not None else dataset[i], need)
                  for i in range(min(len(dataset), 64))]
    else:
        sample = []
        for i in range(len(dataset)):
            ex = dataset[i]
            n = len(encoder.answer_ids(ex.answer))
            if n > canvas.values[-1]:
                raise ConfigError(f"{getattr(ex, 'source', '') or 'an example'}: the answer takes {n} tokens (with the "
                                  f"end-of-turn token), more than the longest canvas of {_length_flag(cfg)}; raise "
                                  f"--response-length or --canvas-lengths, or shorten the answers")
            sample.append(encoder.encode_example(ex, n))
    longest = max(len(e.prompt) for e in sample) + canvas.values[-1]
    if longest > max_len:
        raise ConfigError(f"sequences of {longest} tokens (prompt + the longest canvas of {_length_flag(cfg)}) "
                          f"exceed the model's max_sequence_length {max_len}")


def decode_accuracy(model, tokenizer, prompts: list[list[int]], golds: list[str], method: str,
                    params: dict) -> dict[str, float]:
    """Exact match (strict and flexible, %) and TPF of ``d3llm.generate(method, **params)`` on ``prompts``."""
    from d3llm.decoding import generate
    from d3llm.tasks.scoring import score

    was_training = model.training
    model.eval()
    result = generate(model, prompts, method, eos_token_id=tokenizer.eos_token_id, **params)
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in result.tokens]
    sc = score(texts, golds)
    model.train(was_training)
    return {"exact_match": sc.strict, "flexible_match": sc.flexible, "tpf": result.tokens_per_forward}


class Evaluator:
    """Held-out loss of the objective on fixed examples with fixed canvases and masks (comparable across steps and
    runs; the canvases are drawn from the run's mix once, like the masks)."""

    def __init__(self, cfg: TrainConfig, encoder: Encoder, dataset, objective: "MaskedDiffusionObjective"):
        n = min(cfg.eval_size, len(dataset))
        self.examples = [dataset[i] for i in range(n)]
        mix = cfg.canvas_mix()
        gen = torch.Generator().manual_seed(seed_of("eval", 12345))
        self.t, self.u = draw_noise(n, mix.values[-1], gen)
        self.encoded = [objective.encode(e, mix.draw(gen)) for e in self.examples]
        self.decode_prompts = [encode_conversation(encoder.tokenizer, e.question, getattr(e, "history", ()))
                               for e in self.examples[:cfg.eval_decode_size]]
        self.encoder, self.objective, self.cfg = encoder, objective, cfg

    @torch.no_grad()
    def loss(self, model, device) -> float:
        was_training = model.training
        model.eval()
        total, bs = 0.0, self.cfg.batch_size
        for i in range(0, len(self.encoded), bs):
            batch = self.encoder.collate(self.encoded[i:i + bs]).to(device)
            u = self.u[i:i + bs, :batch.response_length]
            out = self.objective.example_loss(model, batch, self.t[i:i + bs], u)
            total += float(out.loss) * batch.input_ids.shape[0]
        model.train(was_training)
        return total / len(self.encoded)

    @torch.no_grad()
    def accuracy(self, model, tokenizer, method: str) -> dict[str, float]:
        """Exact match and TPF of answers decoded with ``d3llm.decoding.generate(method=...)`` on the first
        ``eval_decode_size`` examples on a canvas of ``decode_length`` (``vanilla``: one token per forward, blocks
        of 32 when they divide it; ``autoregressive``: at most that many tokens)."""
        from d3llm.decoding.methods import METHODS

        n = min(self.cfg.eval_decode_size, len(self.examples))
        length = self.cfg.decode_length
        params = {"max_new_tokens": length}
        if method not in METHODS or not METHODS[method].causal:  # block decoders (an unknown name fails in generate)
            params["block_size"] = 32 if length % 32 == 0 else length
        if method == "vanilla":
            params["steps"] = length
        golds = [e.gold if e.gold is not None else e.answer for e in self.examples[:n]]
        return decode_accuracy(model, tokenizer, self.decode_prompts[:n], golds, method, params)


@dataclass
class SFTBatch:
    """The rank's examples of one step and their noise rows."""

    batch: Batch
    t: torch.Tensor | None
    u: torch.Tensor | None


class MaskedDiffusionObjective(Objective):
    """LLaDA-guideline SFT (:func:`d3llm.training.loss.masked_diffusion_loss`) on the built-in task or a JSONL file.

    Subclasses that train on the same data with another loss (:class:`d3llm.training.causal.CausalLMObjective`)
    override :meth:`check_model` and :meth:`example_loss`, and set ``uses_noise``.
    """

    name = "diffusion"
    resume_keys = ("objective", "data", "train_size", "batch_size", "seed", "model", "set", "response_length", "eps",
                   "data_seed", "canvas_lengths", "turns")
    uses_noise = True  # draw the masking noise of every step (the masked-diffusion loss needs it)

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.evaluator: Evaluator | None = None

    def setup(self, info, out: Path) -> None:
        from d3llm.tasks.data import load_dataset

        cfg = self.cfg
        self.dataset = load_dataset(cfg.data, "train", cfg.train_size, cfg.data_seed)
        self.data_name = self.dataset.name
        self.tokenizer, self.tokenizer_dir = _tokenizer_for(cfg, info, out)
        self.encoder = Encoder(self.tokenizer, cfg.decode_length)
        self.canvas = cfg.canvas_mix()
        # conversations of several turns: the built-in task builds them; a file's rows bring their own history
        self.turns = cfg.turn_mix() if hasattr(self.dataset, "example") else None
        if cfg.turns is not None and self.turns is None:
            raise ConfigError(f"--turns builds conversations of the built-in task; {cfg.data!r} is a file (give its "
                              f"rows a 'history' list of earlier question/answer turns instead)")
        model = _build_model(cfg, self.tokenizer)
        self.mask_id = model.config.mask_token_id
        self.check_model(model)
        if self.tokenizer.eos_token_id != model.config.eos_token_id:
            raise ConfigError(f"the tokenizer's eos_token_id {self.tokenizer.eos_token_id} differs from the model's "
                              f"eos_token_id {model.config.eos_token_id}")
        _check_lengths(cfg, self.encoder, self.dataset, model, self.turns)
        model.generation_config = self.generation_defaults(model)
        eval_spec = cfg.eval_data or ("arith:test" if cfg.data.split(":")[0] == "arith" else None)
        if eval_spec is not None and info.is_main:
            held_out = load_dataset(eval_spec, "test", None, cfg.data_seed, scored=cfg.eval_decode is not None)
            self.evaluator = Evaluator(cfg, self.encoder, held_out, self)
        self.model = model
        self.stream = DataStream(self.dataset, cfg.data_seed)

    def encode(self, example, drawn: int):
        """``example`` on the smallest canvas of the mix that is at least ``drawn`` and holds its answer."""
        def fit(need: int) -> int:
            canvas = self.canvas.fit(drawn, need)
            if canvas is None:
                raise ConfigError(f"{example.source or 'an example'}: the answer takes {need} tokens (with the "
                                  f"end-of-turn token), more than the longest canvas of {_length_flag(self.cfg)}")
            return canvas

        return self.encoder.encode_example(example, fit)

    def bucket(self, step: int) -> tuple[int, int | None]:
        """Step ``step``'s drawn canvas length and number of turns (every row of the global batch shares them)."""
        gen = torch.Generator().manual_seed(seed_of("bucket", self.cfg.seed, step))
        drawn = self.canvas.draw(gen)
        return drawn, (self.turns.draw(gen) if self.turns is not None else None)

    def batch(self, step: int, rank: int, world_size: int, device) -> SFTBatch:
        cfg = self.cfg
        local_bs = cfg.batch_size // world_size
        first = step * cfg.batch_size + rank * local_bs
        drawn, turns = self.bucket(step)
        examples = [self.dataset.example(self.stream.index(g), turns) if turns is not None
                    else self.dataset[self.stream.index(g)] for g in range(first, first + local_bs)]
        batch = self.encoder.collate([self.encode(e, drawn) for e in examples]).to(device)
        if not self.uses_noise:
            return SFTBatch(batch, None, None)
        gen = torch.Generator().manual_seed(seed_of("noise", cfg.seed, step))
        t, u = draw_noise(cfg.batch_size, self.canvas.values[-1], gen)  # one width for every rank and bucket
        rows = slice(rank * local_bs, (rank + 1) * local_bs)
        return SFTBatch(batch, t[rows], u[rows, :batch.response_length])

    def check_model(self, model) -> None:
        """Refuse a model this objective cannot train (a ConfigError naming the model and what to use)."""
        if getattr(model, "causal", False):
            raise ConfigError(f"--model {self.cfg.model!r} is a causal ({model.family}) model; masked-diffusion SFT "
                              f"trains bidirectional ones (llada-*, dream-*): pass --objective causal to train it")
        if self.mask_id is None:
            raise ConfigError(f"model {self.cfg.model!r} has no mask_token_id in its config.json")

    def generation_defaults(self, model) -> GenerationConfig:
        """The decoding defaults written into the trained model's folder (``generation_config.json``)."""
        config = GenerationConfig.for_trained_model(self.cfg.decode_length, model.config.eos_token_id,
                                                    model.config.pad_token_id, base=model.generation_config)
        # the longest canvas of the training mix: decoders warn once when asked for more
        return GenerationConfig.from_dict({**config.values, "max_trained_new_tokens": self.canvas.values[-1]})

    def example_loss(self, net, batch: Batch, t: torch.Tensor | None, u: torch.Tensor | None):
        """The loss (a :class:`~d3llm.training.loss.LossOutput`) of ``batch`` with noise rows ``t``, ``u``."""
        return masked_diffusion_loss(net, batch, self.mask_id, t, u, self.cfg.eps)

    def loss(self, net, batch: SFTBatch) -> StepLoss:
        out = self.example_loss(net, batch.batch, batch.t, batch.u)
        return StepLoss(out.loss, batch.batch.num_tokens())

    def epoch(self, examples: int) -> float:
        return self.stream.epoch(examples)

    def evaluate(self, model, device) -> dict[str, float] | None:
        if self.evaluator is None:
            return None
        ev = {"eval_loss": self.evaluator.loss(model, device)}
        if self.cfg.eval_decode:
            ev.update(self.evaluator.accuracy(model, self.tokenizer, self.cfg.eval_decode))
        return ev
