"""Tiny teachers and trajectory sets for the distillation tests (random weights: the mechanics, not the quality)."""

from __future__ import annotations

from pathlib import Path

import d3llm
from d3llm.tasks.tokenizer import build_tokenizer

GEN, BLOCK = 16, 8


def tiny_teacher(folder: Path, family: str = "llada", seed: int = 3) -> Path:
    """A ``<family>-tiny`` model with the arith task tokenizer, saved as a model folder."""
    tok_dir = folder / "tok"
    build_tokenizer(tok_dir)
    tok = d3llm.load_tokenizer(tok_dir)
    ids = dict(vocab_size=len(tok), mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id)
    ids["pad_token_id" if family == "llada" else "bos_token_id"] = tok.eos_token_id
    model = d3llm.build_model(f"{family}-tiny", seed=seed, **ids)
    out = folder / f"{family}-teacher"
    d3llm.save_model(model, out, tokenizer=tok_dir)
    return out


def extract_args(teacher: Path, out: Path, limit: int = 6, *extra: str) -> list[str]:
    return ["trajectories", "extract", "--teacher", str(teacher), "--data", "arith", "--limit", str(limit),
            "--out", str(out), "--gen-length", str(GEN), "--block-size", str(BLOCK), "--attempts", "2",
            "--batch-size", "2", "--shard-size", "2", "--threads", "1", "--no-progress", *extra]
