"""Data and recipe for models that work outside one training setup: one-step problems, multi-turn conversations,
canvas lengths drawn from a mix with the EOS padding scored, dead columns for shorter canvases, and trajectory sets
of several canvas lengths in one distillation."""

import collections

import pytest
import torch
import torch.nn.functional as F

import d3llm
from d3llm import ConfigError
from d3llm.cli.main import main
from d3llm.models.prompts import encode_conversation, encode_prompt
from d3llm.tasks import arith
from d3llm.tasks.arith import count_tokens
from d3llm.tasks.data import ArithDataset, load_dataset, load_jsonl, parse_arith_spec, with_turns, write_jsonl
from d3llm.tasks.tokenizer import build_tokenizer
from d3llm.training.collate import Encoder
from d3llm.training.loss import add_noise, draw_noise, masked_diffusion_loss
from d3llm.training.mixes import DEFAULT_CANVAS_MIX, Mix
from d3llm.training.sft import MaskedDiffusionObjective
from d3llm.training.trainer import TrainConfig


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    build_tokenizer(folder)
    return d3llm.load_tokenizer(folder)


# ------------------------------------------------------------------------------------------------------------------
# task data
# ------------------------------------------------------------------------------------------------------------------

def test_one_step_problems_leave_the_other_problems_unchanged():
    problems = arith.make_problems("train", 2000)
    counts = collections.Counter(p.steps for p in problems)
    assert set(counts) == {1, 2, 3, 4} and 0.1 < counts[1] / 2000 < 0.2
    one = next(p for p in problems if p.steps == 1)
    assert one.answer.count("\n") == 1 and one.answer.endswith(f"#### {one.target}")
    # a two-to-four-step problem is the one the previous generator drew for its index (the one-step draw is apart)
    import random

    for p in problems[:200]:
        if p.steps > 1:
            rng = random.Random(f"arith:0:train:{p.index}")
            skeleton, *_ = arith._draw(rng, "train")
            assert skeleton == p.skeleton


def test_conversations_stay_inside_their_split():
    test_skeletons = {p.skeleton for p in arith.make_problems("test", 3000)}
    for i in range(50):
        conv = arith.make_conversation("train", i, 4)
        assert len(conv) == 4 and conv[-1] == arith.make_problem("train", i)
        assert not {p.skeleton for p in conv} & test_skeletons
        assert all(p.split == "test" for p in arith.make_conversation("test", i, 3))
    assert arith.make_conversation("test", 7, 2) == arith.make_conversation("test", 7, 2)
    with pytest.raises(ConfigError, match="at least one turn"):
        arith.make_conversation("test", 0, 0)


def test_two_turn_test_set_ends_in_the_one_turn_questions(tok):
    one, two = load_dataset("arith:test"), load_dataset("arith:test:turns=2")
    assert len(one) == len(two) == 500 and two.name == "arith:test:turns=2"
    for i in (0, 17, 499):
        assert two[i].question == one[i].question and two[i].gold == one[i].gold
        assert len(two[i].history) == 1 and not one[i].history
    ids = encode_conversation(tok, two[0].question, two[0].history)
    single = encode_prompt(tok, one[0].question)
    assert len(ids) > len(single) and ids[-len(single) + 1:] == single[1:]  # the question closes the prompt
    text = tok.decode(ids)
    assert two[0].history[0][1] in text and text.count("<|start_header_id|>user") == 2


def test_dataset_spec_options_and_errors():
    assert parse_arith_spec("arith:test:turns=3,steps=1-2") == ("test", {"turns": 3, "steps": (1, 2)})
    assert parse_arith_spec("arith", "train") == ("train", {})
    assert with_turns("arith", 2) == "arith:test:turns=2"
    assert with_turns("arith:test:steps=1", 3) == "arith:test:turns=3,steps=1"
    assert with_turns("data.jsonl", None) == "data.jsonl"
    with pytest.raises(ConfigError, match="is a file"):
        with_turns("data.jsonl", 2)
    for bad, match in [("arith:test:turns=9", "turns=N"), ("arith:test:steps=0", "steps=A"),
                       ("arith:test:color=red", "unknown option 'color'"), ("arith:test:turns", "not valid")]:
        with pytest.raises(ConfigError, match=match):
            load_dataset(bad)
    with pytest.raises(ConfigError, match="cannot filter the endless training stream"):
        ArithDataset("train", steps=(1,), unique=False)
    one_step = load_dataset("arith:test:steps=1", size=40)
    assert len(one_step) == 40 and all(e.answer.count("\n") == 1 for e in one_step)
    assert one_step.max_answer_tokens == 14 and load_dataset("arith:test", size=2).max_answer_tokens == 47
    train = load_dataset("arith:train:steps=1-2", size=50)  # a training split of few-step problems, materialised
    assert len(train) == 50 and {e.answer.count("\n") for e in train} == {1, 2}
    assert not {e.question for e in train} & {e.question for e in load_dataset("arith:test:steps=1-2", size=50)}
    assert max(count_tokens(e.answer) for e in train) <= train.max_answer_tokens == 25


def test_history_round_trips_through_jsonl(tmp_path):
    data = load_dataset("arith:test:turns=3", size=3)
    back = load_jsonl(write_jsonl(tmp_path / "conv.jsonl", [data[i] for i in range(3)]))
    assert [e.history for e in back.items] == [data[i].history for i in range(3)]
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "#### 1", "history": [{"question": 1}]}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: field 'history' must be a list"):
        load_jsonl(tmp_path / "bad.jsonl")


# ------------------------------------------------------------------------------------------------------------------
# canvas mixes and batches
# ------------------------------------------------------------------------------------------------------------------

def test_mix_parsing_drawing_and_fitting():
    mix = Mix.parse(DEFAULT_CANVAS_MIX, "--canvas-lengths")
    assert mix.values[0] == 32 and mix.values[-1] == 256 and sum(mix.weights) == pytest.approx(1.0)
    assert mix.fit(32, 40) == 48 and mix.fit(128, 10) == 128 and mix.fit(32, 300) is None
    gen = torch.Generator().manual_seed(0)
    drawn = collections.Counter(mix.draw(gen) for _ in range(4000))
    for v, w in zip(mix.values, mix.weights):
        assert abs(drawn[v] / 4000 - w) < 0.03
    assert Mix.parse("48", "--x").values == (48,)
    for bad, match in [("48:0", "positive number"), ("abc", "not a value"), ("0", "at least 1"),
                       ("48,48", "listed twice"), ("48:inf", "positive number")]:
        with pytest.raises(ConfigError, match=match):
            Mix.parse(bad, "--canvas-lengths")


def test_dead_columns_are_never_attended_nor_scored(tok):
    """Rows of canvases 48 and 64 in one batch: the 48-row's loss and logits equal those of a batch of its own."""
    model = d3llm.build_model("llada-tiny", vocab_size=len(tok), mask_token_id=tok.mask_token_id,
                              eos_token_id=tok.eos_token_id)
    model.eval()
    enc = Encoder(tok, response_length=48)
    short, long = (enc.encode_example(arith.make_problem("train", i), n) for i, n in ((3, 48), (5, 64)))
    batch = enc.collate([short, long])
    assert batch.response_length == 64 and batch.canvas_lengths.tolist() == [48, 64]
    assert batch.attention_mask[0, -16:].sum() == 0 and batch.response_mask[0, 48:].sum() == 0
    t = torch.tensor([0.6, 0.6])
    u = draw_noise(2, 64, torch.Generator().manual_seed(2))[1]
    noisy, masked, p = add_noise(batch, tok.mask_token_id, t, u)
    assert not masked[0, -16:].any()
    alone = enc.collate([short])
    out_alone = masked_diffusion_loss(model, alone, tok.mask_token_id, t[:1], u[:1, :48])
    logits = model(noisy, attention_mask=batch.attention_mask).logits
    rows, cols = masked.nonzero(as_tuple=True)
    ce = F.cross_entropy(logits[rows, cols], batch.input_ids[rows, cols], reduction="none") / p[rows]
    per_row = [ce[rows == b].sum() / n for b, n in ((0, 48), (1, 64))]
    mixed = masked_diffusion_loss(model, batch, tok.mask_token_id, t, u)
    assert torch.allclose(mixed.loss, (per_row[0] + per_row[1]) / 2, rtol=1e-5)
    assert torch.allclose(per_row[0], out_alone.loss, rtol=1e-4)


def test_each_step_is_one_bucket_of_canvas_and_turns(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "o"), model="llada-tiny", batch_size=8, threads=1, progress=False)
    obj = MaskedDiffusionObjective(cfg)
    from d3llm.training import distributed as distm

    obj.setup(distm.DistInfo(), tmp_path / "o")
    seen_canvas, seen_turns = set(), set()
    for step in range(40):
        drawn, turns = obj.bucket(step)
        batch = obj.batch(step, 0, 1, "cpu").batch
        widths = set(batch.canvas_lengths.tolist())
        assert min(widths) >= drawn and widths <= set(obj.canvas.values)
        seen_canvas |= widths
        seen_turns.add(turns)
        # every prompt of the step holds the same number of questions
        texts = [obj.tokenizer.decode(row[m.bool()]) for row, m in zip(batch.input_ids, batch.attention_mask)]
        assert {t.count("<|start_header_id|>user") for t in texts} == {turns}
        assert obj.bucket(step) == (drawn, turns)  # a pure function of the step
    assert {32, 256} <= seen_canvas and len(seen_turns) >= 2
    half = obj.batch(5, 1, 2, "cpu")
    full = obj.batch(5, 0, 1, "cpu")
    assert torch.equal(half.u, full.u[4:, :half.u.shape[1]])  # data-parallel ranks see the global batch's noise


def test_training_flags_are_checked(tmp_path, capsys):
    base = ["train", "--out", str(tmp_path / "r"), "--model", "llada-tiny", "--steps", "1", "--threads", "1",
            "--no-progress"]
    assert main(base + ["--canvas-lengths", "32"]) == 2
    assert "--canvas-lengths 32 is too short for the built-in task" in capsys.readouterr().err
    assert main(base + ["--canvas-lengths", "48:x"]) == 2
    assert "--canvas-lengths '48:x': '48:x' is not a value" in capsys.readouterr().err
    assert main(base + ["--turns", "5"]) == 2
    assert "--turns '5': 5 must be from 1 to 4" in capsys.readouterr().err
    data = write_jsonl(tmp_path / "d.jsonl", arith.make_problems("train", 4))
    build_tokenizer(tmp_path / "tok")
    assert main(base + ["--data", str(data), "--turns", "2", "--tokenizer", str(tmp_path / "tok")]) == 2
    assert "--turns builds conversations of the built-in task" in capsys.readouterr().err


def test_eval_and_sweep_take_turns(capsys, tmp_path):
    assert main(["eval", "--turns", "2", "--limit", "4", "--json", "--threads", "1", "--method", "vanilla",
                 "--max-new-tokens", "48"]) == 0
    assert '"dataset": "arith:test:turns=2"' in capsys.readouterr().out
    data = write_jsonl(tmp_path / "d.jsonl", arith.make_problems("test", 2))
    assert main(["eval", "--task", str(data), "--turns", "2"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_trained_folder_declares_its_longest_canvas(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--model", "llada-tiny", "--steps", "2", "--batch-size", "4",
                 "--canvas-lengths", "48:1,96:1", "--threads", "1", "--no-progress", "--eval-size", "4"]) == 0
    config = d3llm.load_model(out).generation_config
    assert config.max_trained_new_tokens == 96 and config.values["max_new_tokens"] == 48
    causal = tmp_path / "ar"
    assert main(["train", "--objective", "causal", "--out", str(causal), "--model", "llama-tiny", "--steps", "2",
                 "--batch-size", "4", "--threads", "1", "--no-progress", "--eval-size", "4"]) == 0
    assert d3llm.load_model(causal).generation_config.max_trained_new_tokens is None  # no canvas: no limit
