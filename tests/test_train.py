"""Masked-diffusion SFT: batch layout, the LLaDA-guideline loss, the schedule, data order, and tiny end-to-end runs
through ``d3llm train`` (exact resume, errors)."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import d3llm
from d3llm import CheckpointError, ConfigError
from d3llm.cli.main import main
from d3llm.tasks import arith
from d3llm.tasks.data import ListDataset, write_jsonl
from d3llm.tasks.tokenizer import build_tokenizer
from d3llm.models.prompts import encode_prompt
from d3llm.training.collate import Encoder
from d3llm.training.loss import add_noise, draw_noise, masked_diffusion_loss
from d3llm.training.trainer import DataStream, TrainConfig, lr_at, train


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    build_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def tok(tok_dir):
    return d3llm.load_tokenizer(tok_dir)


def tiny_args(out, *extra):
    return ["train", "--out", str(out), "--model", "llada-tiny", "--batch-size", "8", "--warmup-steps", "2",
            "--lr", "3e-3", "--eval-size", "8", "--log-every", "1", "--threads", "1", "--no-progress",
            "--response-length", "64", *extra]


def test_collate_layout(tok):
    enc = Encoder(tok, response_length=16)
    short = enc.encode("Tom has 3 pens.", "3 + 4 = 7.\n#### 7")
    long = enc.encode("Tom has 3 pens. He buys 4 more pens.", "#### 7")
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert short.response[:short.answer_tokens] == tok.encode("3 + 4 = 7.\n#### 7", add_special_tokens=False)
    assert short.response[short.answer_tokens] == eot
    assert set(short.response[short.answer_tokens + 1:]) == {tok.eos_token_id} and len(short.response) == 16
    batch = enc.collate([short, long])
    width = len(long.prompt)
    assert batch.input_ids.shape == (2, width + 16) and batch.response_start == width
    pad = width - len(short.prompt)
    assert batch.attention_mask[0].tolist() == [0] * pad + [1] * (len(short.prompt) + 16)
    assert batch.attention_mask[1].all()
    assert batch.input_ids[0, pad:width].tolist() == short.prompt
    assert batch.input_ids[:, width:].tolist() == [short.response, long.response]
    assert batch.num_tokens() == len(short.prompt) + len(long.prompt) + 32


def test_encode_prompt_is_the_chat_templated_prompt_training_sees(tok):
    question = "Tom has 3 pens."
    ids = encode_prompt(tok, question)
    assert ids == Encoder(tok, response_length=16).encode(question, "#### 3").prompt
    assert tok.convert_ids_to_tokens(ids[:2]) == ["<|startoftext|>", "<|start_header_id|>"]
    assert tok.decode(ids) == tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                      add_generation_prompt=True)


def test_encoder_rejects_long_answers(tok):
    enc = Encoder(tok, response_length=4)
    with pytest.raises(ConfigError, match=r"file.jsonl:3: the answer takes 6 tokens .* more than the response "
                                          r"length 4; raise --response-length"):
        enc.encode("q", "1 + 2 = 3", source="file.jsonl:3")


def test_noise_masks_only_the_response(tok):
    enc = Encoder(tok, response_length=64)
    batch = enc.collate([enc.encode_example(ex) for ex in
                         [arith.make_problem("train", i) for i in range(4)]])
    t = torch.tensor([0.0, 0.3, 0.7, 1.0])
    gen = torch.Generator().manual_seed(0)
    _, u = draw_noise(4, 64, gen)
    noisy, masked, p = add_noise(batch, tok.mask_token_id, t, u, eps=1e-3)
    assert torch.allclose(p, (1 - 1e-3) * t + 1e-3)
    assert not masked[:, : batch.response_start].any()
    assert torch.equal(noisy == tok.mask_token_id, masked)
    assert masked[3, batch.response_start:].all()          # t = 1 masks the whole response
    assert masked.sum(1).tolist() == (u < p[:, None]).sum(1).tolist()
    with pytest.raises(ValueError, match="noise shapes"):
        add_noise(batch, tok.mask_token_id, t[:2], u)


def test_loss_is_the_llada_guideline(tok):
    """sum over masked tokens of CE / p, divided by the response length, averaged over the batch."""
    model = d3llm.build_model("llada-tiny", vocab_size=len(tok), mask_token_id=tok.mask_token_id,
                              eos_token_id=tok.eos_token_id)
    enc = Encoder(tok, response_length=64)
    batch = enc.collate([enc.encode_example(arith.make_problem("train", i)) for i in range(3)])
    t, u = draw_noise(3, 64, torch.Generator().manual_seed(1))
    out = masked_diffusion_loss(model, batch, tok.mask_token_id, t, u, eps=1e-3)
    noisy, masked, p = add_noise(batch, tok.mask_token_id, t, u, eps=1e-3)
    logits = model(noisy, attention_mask=batch.attention_mask).logits
    expected = 0.0
    for b in range(3):
        ce = F.cross_entropy(logits[b][masked[b]], batch.input_ids[b][masked[b]], reduction="sum")
        expected += ce / p[b] / 64
    assert out.masked == int(masked.sum()) > 0
    assert torch.allclose(out.loss, expected / 3, rtol=1e-5)
    out.loss.backward()
    assert model.model.transformer.wte.weight.grad.abs().sum() > 0
    none = masked_diffusion_loss(model, batch, tok.mask_token_id, torch.zeros(3), torch.ones(3, 64))
    assert none.masked == 0 and none.loss.item() == 0.0 and none.loss.requires_grad


def test_lr_schedule():
    cfg = TrainConfig(out="x", steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(99, cfg) == pytest.approx(1e-4)
    mid = lr_at(10 + 89 // 2, cfg)
    assert 1e-4 < mid < 1e-3 and mid == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 44 / 89)))
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))


def test_file_data_order_is_a_seeded_permutation_per_epoch():
    ds = ListDataset(list(range(7)), "x")
    stream = DataStream(ds, seed=3)
    first, second = [stream.index(g) for g in range(7)], [stream.index(g) for g in range(7, 14)]
    assert sorted(first) == sorted(second) == list(range(7)) and first != second
    assert [DataStream(ds, seed=3).index(g) for g in range(7, 14)] == second
    assert [DataStream(ds, seed=4).index(g) for g in range(7)] != first


def test_tiny_training_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(out, "--steps", "40", "--save-every", "20", "--eval-every", "20")) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    evals = [e["eval_loss"] for e in log if "eval_loss" in e]
    assert len(losses) == 40 and len(evals) == 2
    assert sum(losses[-10:]) / 10 < 0.6 * losses[0] and evals[1] < evals[0]
    assert all(e["tokens_per_s"] > 0 for e in log if "loss" in e)
    assert [c.name for c in sorted((out / "checkpoints").iterdir())] == ["step-000020", "step-000040"]
    model = d3llm.load_model(out, device="cpu")
    tokenizer = d3llm.load_tokenizer(out)
    assert model.config.vocab_size == len(tokenizer) and model.config.mask_token_id == tokenizer.mask_token_id
    summary = json.loads((out / "training.json").read_text())
    assert summary["steps"] == 40 and summary["config"]["model"] == "llada-tiny"
    assert "step 40/40" in capsys.readouterr().err


def check_exact_resume(out, args, last_step: int) -> None:
    """After ``main(args)`` finished in ``out``: delete the last checkpoint and the result, resume from the earlier
    one, and check the final weights are bit-identical."""
    import shutil

    reference = load_file(out / "model.safetensors")
    shutil.rmtree(out / "checkpoints" / f"step-{last_step:06d}")
    (out / "model.safetensors").unlink()
    assert main(args + ["--resume"]) == 0
    resumed = load_file(out / "model.safetensors")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    """Delete the last checkpoint and the result, resume from the earlier one: bit-identical final weights."""
    out = tmp_path / "run"
    args = tiny_args(out, "--steps", "12", "--save-every", "6", "--eval-every", "100")
    assert main(args) == 0
    check_exact_resume(out, args, 12)
    state = json.loads((out / "checkpoints" / "step-000012" / "trainer_state.json").read_text())
    assert state["step"] == 12 and [e["step"] for e in state["history"] if "loss" in e] == list(range(1, 13))


WALL_CLOCK = ("tokens_per_s", "elapsed_s")


def log_without_wall_clock(out) -> list[dict]:
    """``train_log.jsonl`` without the fields that measure time."""
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK}
            for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_resumed_log_equals_the_uninterrupted_log(tmp_path):
    """A run that logged every line but lost its later checkpoints (as a run killed after step 9 without saving
    it) resumes from step 4, inside the window of the line of step 6: the log ends as the uninterrupted one."""
    out = tmp_path / "run"
    args = tiny_args(out, "--steps", "9", "--save-every", "4", "--keep", "5", "--log-every", "3", "--eval-every", "3")
    assert main(args) == 0
    uninterrupted = log_without_wall_clock(out)
    assert [(e["step"], "loss" in e) for e in uninterrupted] == [(s, train) for s in (3, 6, 9) for train in (1, 0)]
    for step in (8, 9):
        shutil.rmtree(out / "checkpoints" / f"step-{step:06d}")
    (out / "model.safetensors").unlink()
    assert main(args + ["--resume"]) == 0
    assert log_without_wall_clock(out) == uninterrupted


def test_resume_refuses_another_schedule_unless_allowed(tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_args(out, "--steps", "4", "--save-every", "2", "--eval-every", "100")
    assert main(args) == 0
    capsys.readouterr()
    for extra, change in [(["--steps", "6"], "--steps 4 (now 6)"), (["--lr", "1e-3"], "--lr 0.003 (now 0.001)"),
                          (["--warmup-steps", "1"], "--warmup-steps 2 (now 1)"),
                          (["--min-lr-ratio", "0.5"], "--min-lr-ratio 0.05 (now 0.5)"),
                          (["--weight-decay", "0.1"], "--weight-decay 0.0 (now 0.1)"),
                          (["--grad-clip", "0.5"], "--grad-clip 1.0 (now 0.5)")]:
        assert main(args + ["--resume", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert f"cannot resume from {out / 'checkpoints' / 'step-000004'}: it was trained with {change}, which " \
               f"shape the learning-rate schedule and the optimizer; pass the same values to continue that run, or " \
               f"--allow-schedule-change to go on with the new ones" in err, err
    assert main(args + ["--resume", "--steps", "6", "--allow-schedule-change"]) == 0
    assert "(step 4) with a changed schedule: --steps 4 (now 6)" in capsys.readouterr().err
    assert [e["step"] for e in log_without_wall_clock(out) if "loss" in e] == [1, 2, 3, 4, 5, 6]
    state = json.loads((out / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
    assert state["config"]["steps"] == 6
    assert main(args + ["--resume", "--steps", "7", "--weight-decay", "0.1", "--allow-schedule-change"]) == 0
    groups = torch.load(out / "checkpoints" / "step-000007" / "optimizer.pt", weights_only=True)["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]  # the new value, not the one the checkpoint held


def test_an_explicit_warmup_equal_to_the_default_is_no_schedule_change():
    from d3llm.training.config import schedule_changes

    saved = TrainConfig(out="x", steps=100).to_dict()
    assert schedule_changes(saved, TrainConfig(out="x", steps=100, warmup_steps=10)) == []
    assert schedule_changes(saved, TrainConfig(out="x", steps=200)) == ["--steps 100 (now 200)",
                                                                         "--warmup-steps 10 (now 20)"]


@pytest.mark.parametrize("command", ["train", "distill"])
def test_help_documents_allow_schedule_change(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--allow-schedule-change with --resume: continue even though --steps, --lr" in text


def test_checkpoint_corruption_is_detected(tmp_path):
    out = tmp_path / "run"
    cfg = dict(out=str(out), model="llada-tiny", steps=4, batch_size=4, warmup_steps=1, save_every=2, keep=3,
               eval_every=100, eval_size=4, log_every=2, threads=1, progress=False)
    train(TrainConfig(**cfg))
    last = out / "checkpoints" / "step-000004"
    weights = last / "model" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"step-000004: model/model.safetensors is truncated or corrupted "
                                              r"\(\d+ bytes, the manifest says \d+\); delete .*step-000004"):
        train(TrainConfig(**cfg, resume=True))
    weights.write_bytes(data)
    opt = last / "optimizer.pt"
    raw = bytearray(opt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    opt.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"optimizer.pt is corrupted \(SHA-256 differs from the manifest\)"):
        train(TrainConfig(**cfg, resume=True))
    (last / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"step-000004 has no manifest.json: it is incomplete"):
        train(TrainConfig(**cfg, resume=True))


def test_interrupted_save_leaves_no_checkpoint(tmp_path):
    """A partial folder (what a save killed mid-way leaves) is never a checkpoint and is cleaned up."""
    out = tmp_path / "run"
    cfg = dict(out=str(out), model="llada-tiny", steps=2, batch_size=4, warmup_steps=1, save_every=2,
               eval_every=100, eval_size=4, threads=1, progress=False)
    partial = out / "checkpoints" / ".step-000004.partial-999"
    partial.mkdir(parents=True)
    (partial / "optimizer.pt").write_bytes(b"half")
    train(TrainConfig(**cfg, resume=True))  # no complete checkpoint: starts from step 0
    assert not partial.exists()
    assert [c.name for c in (out / "checkpoints").iterdir()] == ["step-000002"]


def test_option_errors(tmp_path, tok_dir, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(out, "--steps", "2", "--save-every", "2")) == 0
    assert main(tiny_args(out, "--steps", "2")) == 2
    assert "already holds checkpoints (latest: step 2); pass --resume" in capsys.readouterr().err
    assert main(tiny_args(out, "--steps", "4", "--batch-size", "4", "--resume")) == 2
    assert "it was trained with --batch-size 8 (now 4)" in capsys.readouterr().err
    assert main(tiny_args(tmp_path / "b", "--set", "n_layers")) == 2
    assert "--set expects KEY=VALUE" in capsys.readouterr().err
    assert main(tiny_args(tmp_path / "c", "--model", "llada-huge")) == 2
    assert "neither a model folder" in capsys.readouterr().err
    assert main(tiny_args(tmp_path / "d", "--response-length", "32")) == 2
    assert "--response-length 32 is too short for the built-in task" in capsys.readouterr().err
    data = write_jsonl(tmp_path / "train.jsonl", arith.make_problems("train", 10))
    assert main(tiny_args(tmp_path / "e", "--data", str(data))) == 2
    assert "needs a tokenizer: pass --tokenizer FOLDER" in capsys.readouterr().err
    assert main(tiny_args(tmp_path / "f", "--steps", "0")) == 2
    assert "--steps must be positive" in capsys.readouterr().err


def test_jsonl_data_and_dream_family(tmp_path, tok_dir):
    """A user file with its own tokenizer, a Dream model, then fine-tuning the result from its folder."""
    data = write_jsonl(tmp_path / "train.jsonl", arith.make_problems("train", 12))
    out = tmp_path / "dream"
    args = ["train", "--out", str(out), "--model", "dream-tiny", "--data", str(data), "--tokenizer", str(tok_dir),
            "--steps", "6", "--batch-size", "8", "--warmup-steps", "1", "--log-every", "3", "--threads", "1",
            "--no-progress"]
    assert main(args) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [3, 6] and log[-1]["epoch"] == pytest.approx(6 * 8 / 12)
    model = d3llm.load_model(out, device="cpu")
    assert model.family == "dream"
    tuned = tmp_path / "tuned"
    assert main(["train", "--out", str(tuned), "--model", str(out), "--data", str(data), "--steps", "2",
                 "--batch-size", "4", "--warmup-steps", "1", "--threads", "1", "--no-progress"]) == 0
    assert d3llm.load_model(tuned, device="cpu").family == "dream"
