"""Stage 1: trajectory extraction (order == the engine's canvas, retries, SIGKILL + rerun, torchrun ranks), the
reference-format converters and the errors of bad trajectory sets."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import d3llm
from d3llm.cli.main import main
from d3llm.distill import TrajectoryError, read_trajectories, state_at
from d3llm.distill.config import ExtractConfig
from d3llm.distill.extract import answer_matches, decode_shard, load_source, prompt_of, \
    teacher_decoder
from d3llm.distill.reference import export_reference, import_reference
from distill_helpers import BLOCK, GEN, extract_args, tiny_teacher


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers")
    return {family: tiny_teacher(folder, family) for family in ("llada", "dream")}


@pytest.fixture(scope="module")
def extracted(teachers, tmp_path_factory):
    out = tmp_path_factory.mktemp("traj") / "t"
    assert main(extract_args(teachers["llada"], out, 6)) == 0
    return out


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_state_k_from_order_is_the_engine_canvas_after_step_k(teachers, family):
    teacher_dir = teachers[family]
    model, tok = d3llm.load_model(teacher_dir), d3llm.load_tokenizer(teacher_dir)
    cfg = ExtractConfig(teacher=str(teacher_dir), data="arith", out="-", limit=3, gen_length=GEN, block_size=BLOCK,
                        attempts=1)
    rows, _ = load_source("arith", 3, 0)
    prompts = [prompt_of(r, tok, True) for r in rows]
    method, params = teacher_decoder(model.family, cfg)
    records, _ = decode_shard(model, tok, rows, prompts, cfg, 0, method, params)
    for r, prompt in enumerate(prompts):
        canvases = []
        d3llm.generate(model, [prompt], method, temperature=0.0, seed=0,
                       callback=lambda ev: canvases.append(ev.canvas[0].copy()), **params)
        assert len(canvases) == GEN                       # exactly one token per forward
        assert sorted(records[r]["order"]) == list(range(GEN))
        for k, canvas in enumerate(canvases):
            assert state_at(prompt, records[r]["output_ids"], records[r]["order"], k, model.mask_token_id) \
                == canvas.tolist()
        assert (canvases[k][len(prompt):] != model.mask_token_id).sum() == GEN


def test_the_extract_bar_counts_the_batch_just_finished(teachers, monkeypatch):
    """The teacher's "% correct" includes the batch that just finished, retries (which make wrong rows right)
    included."""
    import d3llm.distill.extract as extract

    teacher_dir = teachers["llada"]
    model, tok = d3llm.load_model(teacher_dir), d3llm.load_tokenizer(teacher_dir)
    cfg = ExtractConfig(teacher=str(teacher_dir), data="arith", out="-", limit=4, gen_length=GEN, block_size=BLOCK,
                        attempts=2, batch_size=2)
    rows, _ = load_source("arith", 4, 0)
    prompts = [prompt_of(r, tok, True) for r in rows]
    method, params = teacher_decoder(model.family, cfg)
    verdicts = iter([True, False, True, False, True, True])  # rows 0, 2 right at once; rows 1, 3 on their retry
    monkeypatch.setattr(extract, "answer_matches", lambda text, gold: next(verdicts))
    bar, shown = extract._Bar(4, 0, True), []

    def on_batch(new_rows, retry, correct):
        bar.advance(new_rows, retry, correct)
        shown.append((new_rows, retry, correct, bar.bar.tasks[0].fields["info"].split("teacher ")[1].split("%")[0]))

    _, stats = decode_shard(model, tok, rows, prompts, cfg, 0, method, params, on_batch=on_batch)
    bar.close()
    assert shown == [(2, False, 1, "50.0"), (2, False, 1, "50.0"), (0, True, 2, "100.0")]
    assert stats.correct == 4


def test_extraction_records_and_manifest(extracted, teachers):
    traj = read_trajectories(extracted)
    assert len(traj) == 6 and traj.gen_length == GEN and traj.idx.tolist() == list(range(6))
    m = traj.manifest
    assert m["decoder"] == {"method": "vanilla", "max_new_tokens": GEN, "block_size": BLOCK, "steps": GEN,
                            "remasking": "low_confidence"}
    assert m["chat_template"] is True and m["source"] == {"spec": "arith:train", "limit": 6, "data_seed": 0}
    assert len(m["shards"]) == 3 and all(len(s["sha256"]) == 64 for s in m["shards"])
    assert m["teacher_hash"] and m["tokenizer_hash"] and m["teacher_path"] == str(teachers["llada"].resolve())
    # a random teacher is always wrong: every row used both attempts and keeps the last one (SPEC 6.4)
    assert traj.columns["attempt"] == [1] * 6 and traj.columns["temperature"] == [0.1] * 6
    assert traj.columns["is_correct"] == [False] * 6 and m["stats"]["retried"] == 6
    rows, _ = load_source("arith", 6, 0)
    assert traj.columns["gold"] == [r.gold for r in rows] and traj.columns["question"] == [r.question for r in rows]
    assert traj.state(0, GEN - 1)[len(traj.prompt_ids[0]):] == traj.output_ids[0].tolist()


def test_answer_matching():
    assert answer_matches("Now 10 + 5 = 15.\n#### 15", "15")
    assert not answer_matches("#### 16", "15")
    assert answer_matches("so the answer is \\boxed{1,200}", "1200")
    assert answer_matches("anything", None)


def test_sigkill_mid_extraction_then_rerun_gives_the_uninterrupted_records(teachers, extracted, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "d3llm.cli.main", *extract_args(teachers["llada"], out, 6)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = out / "shards" / "shard-00000.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not first.exists():
        time.sleep(0.01)
    assert proc.poll() is None, f"extraction ended before it could be killed: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    # a finished shard whose file was damaged is not trusted: it is decoded again
    shard0 = out / "shards" / "shard-00000.parquet"
    shard0.write_bytes(shard0.read_bytes()[:-10])
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stderr
    assert read_trajectories(out).rows() == read_trajectories(extracted).rows()
    assert json.loads((out / "manifest.json").read_text())["shards"] == \
        json.loads((extracted / "manifest.json").read_text())["shards"]
    # a rerun of a finished extraction keeps everything
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "3 finished shard(s) verified and kept" in again.stderr


def test_two_torchrun_ranks_give_the_records_of_one_process(teachers, extracted, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "d3llm.cli.main", *extract_args(teachers["llada"], out, 6)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert read_trajectories(out).rows() == read_trajectories(extracted).rows()


def test_extraction_options_are_checked_against_the_folder(teachers, extracted, capsys):
    assert main(extract_args(teachers["llada"], extracted, 6, "--seed", "5")) == 2
    assert "holds trajectories of another configuration (differs in: seed (0 there, 5 now)); rerun with the same " \
           "options" in capsys.readouterr().err


def test_reference_import_export_round_trip(extracted, teachers, tmp_path):
    ref = tmp_path / "ref.json"
    assert export_reference(extracted, ref) == 6
    rows = json.loads(ref.read_text())
    traj = read_trajectories(extracted)
    mask = traj.mask_id
    assert len(rows[0]["trajectory"]) == GEN and rows[0]["final_output"] == rows[0]["trajectory"][-1]
    assert sum(t == mask for t in rows[0]["trajectory"][0]) == GEN - 1      # state 0: one token committed
    imported = tmp_path / "imported"
    assert main(["trajectories", "import-reference", str(ref), "--out", str(imported), "--teacher",
                 str(teachers["llada"])]) == 0
    back = read_trajectories(imported)
    for a, b in zip(back.rows(), traj.rows()):
        assert {k: a[k] for k in ("idx", "prompt_ids", "output_ids", "order", "is_correct", "generated_text",
                                  "question", "gold")} == {k: b[k] for k in ("idx", "prompt_ids", "output_ids",
                                                                            "order", "is_correct",
                                                                            "generated_text", "question", "gold")}
    assert back.manifest["teacher_hash"] == traj.manifest["teacher_hash"]
    again = tmp_path / "again.json"
    assert main(["trajectories", "export-reference", str(imported), str(again)]) == 0
    assert json.loads(again.read_text()) == rows


def test_import_reference_marks_never_unmasked_positions(tmp_path):
    mask = 9
    rows = [{"idx": 0, "question": "q", "prompt_ids": [1, 2], "final_output": [1, 2, 5, mask, 7],
             "trajectory": [[1, 2, mask, mask, 7], [1, 2, 5, mask, 7]], "is_correct": True}]
    (tmp_path / "r.json").write_text(json.dumps(rows))
    import_reference(tmp_path / "r.json", tmp_path / "o", mask_id=mask)
    assert read_trajectories(tmp_path / "o").order.tolist() == [[1, 3, 0]]
    bad = [{k: v for k, v in rows[0].items() if k != "trajectory"}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(TrajectoryError, match=r"bad.json row 0: missing field\(s\) trajectory"):
        import_reference(tmp_path / "bad.json", tmp_path / "o2", mask_id=mask)


def _rewrite_shard(folder, mutate):
    """Rewrite shard 0 of a copied set with ``mutate(table)`` and fix its manifest checksum (a well-formed but bad
    set)."""
    import pyarrow.parquet as pq

    from d3llm.distill import store

    file = folder / "shards" / "shard-00000.parquet"
    pq.write_table(mutate(pq.read_table(file)), file)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][0].update(size=file.stat().st_size, sha256=store.sha256_file(file))
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_bad_trajectory_sets_are_clear_errors(extracted, tmp_path):
    import shutil

    import pyarrow as pa

    with pytest.raises(TrajectoryError, match="does not exist"):
        read_trajectories(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(TrajectoryError, match="has no manifest.json; expected a folder written by"):
        read_trajectories(tmp_path / "plain")

    def copy(name):
        shutil.copytree(extracted, tmp_path / name)
        return tmp_path / name

    f = copy("missing")
    _rewrite_shard(f, lambda t: t.drop_columns(["order"]))
    with pytest.raises(TrajectoryError, match=r"shard-00000.parquet: missing column\(s\) order"):
        read_trajectories(f)
    f = copy("range")
    _rewrite_shard(f, lambda t: t.set_column(t.column_names.index("order"), "order",
                                             pa.array([[GEN + 3] * GEN] * t.num_rows, pa.list_(pa.int32()))))
    with pytest.raises(TrajectoryError, match=rf"'order' values must lie in \[0, {GEN}\]"):
        read_trajectories(f)
    f = copy("length")
    _rewrite_shard(f, lambda t: t.set_column(t.column_names.index("order"), "order",
                                             pa.array([[0] * 3] * t.num_rows, pa.list_(pa.int32()))))
    with pytest.raises(TrajectoryError, match=rf"'order' has 3 values, expected one per output id \({GEN}\)"):
        read_trajectories(f)
    f = copy("empty")
    for i in range(3):
        _rewrite_shard_n = f / "shards" / f"shard-0000{i}.parquet"
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(_rewrite_shard_n).slice(0, 0), _rewrite_shard_n)
    from d3llm.distill import store

    manifest = json.loads((f / "manifest.json").read_text())
    for entry in manifest["shards"]:
        file = f / entry["file"]
        entry.update(size=file.stat().st_size, sha256=store.sha256_file(file))
    (f / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrajectoryError, match="holds no trajectories"):
        read_trajectories(f)
    f = copy("tampered")
    (f / "shards" / "shard-00001.parquet").write_bytes(b"PAR1")
    with pytest.raises(TrajectoryError, match="shard-00001.parquet is corrupted or was changed"):
        read_trajectories(f)


def test_extract_input_errors(teachers, tmp_path, capsys):
    assert main(["trajectories", "extract", "--teacher", str(tmp_path), "--data", "arith", "--limit", "2",
                 "--out", str(tmp_path / "o")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main(["trajectories", "extract", "--teacher", str(teachers["llada"]), "--data", "arith",
                 "--out", str(tmp_path / "o")]) == 2
    assert "pass --limit N" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["trajectories", "extract", "--teacher", str(teachers["llada"]), "--data", str(empty),
                 "--out", str(tmp_path / "o")]) == 2
    assert "holds no rows" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"answer": "#### 3"}) + "\n")
    assert main(["trajectories", "extract", "--teacher", str(teachers["llada"]), "--data", str(bad),
                 "--out", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:1: each row needs a non-empty string 'question' or a list 'prompt_ids'" in \
        capsys.readouterr().err


def test_prompt_ids_rows_are_used_as_they_are(teachers, tmp_path):
    data = tmp_path / "ids.jsonl"
    data.write_text(json.dumps({"prompt_ids": [7, 8, 9], "gt_answer": "12"}) + "\n"
                    + json.dumps({"question": "Tom has 12 pens. How many pens does Tom have now?"}) + "\n")
    out = tmp_path / "o"
    assert main(["trajectories", "extract", "--teacher", str(teachers["llada"]), "--data", str(data), "--out",
                 str(out), "--gen-length", str(GEN), "--block-size", str(BLOCK), "--attempts", "1",
                 "--no-chat-template", "--no-progress", "--threads", "1"]) == 0
    traj = read_trajectories(out)
    tok = d3llm.load_tokenizer(teachers["llada"])
    assert traj.prompt_ids[0] == [7, 8, 9] and traj.columns["gold"] == ["12", None]
    assert traj.prompt_ids[1] == tok.encode("Tom has 12 pens. How many pens does Tom have now?",
                                            add_special_tokens=False)
    assert traj.manifest["chat_template"] is False and traj.columns["is_correct"][1] is True
    assert np.isin(traj.order, np.arange(GEN)).all() and torch.tensor(traj.order).shape == (2, GEN)
