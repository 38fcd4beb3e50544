"""What ``d3llm lm-eval ARGS`` hands to lm-eval's own command line: d3llm's names translated into lm-eval's.

* ``--model NAME|DIR`` (a shipped model's name such as ``teacher``, or a model folder) becomes ``--model d3llm
  --model_args pretrained=FOLDER`` (the user's ``--model_args`` are kept next to it); ``--model d3llm``, ``hf`` and
  every other lm-eval model name are lm-eval's, as before. No ``--model`` (and no ``--config``): the shipped teacher,
  as in every d3llm command.
* ``--tasks arith`` (an alias, :data:`d3llm.eval.lm_tasks.TASK_ALIASES`) becomes ``d3llm_arith``, and naming any
  d3llm task adds ``--include_path`` d3llm's task folder (``lm-eval ls`` gets it too); next to a user's own
  ``--include_path`` (lm-eval takes one folder) a d3llm task is named by its YAML file instead.
* For a d3llm model: ``--apply_chat_template`` when its tokenizer has a chat template (as ``d3llm eval`` builds its
  prompts; ``--no_apply_chat_template``, d3llm's own flag, keeps the raw prompt), ``--batch_size`` of ``d3llm eval``
  (lm-eval's default is 1) and ``--device cpu`` on a machine without CUDA (lm-eval's default is ``cuda:0``) unless
  given.

:func:`translate` is pure (no lm-eval run, no model loaded), so the rules are tested on their own.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from d3llm.cli.options import EVAL_BATCH_SIZE

# lm-eval run's options that the translation reads: option strings -> (destination, number of values)
OPTIONS = {
    "--model": ("model", 1), "-M": ("model", 1),
    "--model_args": ("model_args", "+"), "-a": ("model_args", "+"),
    "--tasks": ("tasks", "+"), "-t": ("tasks", "+"),
    "--include_path": ("include_path", 1),
    "--apply_chat_template": ("apply_chat_template", "?"),
    "--no_apply_chat_template": ("no_apply_chat_template", 0),  # d3llm's own: never handed to lm-eval
    "--batch_size": ("batch_size", 1), "-b": ("batch_size", 1),
    "--device": ("device", 1),
    "--config": ("config", 1), "-C": ("config", 1),
}
SUBCOMMANDS = ("run", "ls", "validate")
HARNESS_MODEL = "d3llm"  # the lm-eval model name of d3llm.eval.harness


@dataclass
class Translation:
    """lm-eval's arguments (``argv``, subcommand first), the changes made (one phrase each) and the d3llm model
    folder (None when the model is not d3llm's)."""

    argv: list[str]
    changes: list[str] = field(default_factory=list)
    folder: str | None = None

    @property
    def changed(self) -> bool:
        """Whether anything was translated (the command then prints its note)."""
        return bool(self.changes)

    def note(self) -> str | None:
        """The one-line note of the translated command, or None when nothing was translated."""
        if not self.changes:
            return None
        return f"d3llm lm-eval: {'; '.join(self.changes)}: lm-eval {shlex.join(self.argv)}"


def has_chat_template(folder: str) -> bool:
    """Whether the model folder's tokenizer has a chat template (what ``d3llm eval`` then wraps questions in)."""
    import d3llm

    return bool(getattr(d3llm.load_tokenizer(folder), "chat_template", None))


def translate(argv: list[str], lm_eval_models: Collection[str] = (), device: str | None = None,
              is_chat: Callable[[str], bool] = has_chat_template) -> Translation:
    """lm-eval's command line for ``d3llm lm-eval argv`` (the rules are in the module docstring).

    ``lm_eval_models``: the model names lm-eval knows (a name that is neither one of them, a folder nor a shipped
    model is an error with a suggestion); ``device``: the device to pass a d3llm model when none is given (None:
    lm-eval's default); ``is_chat(folder)``: whether a d3llm model folder is a chat model.
    """
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "validate"):  # lm-eval's own help, and its checks of task files
        return Translation(argv)
    command = argv.pop(0) if argv[0] in SUBCOMMANDS else "run"
    if argv[:1] in (["-h"], ["--help"]):
        return Translation([command, *argv])
    found, rest = _split(argv)
    out = Translation([command])
    if command == "ls":
        _tasks(found, out, listing=True)
        out.argv += rest
        return out
    _model(found, out, lm_eval_models)
    _tasks(found, out, listing=False)
    if out.folder is not None:
        _d3llm_model_defaults(found, out, device, is_chat)
    else:
        for dest in ("apply_chat_template", "batch_size", "device"):
            out.argv += _given(found, dest)
        if "no_apply_chat_template" in found:
            raise _error("--no_apply_chat_template is for d3llm's models; lm-eval's own models use no chat template "
                         "unless --apply_chat_template is given")
    out.argv += _given(found, "config") + rest
    return out


def _split(argv: list[str]) -> tuple[dict[str, list[list[str]]], list[str]]:
    """The occurrences of :data:`OPTIONS` (destination -> the values of each occurrence) and the other arguments,
    in order. Values follow argparse: ``--opt=value`` or the next arguments up to the next option."""
    found: dict[str, list[list[str]]] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        i += 1
        if name not in OPTIONS:
            rest.append(token)
            continue
        dest, nargs = OPTIONS[name]
        if eq:
            values = [inline]
        else:
            take = {0: 0, "?": 1, 1: 1}.get(nargs, len(argv))
            values = []
            while len(values) < take and i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            if nargs in (1, "+") and not values:
                raise _error(f"{name} needs a value")
        found.setdefault(dest, []).append(values)
    return found, rest


def _given(found: dict, dest: str) -> list[str]:
    """The user's own occurrences of ``dest``, as lm-eval arguments."""
    flag = next(name for name, (d, _) in OPTIONS.items() if d == dest and name.startswith("--"))
    return [arg for values in found.get(dest, []) for arg in (flag, *values)]


def _tasks(found: dict, out: Translation, listing: bool) -> None:
    """``--tasks`` (aliases replaced by d3llm's task names) and ``--include_path``: d3llm's task folder when a d3llm
    task is named (or tasks are listed); beside a user's own folder (lm-eval takes one), a d3llm task is named by
    its YAML file instead."""
    from d3llm.eval.lm_tasks import TASK_ALIASES, TASK_FILES, TASKS_DIR

    names = [t for values in found.get("tasks", []) for value in values for t in value.split(",") if t]
    for alias in dict.fromkeys(n for n in names if n in TASK_ALIASES):
        out.changes.append(f"task {alias} is {TASK_ALIASES[alias]}")
    tasks = [TASK_ALIASES.get(n, n) for n in names]
    given = [values[0] for values in found.get("include_path", [])]
    include = given[-1] if given else None
    if include is not None and Path(include).resolve() != TASKS_DIR:
        files = {t: str(TASK_FILES[t]) for t in tasks if t in TASK_FILES}
        tasks = [files.get(t, t) for t in tasks]
        if files:
            out.changes.append(f"{', '.join(files)} given as YAML file beside --include_path {include}")
    elif include is None and (listing or any(t in TASK_FILES for t in tasks)):
        include = str(TASKS_DIR)
        out.changes.append("d3llm's tasks included")
    out.argv += (["--tasks", ",".join(tasks)] if tasks else []) + (["--include_path", include] if include else [])


def _model_args(found: dict) -> dict:
    """The user's ``--model_args`` merged as lm-eval merges them (JSON objects or ``key=value`` lists)."""
    from lm_eval._cli.utils import key_val_to_dict, try_parse_json

    merged: dict = {}
    for values in found.get("model_args", []):
        try:
            first = try_parse_json(values[0])
            if isinstance(first, dict):
                merged.update(first)
                continue
            for value in values:
                merged.update(key_val_to_dict(value))
        except ValueError as exc:
            raise _error(f"--model_args: {exc}") from None
    return merged


def _model(found: dict, out: Translation, lm_eval_models: Collection[str]) -> None:
    """``--model`` and ``--model_args`` (sets ``out.folder`` for a d3llm model)."""
    from d3llm.assets import SHIPPED, default_model_path, resolve_model, shipped_names

    specs = [values[0] for values in found.get("model", [])]
    spec = specs[-1] if specs else None
    user_args = _model_args(found)
    if spec is None and "config" in found:  # lm-eval's YAML config names the model
        out.argv += _given(found, "model_args")
        return
    if spec == HARNESS_MODEL:
        pretrained = user_args.get("pretrained")
        out.folder = str(resolve_model(str(pretrained))) if pretrained else str(default_model_path())
        out.argv += ["--model", HARNESS_MODEL, *_given(found, "model_args")]
        return
    path = resolve_model(spec) if spec is not None else default_model_path()
    is_folder = path.is_dir() and (spec is None or spec not in lm_eval_models or "/" in spec)
    if not is_folder:
        if spec in lm_eval_models or not lm_eval_models:
            out.argv += ["--model", spec, *_given(found, "model_args")]
            return
        from d3llm.errors import did_you_mean

        names = [n for m in SHIPPED for n in m.names] + sorted(lm_eval_models)
        what = "a file" if path.exists() else "no model folder"
        raise _error(f"--model {spec}: {what}, no shipped model ({shipped_names()}) and no lm-eval model of that "
                     f"name{did_you_mean(spec, names)}; lm-eval's own include {HARNESS_MODEL}, hf and "
                     f"local-chat-completions")
    if "pretrained" in user_args:
        raise _error(f"--model {spec} names the model and --model_args names pretrained={user_args['pretrained']} "
                     f"too: give one (--model {HARNESS_MODEL} --model_args pretrained=DIR is lm-eval's own spelling)")
    out.folder = str(path)
    value = f"pretrained={path}"
    if any(c in str(path) for c in ",='\"[]{}()"):  # lm-eval's key=value lists split at commas: JSON then
        value = json.dumps({"pretrained": str(path)})
    out.argv += ["--model", HARNESS_MODEL, "--model_args", value, *_given(found, "model_args")]
    out.changes.append(f"model {spec} is {path}" if spec is not None else f"model: the shipped teacher ({path})")


def _d3llm_model_defaults(found: dict, out: Translation, device: str | None, is_chat) -> None:
    """A d3llm model's prompts, batch size and device as ``d3llm eval``'s, unless the user gave their own."""
    if "apply_chat_template" in found:
        out.argv += _given(found, "apply_chat_template")
    elif "no_apply_chat_template" not in found and is_chat(out.folder):
        out.argv.append("--apply_chat_template")
        out.changes.append("chat template applied (as d3llm eval)")
    if "batch_size" in found:
        out.argv += _given(found, "batch_size")
    else:
        out.argv += ["--batch_size", str(EVAL_BATCH_SIZE)]
        out.changes.append(f"batch size {EVAL_BATCH_SIZE} (as d3llm eval)")
    if "device" in found:
        out.argv += _given(found, "device")
    elif device is not None:
        out.argv += ["--device", device]
        out.changes.append(f"device {device}")


def _error(message: str):
    from d3llm.errors import ConfigError

    return ConfigError(message)
