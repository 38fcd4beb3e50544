"""A write the system refuses (read-only folder, full disk) is one line from the command, naming the file and the
cause, with exit status 2, and leaves no partial file: ``eval``, ``sweep``, ``trajectories extract``, ``train`` and
``distill``, plus the exact exceptions torch.save and safetensors raise on a full disk."""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import d3llm
from d3llm import D3LLMError
from d3llm.cli.main import main
from distill_helpers import BLOCK, GEN, extract_args, tiny_teacher

NO_SPACE = os.strerror(errno.ENOSPC)
DENIED = os.strerror(errno.EACCES)
TRAIN = ["--model", "llada-tiny", "--steps", "2", "--batch-size", "4", "--warmup-steps", "1", "--save-every", "2",
         "--eval-every", "100", "--eval-size", "4", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def teacher_and_trajectories(tmp_path_factory):
    folder = tmp_path_factory.mktemp("writes")
    teacher = tiny_teacher(folder)
    traj = folder / "traj"
    assert main(extract_args(teacher, traj, 4)) == 0
    return teacher, traj


def distill_args(teacher, traj, out):
    return ["distill", "--teacher", str(teacher), "--trajectories", str(traj), "--out", str(out), "--steps", "2",
            "--batch-size", "4", "--warmup-steps", "1", "--window-sizes", "8", "--save-every", "2", "--eval-size", "0",
            "--threads", "1", "--no-progress", "--keep-incorrect"]


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)`` makes ``folder`` refuse new files and folders: chmod 0o500 where that stops this
    process; as root (whom permissions do not stop) the same refusal, EACCES, injected where every file and folder
    is created: os.open (which tempfile.mkstemp, and so every atomic write, uses) and os.mkdir."""
    chmodded = []

    def apply(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            folder.chmod(0o500)
            chmodded.append(folder)
            return folder
        real_open, real_mkdir = os.open, os.mkdir

        def inside(path) -> bool:
            path = Path(os.path.abspath(path))
            return path != folder and path.is_relative_to(folder)

        def refuse(path):
            raise PermissionError(errno.EACCES, DENIED, str(path))

        monkeypatch.setattr(os, "open", lambda path, flags, *a, **k: refuse(path)
                            if flags & os.O_CREAT and inside(path) else real_open(path, flags, *a, **k))
        monkeypatch.setattr(os, "mkdir", lambda path, *a, **k: refuse(path) if inside(path)
                            else real_mkdir(path, *a, **k))
        return folder

    yield apply
    for folder in chmodded:
        folder.chmod(0o700)


class FullDisk:
    """A file object that takes ``room`` bytes and then fails as a full disk does (OSError ENOSPC)."""

    def __init__(self, fh, room: int):
        self.fh, self.room = fh, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.fh.write(data[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, NO_SPACE)
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)



def _no_checkpoint_left(out: Path) -> None:
    ckpts = out / "checkpoints"
    assert not ckpts.exists() or list(ckpts.iterdir()) == [], list(ckpts.iterdir())
    assert not (out / "model.safetensors").exists()


# -- read-only folders ----------------------------------------------------------------------------------------------

def test_eval_into_a_read_only_folder(teacher_and_trajectories, tmp_path, read_only, error_line):
    teacher, _ = teacher_and_trajectories
    folder = read_only(tmp_path / "ro")
    out = folder / "eval.json"
    assert main(["eval", "--model", str(teacher), "--limit", "1", "--max-new-tokens", str(GEN), "--block-size",
                 str(BLOCK), "--no-progress", "--out", str(out)]) == 2
    # the partial results are written first, before any decoding
    assert error_line("eval") == f"d3llm eval: error: cannot write {out}.partial: {DENIED}"
    assert list(folder.iterdir()) == []


def test_sweep_into_a_read_only_folder(tmp_path, read_only, error_line):
    folder = read_only(tmp_path / "ro")
    assert main(["sweep", "--methods", "multi_block", "--thresholds", "1", "--limit", "1", "--no-plot",
                 "--no-progress", "--out", str(folder / "sweep")]) == 2  # the shipped teacher: a scorable curve
    assert (error_line("sweep")
            == f"d3llm sweep: error: cannot create the folder {folder / 'sweep'}: {DENIED}")
    assert list(folder.iterdir()) == []


def test_extract_into_a_read_only_folder(teacher_and_trajectories, tmp_path, read_only, error_line):
    teacher, _ = teacher_and_trajectories
    folder = read_only(tmp_path / "ro")
    assert main(extract_args(teacher, folder / "traj", 2)) == 2
    assert (error_line("trajectories")
            == f"d3llm trajectories: error: cannot create the folder {folder / 'traj'}: {DENIED}")
    assert list(folder.iterdir()) == []


def test_train_and_distill_into_a_read_only_folder(teacher_and_trajectories, tmp_path, read_only, error_line):
    teacher, traj = teacher_and_trajectories
    folder = read_only(tmp_path / "ro")
    assert main(["train", "--out", str(folder / "run"), *TRAIN]) == 2
    assert (error_line("train")
            == f"d3llm train: error: cannot create the folder {folder / 'run'}: {DENIED}")
    assert main(distill_args(teacher, traj, folder / "student")) == 2
    assert (error_line("distill")
            == f"d3llm distill: error: cannot create the folder {folder / 'student'}: {DENIED}")
    assert list(folder.iterdir()) == []


def test_a_checkpoint_folder_turned_read_only(tmp_path, read_only, error_line):
    out = tmp_path / "run"
    read_only(out / "checkpoints")
    assert main(["train", "--out", str(out), *TRAIN]) == 2
    line = error_line("train")
    assert line.startswith(f"d3llm train: error: cannot write {out / 'checkpoints' / 'step-000002'}: {DENIED}")
    _no_checkpoint_left(out)


def test_any_other_os_error_is_one_line_too(tmp_path, error_line, monkeypatch):
    """The dispatcher's last line of defence: an OSError no module explained still names its file and cause."""
    import d3llm.models.checkpoint

    def refuse(folder):
        raise PermissionError(errno.EACCES, DENIED, str(Path(folder) / "config.json"))

    monkeypatch.setattr(d3llm.models.checkpoint, "load_config", refuse)
    assert main(["info", str(tmp_path)]) == 2
    assert error_line("info") == f"d3llm info: error: {tmp_path / 'config.json'}: {DENIED}"


# -- full disks -----------------------------------------------------------------------------------------------------

def test_train_on_a_full_disk_names_the_optimizer_file(tmp_path, error_line, monkeypatch):
    """torch.save writing into a file that fills up: torch reports it as 'unexpected pos', with the real error as
    its context; the command says which file and that the disk is full."""
    real_save = torch.save

    def save_on_full_disk(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):  # eb2fbdb handed torch.save a path
            with open(f, "wb") as fh:
                return real_save(obj, FullDisk(fh, 100), *args, **kwargs)
        return real_save(obj, FullDisk(f, 100), *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_full_disk)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TRAIN]) == 2
    assert error_line("train") == (
        f"d3llm train: error: cannot write {out / 'checkpoints' / 'step-000002' / 'optimizer.pt'}: {NO_SPACE} "
        f"(the incomplete checkpoint was removed)")
    _no_checkpoint_left(out)


@pytest.mark.parametrize("free_bytes,reason", [
    (0, NO_SPACE),
    (10 << 30, r"the write stopped short \(\[enforce fail at inline_container.cc:672\] . unexpected pos 123 vs 45\)"),
])
def test_torch_saves_unexpected_pos_is_a_write_failure(tmp_path, error_line, monkeypatch, free_bytes, reason):
    """What torch.save raises when handed a path on a full disk (measured on a 1 MiB tmpfs): the free space of the
    file system tells a full disk from another short write."""
    import re

    real_statvfs = os.statvfs

    def save_on_full_disk(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(b"PK\x03\x04 partial")
        else:
            f.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 45")

    def statvfs(path):
        result = real_statvfs(path)
        return os.statvfs_result((result.f_bsize, 4096, result.f_blocks, 0 if free_bytes == 0 else result.f_bfree,
                                  free_bytes // 4096, *result[5:]))

    monkeypatch.setattr(torch, "save", save_on_full_disk)
    monkeypatch.setattr(os, "statvfs", statvfs)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TRAIN]) == 2
    assert re.fullmatch(rf"d3llm train: error: cannot write {re.escape(str(out))}/checkpoints/step-000002/"
                        rf"optimizer.pt: {reason} \(the incomplete checkpoint was removed\)",
                        error_line("train"))
    _no_checkpoint_left(out)


def _safetensors_on_full_disk(monkeypatch):
    """Make safetensors' save_file write a part of the file and then raise what it raises on a full disk (measured
    on a 1 MiB tmpfs)."""
    import d3llm.models.checkpoint
    from safetensors import SafetensorError

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(d3llm.models.checkpoint, "save_file", save_file)


def test_save_model_on_a_full_disk(tmp_path, monkeypatch):
    _safetensors_on_full_disk(monkeypatch)
    folder = tmp_path / "model"
    with pytest.raises(D3LLMError, match=rf"cannot write {folder / 'model.safetensors'}: {NO_SPACE}$"):
        d3llm.save_model(d3llm.build_model("llada-tiny"), folder)
    assert list(folder.iterdir()) == []


def test_distill_on_a_full_disk(teacher_and_trajectories, tmp_path, error_line, monkeypatch):
    teacher, traj = teacher_and_trajectories
    _safetensors_on_full_disk(monkeypatch)
    out = tmp_path / "student"
    assert main(distill_args(teacher, traj, out)) == 2
    assert error_line("distill") == (
        f"d3llm distill: error: cannot write {out / 'checkpoints' / 'step-000002' / 'model' / 'model.safetensors'}: "
        f"{NO_SPACE} (the incomplete checkpoint was removed)")
    _no_checkpoint_left(out)


def _can_mount_tmpfs(folder: Path) -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {folder}"],
                           capture_output=True)
    return probe.returncode == 0


def test_train_on_a_really_full_tmpfs(tmp_path):
    """A real full disk: a 1 MiB tmpfs in a private mount namespace, where the final model fits but a checkpoint
    (weights and twice as much optimizer state) does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("mounting a tmpfs needs root and unshare")
    out = disk / "run"
    inner = (f"mount -t tmpfs -o size=1m tmpfs {disk} && {sys.executable} -m d3llm.cli.main train --out {out} "
             f"{' '.join(TRAIN)}; echo exit=$?; ls -a {out}/checkpoints; ls {out}")
    run = subprocess.run(["unshare", "-m", "sh", "-c", inner], capture_output=True, text=True, timeout=300)
    errors = [line for line in run.stderr.splitlines() if "error" in line or "Traceback" in line]
    assert errors == [f"d3llm train: error: cannot write {out}/checkpoints/step-000002/optimizer.pt: {NO_SPACE} "
                      f"(the incomplete checkpoint was removed)"], run.stderr
    assert "exit=2" in run.stdout
    listing = run.stdout.split("exit=2")[1].split()
    assert "step-000002" not in listing and not any(".partial" in name for name in listing), run.stdout
    assert "model.safetensors" not in listing
