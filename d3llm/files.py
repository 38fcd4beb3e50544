"""Reading and writing the project's files, with errors that name the file and say what is wrong with it.

Reading (:func:`read_text`, :func:`read_json`, :func:`decode_utf8`, :func:`parse_json`): a file that cannot be
read, is not UTF-8 or is not valid JSON becomes the caller's :class:`~d3llm.errors.D3LLMError` subclass naming
the file and the place (byte offset, line and column), never a bare ``UnicodeDecodeError`` or ``JSONDecodeError``.

Writing (:func:`atomic_write`, :func:`atomic_write_text`): every output is written to a temporary file beside its
target, synced, and renamed onto the target, so no reader ever sees a partial file. Before anything is written,
:func:`check_output_file` refuses a target that exists and is not a regular file (a device, a FIFO, a socket, a
folder): the rename would replace it. A symlink is written through: the temporary file is made beside the file it
points to and renamed onto that file, so the link stays a link. A write that the system refuses (read-only file
system, full disk, no permission) is a :class:`~d3llm.errors.WriteError` naming the file and the cause, and the
temporary file is removed. :func:`write_failure` recognises the exceptions libraries raise for such a refusal
(safetensors' ``I/O error ... (os error 28)``, ``torch.save``'s ``unexpected pos``).

No torch import here: the command-line parser uses this module.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable

from d3llm.errors import ConfigError, D3LLMError, WriteError

#: a failed write that leaves less free space than this (bytes) in its file system is taken for a full disk
FULL_DISK_MARGIN = 1 << 20

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")  # how Rust libraries (safetensors, tokenizers) print io errors


# ------------------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------------------

def decode_utf8(data: bytes, source: str | os.PathLike, error: type[D3LLMError] = ConfigError, *,
                offset: int = 0, line: int = 1) -> str:
    """``data`` decoded as UTF-8; bytes that are not UTF-8 raise ``error`` naming ``source``, the byte, its offset
    and its line. ``offset`` and ``line`` say where ``data`` starts in the file (for files read line by line)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = offset + exc.start
        at_line = line + data.count(b"\n", 0, exc.start)
        raise error(f"{source} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {at} (line {at_line}) "
                    f"cannot be decoded ({exc.reason}); save the file as UTF-8") from None


def read_text(path: str | os.PathLike, error: type[D3LLMError] = ConfigError) -> str:
    """The UTF-8 text of ``path``; an unreadable or non-UTF-8 file raises ``error`` naming the file."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise error(f"{file} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {file}: {exc.strerror or exc}") from None
    return decode_utf8(data, file, error)


def parse_json(text: str, source: str | os.PathLike, error: type[D3LLMError] = ConfigError) -> Any:
    """``text`` parsed as JSON; invalid JSON raises ``error`` naming ``source``, the line and the column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def read_json(path: str | os.PathLike, error: type[D3LLMError] = ConfigError) -> Any:
    """The parsed JSON content of ``path`` (see :func:`read_text` and :func:`parse_json` for the errors)."""
    return parse_json(read_text(path, error), path, error)


# ------------------------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------------------------

def check_output_file(path: str | os.PathLike, flag: str | None = None) -> Path:
    """The file to write for the output path ``path``: ``path`` itself, or the file a symlink points to.

    Raises :class:`~d3llm.errors.WriteError` when that file exists and is not a regular file (a folder, a device,
    a FIFO, a socket), which writing by rename would replace. ``flag`` (e.g. ``"--out"``) prefixes the path in the
    message. Nothing is written."""
    given = Path(path).expanduser()
    label = f"{flag} {path}" if flag else str(given)
    target = Path(os.path.realpath(given)) if given.is_symlink() else given
    where = f"{label} is a symlink to {target}, which" if target != given else label
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise WriteError(given, exc.strerror or str(exc), message=f"cannot write {label}: {exc.strerror or exc}",
                         errno=exc.errno) from None
    if stat.S_ISREG(mode):
        return target
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    if stat.S_ISDIR(mode):
        message = f"{where} is a folder; expected a file path"
    else:
        message = (f"{where} is {kind}, not a regular file; d3llm writes its output to a new file and renames it "
                   f"into place, which would replace it: choose a file path")
    raise WriteError(given, f"it is {kind}", message=message)


def write_failure(exc: BaseException, path: str | os.PathLike) -> OSError | None:
    """The system's refusal behind ``exc``, raised while writing ``path``, as an :class:`OSError`; None when
    ``exc`` is not a write failure.

    Recognised, in this order: an :class:`OSError` that is ``exc`` or that ``exc`` was raised while handling (when
    a write into a file object fails early, ``torch.save`` reports ``unexpected pos N vs M`` while closing the
    archive, with the real error as its context); a library error that quotes an OS error code (safetensors'
    ``I/O error: No space left on device (os error 28)``); ``torch.save``'s ``unexpected pos`` alone (its own
    writer, given a path, reports a short write only that way): a full disk when ``path``'s file system has less
    than :data:`FULL_DISK_MARGIN` bytes left, else an I/O error."""
    if isinstance(exc, D3LLMError) or not isinstance(exc, Exception):
        return None  # already explained (a nested write), or an interruption
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in seen:
        if isinstance(link, OSError) and not isinstance(link, D3LLMError):
            return link
        seen.append(link)
        link = link.__cause__ or link.__context__
    text = str(exc)
    code = _OS_ERROR_CODE.search(text)
    if code:
        number = int(code.group(1))
        return OSError(number, os.strerror(number), str(path))
    if isinstance(exc, RuntimeError) and "unexpected pos" in text:
        try:
            fs = os.statvfs(Path(path).parent)
            full = fs.f_bavail * fs.f_frsize < FULL_DISK_MARGIN
        except OSError:
            full = False
        if full:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return OSError(errno.EIO, f"the write stopped short ({text.strip().splitlines()[0]})", str(path))
    return None


def _creation_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (``0o666 & ~umask``)."""
    umask = os.umask(0o22)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(target: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``target`` (beside its target, for a symlink), then
    rename it onto the file; returns the path written.

    The output path is checked first (:func:`check_output_file`). The file gets the permissions a plain ``open()``
    would give it under the user's umask (the temporary file's private 0600 would otherwise survive the rename).
    A write refused by the system (:func:`write_failure`) raises :class:`~d3llm.errors.WriteError` naming
    ``target`` and the cause; on any failure the temporary file is removed."""
    real = check_output_file(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    except OSError as exc:
        raise WriteError(target, exc.strerror or str(exc), errno=exc.errno) from None
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _creation_mode())
        os.replace(tmp, real)
    except BaseException as exc:
        failure = write_failure(exc, tmp)  # before the removal, which frees the space the write took
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if failure is not None:
            raise WriteError(target, failure.strerror or str(failure), errno=failure.errno) from None
        raise
    return real


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically (see :func:`atomic_write`)."""
    return atomic_write(target, lambda p: p.write_text(text, encoding="utf-8"))


def append_text(target: str | os.PathLike, text: str) -> None:
    """Append ``text`` (UTF-8) to ``target`` (a log); a refused write raises :class:`~d3llm.errors.WriteError`."""
    try:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise WriteError(target, exc.strerror or str(exc), errno=exc.errno) from None


def make_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` and its parents (an existing folder is fine); a refusal raises
    :class:`~d3llm.errors.WriteError` naming the folder and the cause."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(path, exc.strerror or str(exc), message=f"cannot create the folder {path}: "
                                                                 f"{exc.strerror or exc}", errno=exc.errno) from None
    return path
