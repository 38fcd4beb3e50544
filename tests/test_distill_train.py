"""Stage 2: SPEC 7.2 masking, the curricula, the loss, LoRA merging, and tiny ``d3llm distill`` runs (exact resume,
torchrun, a Dream student, bad input)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import d3llm
from d3llm.cli.main import main
from d3llm.distill import TrajectoryError
from d3llm.distill.curricula import noise_lower, window_size
from d3llm.distill.masking import noisy_inputs, response_lengths
from d3llm.distill.objective import DistillBatch, distillation_loss
from distill_helpers import extract_args, tiny_teacher

MASK = 99


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill")
    out = {}
    for family in ("llada", "dream"):
        teacher = tiny_teacher(folder, family)
        traj = folder / f"{family}-traj"
        assert main(extract_args(teacher, traj, 16, "--attempts", "1", "--shard-size", "8", "--batch-size", "8")) == 0
        out[family] = (teacher, traj)
    return out


def distill_args(teacher, traj, out, *extra):
    return ["distill", "--teacher", str(teacher), "--trajectories", str(traj), "--out", str(out), "--steps", "8",
            "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "1", "--window-sizes", "8,16", "--save-every",
            "4", "--eval-size", "0", "--log-every", "1", "--threads", "1", "--no-progress", "--keep-incorrect",
            *extra]


def _log(folder, wall_clock: bool = True):
    """``train_log.jsonl``; ``wall_clock=False`` drops the fields that measure time."""
    rows = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return rows if wall_clock else [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")}
                                    for r in rows]


# ------------------------------------------------------------------------------------------------------------------
# masking (SPEC 7.2) and curricula (SPEC 7.3)
# ------------------------------------------------------------------------------------------------------------------

def _one(t, order, block, block_u=0.0, length=None, width=64, prompt=5, random_mask=False, u=None):
    targets = torch.arange(1, prompt + width + 1)[None]
    lengths = torch.tensor([length or width])
    return noisy_inputs(targets, prompt, torch.as_tensor(order)[None], lengths, block,
                        torch.tensor([t], dtype=torch.float64), torch.tensor([block_u], dtype=torch.float64),
                        torch.zeros(1, width, dtype=torch.float64) if u is None else u, MASK, n_states=width,
                        random_mask=random_mask), targets


@pytest.mark.parametrize("t,hidden", [(0.0, 0), (0.03, 0), (0.1, 3), (0.25, 7), (0.5, 15), (0.75, 23), (0.8, 25)])
def test_trajectory_mask_hides_what_the_teacher_had_not_decoded(t, hidden):
    """Blocks of 32 aligned with the teacher's: the teacher's state rel_s + floor((1 - t) * 32) (one token more
    than nominal, as the reference), for the first block and for the second."""
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    order = torch.cat([order[:32].argsort().argsort(), 32 + order[32:].argsort().argsort()])   # block-wise order
    for block_u, start in ((0.0, 0), (0.5, 32)):
        nb, targets = _one(t, order, 32, block_u=block_u)
        p = 5 + start
        assert int(nb.hidden.sum()) == hidden
        assert nb.block_start.item() == start
        assert not nb.hidden[0, :p].any() and not nb.hidden_complement[0, :p].any()
        assert torch.equal(nb.noisy[0, :p], targets[0, :p]) and torch.equal(nb.complement[0, :p], targets[0, :p])
        block = slice(p, p + 32)
        assert torch.equal(nb.hidden[0, block], order[start:start + 32] > start + int((1 - t) * 32))
        assert torch.equal(nb.hidden[0, block] ^ nb.hidden_complement[0, block], torch.ones(32, dtype=torch.bool))
        assert torch.equal(nb.noisy[0, block] == MASK, nb.hidden[0, block])
        assert torch.equal(nb.complement[0, block] == MASK, nb.hidden_complement[0, block])
        assert (nb.noisy[0, p + 32:] == MASK).all() and (nb.complement[0, p + 32:] == MASK).all()
        assert not nb.hidden[0, p + 32:].any() and not nb.hidden_complement[0, p + 32:].any()


def test_last_block_choice_runs_to_the_end_and_random_mask_follows_t():
    order = torch.arange(64)
    nb, _ = _one(0.5, order, 16, block_u=0.99, length=40)          # R = 40: blocks 0, 1 and the tail [32, 64)
    assert (nb.block_start.item(), nb.block_end.item()) == (32, 64)
    assert int(nb.hidden.sum()) == 32 - (16 + 1)                   # state 32 + 16: 17 of the 32 revealed
    u = torch.rand(1, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    nb, _ = _one(0.5, order, 64, random_mask=True, u=u)
    assert torch.equal(nb.hidden[0, 5:], u[0] < (1 - 1e-3) * 0.5 + 1e-3)
    assert torch.equal(nb.hidden_complement[0, 5:], ~nb.hidden[0, 5:])


def test_response_lengths_and_dream_padding():
    resp = torch.tensor([[4, 4, 0, 0], [4, 4, 4, 4]])
    assert response_lengths(resp, eos_id=0, padding_counts=False).tolist() == [3, 4]
    assert response_lengths(resp, eos_id=0, padding_counts=True).tolist() == [4, 4]
    # Dream pads trajectories with "revealed" (-1), LLaDA with "never" (N): padding columns beyond the N states
    order = torch.tensor(list(range(8)) + [-1] * 8)
    nb, _ = _one(0.9, order, 16, width=16)
    assert not nb.hidden[0, 5 + 8:].any() and nb.hidden[0, 5:5 + 8].sum() == 8 - 2   # state floor(0.1 * 16) = 1
    nb, _ = _one(0.9, torch.tensor(list(range(8)) + [16] * 8), 16, width=16)
    assert nb.hidden[0, 5 + 8:].all()


def test_curricula_values():
    assert noise_lower(0, 100) == 0.0 and noise_lower(50, 100) == pytest.approx(0.4)
    assert noise_lower(100, 100) == pytest.approx(0.8) and noise_lower(150, 100) == pytest.approx(0.8)
    assert noise_lower(25, 100, 0.2, 0.6) == pytest.approx(0.3)
    sizes = [16, 16, 24, 24, 32, 32]
    assert [window_size(e, sizes) for e in (0.0, 0.5, 1.0, 1.5, 2.25, 3.5, 4.0, 4.9, 5.5, 9.0)] == \
        [16, 16, 16, 20, 24, 28, 32, 32, 32, 32]
    assert window_size(7.0, [16, 24]) == 24 and window_size(0.5, [16, 48]) == 32


def test_loss_terms_are_spec_7_4():
    torch.manual_seed(0)
    b, length, vocab = 3, 10, 7
    targets = torch.randint(0, vocab, (b, length))
    hidden = torch.rand(b, length) < 0.4
    logits, logits_rev = torch.randn(b, length, vocab), torch.randn(b, length, vocab)
    batch = DistillBatch(targets, targets, torch.ones(b, length), targets, hidden, ~hidden,
                         torch.zeros(b, dtype=torch.long), 1, 0.5, 0.1, 8)
    ce = F.cross_entropy(logits[hidden], targets[hidden])
    ce_rev = F.cross_entropy(logits_rev[~hidden], targets[~hidden])

    def ent(lg, m):
        p = F.softmax(lg / 0.5, -1)
        h = -(p * torch.log(p + 1e-12)).sum(-1)
        ok = (lg.argmax(-1) == targets) & m
        return (h * ok).sum() / ok.sum()

    out = distillation_loss(logits, logits_rev, batch, "llada", 2.0)
    assert out.loss.item() == pytest.approx(((ce + ce_rev + 2.0 * ent(logits, hidden)) / 4).item(), rel=1e-5)
    out = distillation_loss(logits, logits_rev, batch, "dream", 1.0)
    expect = (ce + ce_rev + ent(logits, hidden) + ent(logits_rev, ~hidden)) / 4
    assert out.loss.item() == pytest.approx(expect.item(), rel=1e-5)
    out = distillation_loss(logits, None, batch, "llada", 2.0)
    assert out.loss.item() == pytest.approx(((ce + 2.0 * ent(logits, hidden)) / 4).item(), rel=1e-5)
    none = DistillBatch(targets, targets, torch.ones(b, length), targets, torch.zeros_like(hidden),
                        torch.zeros_like(hidden), torch.zeros(b, dtype=torch.long), 1, 0.0, 0.0, 8)
    logits.requires_grad_(True)
    zero = distillation_loss(logits, logits_rev, none, "llada", 2.0)
    assert zero.loss.item() == 0.0 and zero.loss.requires_grad


# ------------------------------------------------------------------------------------------------------------------
# LoRA
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("targets", ["reference", "all"])
def test_lora_merge_gives_the_peft_model_logits(setup, targets):
    from d3llm.distill.lora import merged_copy, wrap_lora
    from d3llm.distill.objective import ALL_LORA_TARGETS, REFERENCE_LORA_TARGETS

    model = d3llm.load_model(setup["llada"][0])
    names = REFERENCE_LORA_TARGETS if targets == "reference" else ALL_LORA_TARGETS["llada"]
    peft_model = wrap_lora(model, names, r=4, alpha=8)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    adapted = sorted({n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters()
                      if "lora_A" in n})
    expected = ["k_proj", "q_proj", "up_proj", "v_proj"] if targets == "reference" else \
        ["attn_out", "ff_out", "ff_proj", "k_proj", "q_proj", "up_proj", "v_proj"]
    assert adapted == expected                     # the LM head transformer.ff_out is never adapted
    ids = torch.randint(0, 200, (2, 12))
    with torch.no_grad():
        want = peft_model(ids).logits
        merged = merged_copy(peft_model)
        got = merged(ids).logits
        base = d3llm.load_model(setup["llada"][0])(ids).logits
    assert type(merged).__name__ == "LLaDALM" and not any("lora" in k for k in merged.state_dict())
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, base, atol=1e-3)


def test_lora_distillation_saves_a_merged_public_checkpoint_and_resumes(setup, tmp_path):
    teacher, traj = setup["llada"]
    out = tmp_path / "lora"
    args = distill_args(teacher, traj, out, "--lora", "--lora-r", "4", "--lora-targets", "all")
    assert main(args) == 0
    weights = load_file(out / "model.safetensors")
    assert set(weights) == set(load_file(teacher / "model.safetensors"))
    assert "extra.safetensors" in json.loads((out / "checkpoints" / "step-000008" / "manifest.json").read_text())[
        "files"]
    shutil.rmtree(out / "checkpoints" / "step-000008")
    (out / "model.safetensors").unlink()
    assert main(args + ["--resume"]) == 0
    again = load_file(out / "model.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights)


# ------------------------------------------------------------------------------------------------------------------
# d3llm distill runs
# ------------------------------------------------------------------------------------------------------------------

def test_distill_resume_is_bit_exact(setup, tmp_path):
    teacher, traj = setup["llada"]
    out = tmp_path / "run"
    args = distill_args(teacher, traj, out)
    assert main(args) == 0
    reference = load_file(out / "model.safetensors")
    teacher_w = load_file(teacher / "model.safetensors")
    assert any(not torch.equal(reference[k], teacher_w[k]) for k in reference)
    log = _log(out)
    assert [e["window"] for e in log] == [8, 12, 16, 16, 16, 16, 16, 16]     # 16 rows, batch 8: epoch = step / 2
    assert [round(e["noise_lower"], 3) for e in log] == [round(0.8 * s / 8, 3) for s in range(8)]
    assert all(e["noise_lower"] <= e["t"] <= 0.8 for e in log)
    shutil.rmtree(out / "checkpoints" / "step-000008")
    (out / "model.safetensors").unlink()
    assert main(args + ["--resume"]) == 0
    resumed = load_file(out / "model.safetensors")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    summary = json.loads((out / "training.json").read_text())
    assert summary["objective"] == "distill" and summary["trajectories"]["rows"] == 16
    assert main(args + ["--resume", "--fixed-noise", "0.5"]) == 2


def test_distill_resumed_log_equals_the_uninterrupted_log_and_the_schedule_is_kept(setup, tmp_path, capsys):
    """Resumed at step 4, inside the window of the line of step 6: the log ends as the uninterrupted one (the
    noise, window and loss terms averaged over the same steps); another --lr is refused unless allowed."""
    teacher, traj = setup["llada"]
    out = tmp_path / "run"
    args = distill_args(teacher, traj, out, "--log-every", "3")
    assert main(args) == 0
    uninterrupted = _log(out, wall_clock=False)
    assert [e["step"] for e in uninterrupted] == [3, 6, 8]
    shutil.rmtree(out / "checkpoints" / "step-000008")
    (out / "model.safetensors").unlink()
    assert main(args + ["--resume"]) == 0
    assert _log(out, wall_clock=False) == uninterrupted
    capsys.readouterr()
    assert main(args + ["--resume", "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert "it was trained with --lr 0.003 (now 0.001), which shape the learning-rate schedule" in err
    assert "--allow-schedule-change" in err
    assert main(args + ["--resume", "--lr", "1e-3", "--steps", "10", "--allow-schedule-change"]) == 0
    assert [e["step"] for e in _log(out)] == [3, 6, 8, 9, 10]


def test_two_process_torchrun_distillation_trains(setup, tmp_path):
    teacher, traj = setup["llada"]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "d3llm.cli.main", *distill_args(teacher, traj, out, "--steps", "12", "--micro-batch-size", "4")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "with 2 process(es), global batch 8" in run.stderr
    assert json.loads((out / "training.json").read_text())["world_size"] == 2
    losses = [e["loss"] for e in _log(out)]
    assert len(losses) == 12 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    d3llm.load_model(out)


def test_dream_student_distills_with_a_falling_loss(setup, tmp_path):
    teacher, traj = setup["dream"]
    out = tmp_path / "dream"
    assert main(distill_args(teacher, traj, out, "--steps", "30", "--save-every", "30", "--response-length", "20",
                             "--fixed-window", "16", "--fixed-noise", "0.5")) == 0
    log = _log(out)
    losses = [e["loss"] for e in log]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert all(e["entropy"] >= 0 for e in log)
    student = d3llm.load_model(out)
    assert student.family == "dream"


def test_distill_input_errors(setup, tmp_path, capsys):
    teacher, traj = setup["llada"]
    other, _ = setup["dream"]
    assert main(distill_args(other, traj, tmp_path / "a")) == 2
    err = capsys.readouterr().err
    assert "manifest.json was made by another teacher" in err and "teacher_hash" in err
    # same weights, another tokenizer
    swapped = tmp_path / "swapped"
    shutil.copytree(teacher, swapped)
    cfg = json.loads((swapped / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 12345
    (swapped / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert main(distill_args(swapped, traj, tmp_path / "b")) == 2
    assert "manifest.json was made by another tokenizer" in capsys.readouterr().err
    assert main(distill_args(tmp_path, traj, tmp_path / "c")) == 2
    assert "config.json" in capsys.readouterr().err
    assert main(distill_args(teacher, tmp_path / "nope", tmp_path / "d")) == 2
    err = capsys.readouterr().err
    assert "trajectory folder" in err and "nope does not exist" in err
    assert main(distill_args(teacher, traj, tmp_path / "e")[:-1]) == 2     # every record is incorrect
    assert "no usable trajectories" in capsys.readouterr().err
    with pytest.raises(TrajectoryError, match="has no manifest.json"):
        from d3llm.distill import read_trajectories

        read_trajectories(tmp_path)


def test_targets_from_the_source_data(setup, tmp_path):
    """--targets data: the source rows' answers are the targets; the trajectory's order still picks the masks (its
    padding beyond the N teacher positions reads as never decoded for LLaDA)."""
    from d3llm.distill.config import DistillConfig
    from d3llm.distill.objective import DistillationObjective
    from d3llm.tasks import arith
    from d3llm.training.distributed import DistInfo

    teacher, traj = setup["llada"]
    cfg = DistillConfig(out=str(tmp_path / "o"), teacher=str(teacher), trajectories=str(traj), targets="data",
                        data="arith", response_length=48, batch_size=4, keep_incorrect=True, eval_size=0)
    objective = DistillationObjective(cfg)
    objective.setup(DistInfo(), tmp_path)
    tok = d3llm.load_tokenizer(teacher)
    encoded, order = objective.examples[0]
    answer = tok.encode(arith.make_problem("train", 0).answer, add_special_tokens=False)
    assert encoded.response[:len(answer)] == answer and len(encoded.response) == 48
    assert order[16:].tolist() == [16] * 32
    batch = objective.batch(0, 0, 1, "cpu")
    assert batch.noisy.shape == batch.targets.shape and batch.targets.shape[1] == len(encoded.prompt) + 48
    assert torch.isfinite(objective.loss(objective.model, batch).loss)
    with pytest.raises(d3llm.ConfigError, match="--targets data needs --data"):
        DistillConfig(out="x", teacher="t", trajectories="t", targets="data").validate()


def test_trajectory_sets_of_several_canvas_lengths_train_together(setup, tmp_path):
    """``--trajectories A,B``: each step takes its whole batch from one set (its canvas width), in proportion to the
    set sizes, reading every set in order; a resumed run is exact and two-turn prompts are extracted as chat."""
    from d3llm.distill.objective import DistillationObjective, SetSchedule
    from d3llm.distill.config import DistillConfig
    from d3llm.training import distributed as distm

    teacher, short = setup["llada"]
    long = tmp_path / "long"
    args = extract_args(teacher, long, 8, "--attempts", "1", "--gen-length", "32", "--data", "arith:train:turns=2")
    assert main(args) == 0
    sched = SetSchedule([16, 8], seed=0)
    picks = [sched.at(s) for s in range(300)]
    assert [p for p in picks if p[0] == 0][:3] == [(0, 0), (0, 1), (0, 2)]  # each set read in order
    assert 0.55 < sum(p[0] == 0 for p in picks) / 300 < 0.78 and SetSchedule([16, 8], 0).at(123) == picks[123]
    cfg = DistillConfig(out=str(tmp_path / "o"), teacher=str(teacher), trajectories=f"{short},{long}", batch_size=4,
                        eval_size=0, keep_incorrect=True, window_sizes=[8, 16], threads=1, progress=False)
    obj = DistillationObjective(cfg)
    obj.setup(distm.DistInfo(), tmp_path / "o")
    assert obj.lengths == [16, 32] and len(obj.examples) == 24
    for step in range(12):
        k, _ = obj.schedule.at(step)
        batch = obj.batch(step, 0, 1, "cpu")
        n = obj.lengths[k]  # the response is the last n columns: each row's block lies there, nothing before
        block = batch.hidden | batch.hidden_complement
        assert block[:, -n:].any() and not block[:, :-n].any()
        assert not (batch.noisy[:, :-n] == obj.mask_id).any()
        if k == 1:  # two-turn prompts: two user turns in the chat template
            text = obj.tokenizer.decode(batch.targets[0][batch.attention_mask[0].bool()])
            assert text.count("<|start_header_id|>user") == 2
    out = tmp_path / "student"
    run = distill_args(teacher, f"{short},{long}", out, "--steps", "6", "--save-every", "3")
    assert main(run) == 0
    full = _log(out, wall_clock=False)
    shutil.rmtree(out / "checkpoints" / "step-000006")
    (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _log(out)[:3]))
    assert main(run + ["--resume"]) == 0
    assert _log(out, wall_clock=False) == full
