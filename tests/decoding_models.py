"""Tiny models trained in seconds on a toy task, so decoders meet real confidence patterns (several tokens under
the threshold at once, early EOS) instead of the flat distributions of random weights.

Task: the prompt is 3-10 random digits and a separator; the answer is the digits reversed, the separator, the digits
sorted, then EOS padding up to ``GEN`` tokens. A few seconds of training do not solve it, but they give the
decoders what the tests need: varying confidence and early end-of-text.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

import d3llm

VOCAB, SEP, EOS, MASK = 16, 13, 14, 15
GEN, BLOCK = 32, 8


def sample(rng: random.Random) -> tuple[list[int], list[int]]:
    digits = [rng.randint(0, 9) for _ in range(rng.randint(3, 10))]
    answer = digits[::-1] + [SEP] + sorted(digits)
    return digits + [SEP], answer + [EOS] * (GEN - len(answer))


def prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [sample(rng)[0] for _ in range(n)]


def train_tiny(family: str, steps: int = 300, seed: int = 0) -> d3llm.DiffusionLM:
    """Masked-diffusion training (LLaDA SFT loss) of a ``<family>-tiny`` model on the toy task."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = d3llm.build_model(f"{family}-tiny", seed=seed, vocab_size=VOCAB, mask_token_id=MASK, eos_token_id=EOS)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(steps):
        pairs = [sample(rng) for _ in range(32)]
        width = max(len(p) for p, _ in pairs)
        ids = torch.full((32, width + GEN), EOS)
        mask = torch.zeros_like(ids)
        for i, (p, a) in enumerate(pairs):
            ids[i, width - len(p):] = torch.tensor(p + a)
            mask[i, width - len(p):] = 1
        t = torch.rand(32, 1) * (1 - 1e-3) + 1e-3
        noised = (torch.rand(32, GEN) < t)
        hide = torch.zeros_like(ids, dtype=torch.bool)
        hide[:, width:] = noised
        logits = model(ids.masked_fill(hide, MASK), attention_mask=mask).logits
        ce = F.cross_entropy(logits[hide], ids[hide], reduction="none") / t.expand(32, GEN)[noised]
        loss = ce.sum() / (32 * GEN)
        for group in opt.param_groups:
            group["lr"] = 3e-3 * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
