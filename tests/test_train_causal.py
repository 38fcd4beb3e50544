"""``d3llm train --objective causal``: the next-token loss, a tiny run, exact resume and the family checks."""

import json

import torch
import torch.nn.functional as F

import d3llm
from d3llm.cli.main import main
from d3llm.tasks import arith
from d3llm.tasks.tokenizer import build_tokenizer
from d3llm.training.collate import Encoder
from d3llm.training.loss import causal_lm_loss
from test_train import check_exact_resume


def causal_args(out, *extra):
    return ["train", "--objective", "causal", "--out", str(out), "--model", "llama-tiny", "--batch-size", "8",
            "--warmup-steps", "2", "--lr", "3e-3", "--eval-size", "8", "--log-every", "1", "--threads", "1",
            "--no-progress", "--response-length", "64", *extra]


def test_causal_loss_scores_the_response_up_to_the_first_eos(tmp_path):
    build_tokenizer(tmp_path)
    tok = d3llm.load_tokenizer(tmp_path)
    model = d3llm.build_model("llama-tiny", vocab_size=len(tok), mask_token_id=tok.mask_token_id,
                              eos_token_id=tok.eos_token_id)
    enc = Encoder(tok, response_length=64)
    items = [enc.encode_example(arith.make_problem("train", i)) for i in range(3)]
    batch = enc.collate(items)
    out = causal_lm_loss(model, batch, tok.eos_token_id)
    logits = model(batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = []
    for b, item in enumerate(items):
        n = item.answer_tokens + 2  # the answer, <|eot_id|>, one <|endoftext|>
        cols = torch.arange(batch.response_start, batch.response_start + n)
        expected.append(F.cross_entropy(logits[b, cols], batch.input_ids[b, cols]))
    assert out.masked == sum(item.answer_tokens + 2 for item in items)
    assert torch.allclose(out.loss, torch.stack(expected).mean(), rtol=1e-5)
    out.loss.backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_tiny_causal_run_and_exact_resume(tmp_path):
    out = tmp_path / "run"
    args = causal_args(out, "--steps", "12", "--save-every", "6", "--eval-every", "6", "--eval-decode",
                       "autoregressive", "--eval-decode-size", "4")
    assert main(args) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    evals = [e for e in log if "eval_loss" in e]
    assert len(losses) == 12 and losses[-1] < 0.8 * losses[0]
    assert len(evals) == 2 and evals[1]["eval_loss"] < evals[0]["eval_loss"] and evals[1]["tpf"] > 0
    model = d3llm.load_model(out, device="cpu")
    assert model.family == "llama" and model.causal
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["method"] == "autoregressive" and generation["max_new_tokens"] == 64
    assert generation["do_sample"] is False and generation["eos_token_id"] == model.config.eos_token_id
    decoded = d3llm.generate(model, [[3, 4, 5]])  # the folder's defaults: greedy autoregressive, 64 new tokens
    assert decoded.method == "autoregressive" and decoded.params["max_new_tokens"] == 64
    summary = json.loads((out / "training.json").read_text())
    assert summary["objective"] == "causal" and summary["config"]["model"] == "llama-tiny"
    check_exact_resume(out, args, 12)


def test_the_default_model_follows_the_objective(tmp_path, capsys):
    assert main(["train", "--objective", "causal", "--out", str(tmp_path / "a"), "--steps", "1", "--batch-size", "2",
                 "--warmup-steps", "1", "--eval-size", "2", "--threads", "1", "--no-progress"]) == 0
    assert "training llama: 4 layers, hidden 128, 4 heads (4 kv), mlp 384" in capsys.readouterr().err


def test_objective_and_model_family_must_agree(tmp_path, capsys):
    assert main(causal_args(tmp_path / "a", "--model", "llada-tiny", "--steps", "2")) == 2
    assert ("--objective causal trains a causal model (llama-small, llama-tiny or a Llama folder); --model "
            "'llada-tiny' is a bidirectional llada model") in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "b"), "--model", "llama-tiny", "--steps", "1", "--threads", "1",
                 "--no-progress"]) == 2
    assert ("--model 'llama-tiny' is a causal (llama) model; masked-diffusion SFT trains bidirectional ones "
            "(llada-*, dream-*): pass --objective causal") in capsys.readouterr().err
    out = tmp_path / "c"
    assert main(causal_args(out, "--steps", "2", "--save-every", "2")) == 0
    assert main(["train", "--out", str(out), "--model", "llada-tiny", "--batch-size", "8", "--steps", "4",
                 "--resume", "--threads", "1", "--no-progress", "--response-length", "64"]) == 2
    assert "it was trained with --objective 'causal' (now 'diffusion')" in capsys.readouterr().err
