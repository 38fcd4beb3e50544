"""Start ``d3llm serve`` in a subprocess on a free loopback port and stop it again (tests, benchmarks).

    with launched_server(["--api-key", "k"]) as server:
        server.url                      # http://127.0.0.1:PORT
        server.base_url                 # .../v1, for openai.OpenAI(base_url=...)

The server binds port 0 and prints its address once it is ready; the process is always stopped on exit (SIGTERM,
then SIGKILL after ``stop_timeout`` seconds), and its stderr is kept for error messages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass

READY = re.compile(r"^d3llm serve: (http://\S+)/v1 ")


@dataclass
class LaunchedServer:
    process: subprocess.Popen
    url: str
    stderr_path: str

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stderr(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()


@contextmanager
def launched_server(args: list[str], *, timeout: float = 120.0, stop_timeout: float = 10.0, env: dict | None = None):
    """Run ``python -m d3llm.cli.main serve --host 127.0.0.1 --port 0 ARGS``; yield a :class:`LaunchedServer`."""
    environment = dict(os.environ if env is None else env)
    environment.setdefault("OMP_NUM_THREADS", "1")
    err = tempfile.NamedTemporaryFile("w+", prefix="d3llm-serve-", suffix=".stderr", delete=False)
    command = [sys.executable, "-m", "d3llm.cli.main", "serve", "--host", "127.0.0.1", "--port", "0", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=environment)
    try:
        found: dict[str, str] = {}

        def read_ready() -> None:
            for line in process.stdout:
                match = READY.match(line)
                if match:
                    found["url"] = match.group(1)
                    break
            # keep draining so the server never blocks on a full pipe
            for _ in process.stdout:
                pass

        reader = threading.Thread(target=read_ready, daemon=True)
        reader.start()
        waited = 0.0
        while "url" not in found:
            if process.poll() is not None:
                raise RuntimeError(f"d3llm serve exited with status {process.returncode}:\n{_read(err.name)}")
            if waited >= timeout:
                raise RuntimeError(f"d3llm serve was not ready after {timeout:.0f} s:\n{_read(err.name)}")
            reader.join(0.1)
            waited += 0.1
        yield LaunchedServer(process, found["url"], err.name)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        err.close()
        os.unlink(err.name)


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()[-4000:]
