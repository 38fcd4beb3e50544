"""The next-token objective of ``d3llm train --objective causal``: the autoregressive baseline of a task.

The same data, tokenizer, batches (examples ``[s * G, (s + 1) * G)`` of the stream at step s, left-padded prompts,
the same conversations), checkpoints, resume and data parallelism as masked-diffusion SFT
(:mod:`d3llm.training.sft`, whose objective this one extends), with :func:`~d3llm.training.loss.causal_lm_loss`
instead of the masked-diffusion loss, on a causal model (``llama-small``: the teacher's shape). The result is a
Llama-layout folder that transformers' ``LlamaForCausalLM`` loads as it is; ``--eval-decode autoregressive``
measures exact match with the KV-cached one-token-per-forward decoder. A causal model never sees the positions after
its first end-of-text, so its rows hold the answer, the end-of-turn token and one end-of-text only (no canvas mix:
the padding a diffusion model is trained on would be computed and never scored).
"""

from __future__ import annotations

import torch

from d3llm.errors import ConfigError
from d3llm.models.generation_config import GenerationConfig
from d3llm.training.collate import Batch
from d3llm.training.loss import causal_lm_loss
from d3llm.training.sft import MaskedDiffusionObjective


class CausalLMObjective(MaskedDiffusionObjective):
    """Next-token SFT of a causal model on the response tokens (see the module docstring)."""

    name = "causal"
    resume_keys = ("objective", "data", "train_size", "batch_size", "seed", "model", "set", "response_length",
                   "data_seed", "turns")
    uses_noise = False

    def check_model(self, model) -> None:
        if not getattr(model, "causal", False):
            raise ConfigError(f"--objective causal trains a causal model (llama-small, llama-tiny or a Llama folder); "
                              f"--model {self.cfg.model!r} is a bidirectional {model.family} model: pass --model "
                              f"llama-small, or drop --objective causal for masked-diffusion SFT")

    def generation_defaults(self, model) -> GenerationConfig:
        """Greedy ``autoregressive`` decoding of the response length; the keys transformers reads (``do_sample``,
        ``max_new_tokens`` and the special ids) mean the same for its ``generate``."""
        c = model.config
        values = {"max_new_tokens": self.cfg.decode_length, "do_sample": False, "method": "autoregressive",
                  "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id}
        return GenerationConfig.from_dict({k: v for k, v in values.items() if v is not None})

    def encode(self, example, drawn: int):
        """The answer, its end-of-turn token and one end-of-text (what the loss scores; ``drawn`` is not used)."""
        return self.encoder.encode_example(example, lambda need: need + 1)

    def example_loss(self, net, batch: Batch, t: torch.Tensor | None, u: torch.Tensor | None):
        return causal_lm_loss(net, batch, self.encoder.eos_id)
