"""The README's and docs/'s commands and snippets work exactly as written.

In README.md and every docs/*.md, every fenced ``bash`` and ``python`` block runs, except a block right after an ``<!-- not run: reason -->`` line
(installs, the test suite itself, half-hour trainings). Bash blocks run in a temporary folder with this
interpreter's ``bin`` first on PATH (an activated environment); the Python blocks of one file run in order in one
interpreter, as a reader pastes them. A ``json`` block right after the sentence naming the teacher's file must equal that file.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FRONT_PAGE_LINES = 150
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(language: str, page: Path = README) -> list[tuple[int, str]]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        if match.group(1) != language:
            continue
        before = text[: match.start()].rstrip("\n").splitlines()
        if before and before[-1].startswith("<!-- not run:"):
            continue
        found.append((text[: match.start()].count("\n") + 1, match.group(2)))
    return found


def env() -> dict:
    out = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    return out


BASH = [(page, line, block) for page in PAGES for line, block in blocks("bash", page)]


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_there_is_something_to_run():
    assert len(blocks("bash")) >= 1 and len(blocks("python")) >= 1
    assert len(BASH) >= 5 and sum(len(blocks("python", p)) for p in PAGES) >= 5


def test_the_front_page_is_short_and_links_every_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= FRONT_PAGE_LINES
    for page in PAGES[1:]:
        assert f"]({_name(page)})" in text, f"README.md does not link {_name(page)}"


def test_relative_links_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\((?!https?://|#|mailto:)([^)#\s]+)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{_name(page)}: the link {target} leads nowhere"


@pytest.mark.parametrize("page,line,block", BASH, ids=lambda v: _name(v) if isinstance(v, Path) else
                         (f"line{v}" if isinstance(v, int) else ""))
def test_bash_block(page, line, block, tmp_path):
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{_name(page)} line {line}:\n{block}\nstdout:\n{done.stdout[-2000:]}\n" \
                                 f"stderr:\n{done.stderr[-2000:]}"
    assert "warning" not in done.stderr.lower(), done.stderr


@pytest.mark.parametrize("page", [p for p in PAGES if blocks("python", p)], ids=_name)
def test_python_blocks_in_order(page, tmp_path):
    script = "\n\n".join(f"# {_name(page)} line {line}\n{code}" for line, code in blocks("python", page))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-3000:]}"


def test_the_teachers_generation_config_is_quoted_exactly():
    from d3llm.assets import default_model_path

    shown = [json.loads(code) for page in PAGES for _, code in blocks("json", page)]
    actual = json.loads((default_model_path() / "generation_config.json").read_text())
    assert actual in shown
