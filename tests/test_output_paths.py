"""An output path that exists and is not a regular file (a FIFO, a device, a socket, a folder) is refused before any
work with a one-line error, never replaced by the write-then-rename of the atomic writer; a symlink to a regular
file is written through to its target and stays a symlink."""

import os
import stat

import pytest

import d3llm
from d3llm import D3LLMError
from d3llm.cli.main import main
from d3llm.models.checkpoint import atomic_write_text
from d3llm.tasks import arith, load_dataset, write_jsonl


def _fail(*args, **kwargs):
    pytest.fail("the work started before the output path was checked")



@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "out.json"
    os.mkfifo(path)
    return path


@pytest.fixture
def char_device(tmp_path):
    """A character device node (the numbers of /dev/null) inside tmp_path: creating one needs root."""
    path = tmp_path / "null"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot create a device node here ({exc})")
    return path


def test_eval_refuses_a_fifo_before_loading_the_model(fifo, error_line, monkeypatch):
    monkeypatch.setattr(d3llm, "load_model", _fail)
    assert main(["eval", "--limit", "1", "--out", str(fifo)]) == 2
    line = error_line("eval")
    assert f"--out {fifo} is a FIFO (named pipe), not a regular file" in line
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_eval_refuses_dev_null_and_leaves_it_untouched(error_line, monkeypatch):
    before = os.stat("/dev/null")
    assert stat.S_ISCHR(before.st_mode)
    monkeypatch.setattr(d3llm, "load_model", _fail)  # refused before this, so nothing can ever write there
    assert main(["eval", "--limit", "1", "--out", "/dev/null"]) == 2
    assert "--out /dev/null is a character device, not a regular file" in error_line("eval")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def test_the_atomic_writer_never_replaces_a_device_fifo_or_folder(char_device, fifo, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for path, kind in ((char_device, "a character device"), (fifo, "a FIFO"), (folder, "a folder")):
        with pytest.raises(D3LLMError, match=f"{path} is {kind}"):
            atomic_write_text(path, "{}")
    assert stat.S_ISCHR(os.stat(char_device).st_mode) and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert folder.is_dir() and not any(folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "null", "out.json"]  # no temporary file left


def test_a_symlink_is_written_through_to_its_target(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    target = data / "real.jsonl"
    target.write_text("old\n")
    link = tmp_path / "train.jsonl"
    link.symlink_to(os.path.join("data", "real.jsonl"))  # relative, as links usually are
    write_jsonl(link, arith.make_problems("train", 3))
    assert link.is_symlink() and os.readlink(link) == os.path.join("data", "real.jsonl")
    assert len(load_dataset(str(target))) == 3
    chained = tmp_path / "chained.jsonl"
    chained.symlink_to(link)
    atomic_write_text(chained, "{}\n")
    assert chained.is_symlink() and link.is_symlink() and target.read_text() == "{}\n"
    assert sorted(p.name for p in data.iterdir()) == ["real.jsonl"]  # the temporary file was beside the target


def test_a_symlink_to_a_device_is_refused(char_device, tmp_path):
    link = tmp_path / "link.json"
    link.symlink_to(char_device)
    with pytest.raises(D3LLMError, match=f"{link} is a symlink to {char_device}, which is a character device"):
        atomic_write_text(link, "{}")
    assert link.is_symlink() and stat.S_ISCHR(os.stat(char_device).st_mode)


def test_export_reference_refuses_a_fifo_before_reading(fifo, tmp_path, error_line):
    assert main(["trajectories", "export-reference", str(tmp_path / "no-such-folder"), str(fifo)]) == 2
    assert f"{fifo} is a FIFO (named pipe), not a regular file" in error_line("trajectories")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_sweep_refuses_a_fifo_among_its_outputs_before_decoding(tmp_path, error_line, monkeypatch):
    import d3llm.eval.sweep

    out = tmp_path / "sweep"
    out.mkdir()
    os.mkfifo(out / "sweep.md")
    monkeypatch.setattr(d3llm.eval.sweep, "run_sweep", _fail)
    assert main(["sweep", "--methods", "multi_block", "--thresholds", "1", "--limit", "1", "--no-plot",
                 "--out", str(out)]) == 2
    assert f"{out / 'sweep.md'} is a FIFO (named pipe)" in error_line("sweep")


def test_extract_refuses_a_fifo_manifest_before_decoding(tmp_path, error_line, monkeypatch):
    import d3llm.models.checkpoint

    out = tmp_path / "traj"
    out.mkdir()
    os.mkfifo(out / "manifest.json")
    monkeypatch.setattr(d3llm.models.checkpoint, "load_model", _fail)
    assert main(["trajectories", "extract", "--data", "arith", "--limit", "2", "--out", str(out),
                 "--no-progress"]) == 2
    assert f"{out / 'manifest.json'} is a FIFO (named pipe)" in error_line("trajectories")


def test_train_refuses_a_fifo_in_its_output_folder_before_training(tmp_path, error_line):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / "model.safetensors")
    assert main(["train", "--out", str(out), "--model", "llada-tiny", "--steps", "2", "--batch-size", "4",
                 "--eval-every", "100", "--save-every", "2", "--threads", "1", "--no-progress"]) == 2
    assert f"{out / 'model.safetensors'} is a FIFO (named pipe)" in error_line("train")
    assert stat.S_ISFIFO(os.stat(out / "model.safetensors").st_mode)
    assert not (out / "checkpoints").exists()


def test_benchmark_out_is_checked_by_the_parser(fifo, tmp_path):
    import argparse

    from d3llm.eval.environment import record_path

    assert record_path(str(tmp_path / "new.json")) == str(tmp_path / "new.json")
    with pytest.raises(argparse.ArgumentTypeError, match=f"--out {fifo} is a FIFO"):
        record_path(str(fifo))


def test_write_record_refuses_a_fifo(fifo):
    from d3llm.eval.environment import write_record

    with pytest.raises(D3LLMError, match="is a FIFO"):
        write_record(fifo, {"x": 1})
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
