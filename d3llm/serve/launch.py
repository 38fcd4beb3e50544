"""Start a server on a free loopback port and stop it again (tests, benchmarks).

    with launched_server(["--api-key", "k"]) as server:     # ``d3llm serve`` in a subprocess
        server.url                      # http://127.0.0.1:PORT
        server.base_url                 # .../v1, for openai.OpenAI(base_url=...)

    with served_in_thread(Server(engine, tokenizer, config)) as server:   # the app in this process
        server.url, server.base_url, server.uvicorn

The subprocess binds port 0 and prints its address once it is ready; the process is always stopped on exit
(SIGTERM, then SIGKILL after ``stop_timeout`` seconds), and its stderr is kept for error messages. The in-process
server runs uvicorn in a thread (so a test can reach into its engine) and is stopped on exit as well.
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
class ServerAddress:
    url: str

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@dataclass
class InProcessServer(ServerAddress):
    uvicorn: object


@contextmanager
def served_in_thread(server, *, timeout: float = 60.0):
    """Serve ``server`` (a :class:`d3llm.serve.app.Server`) on a free loopback port from a thread of this process;
    yield an :class:`InProcessServer`. Stopped on exit."""
    import uvicorn

    from d3llm.cli.serve import bind
    from d3llm.serve.app import create_app

    sock = bind("127.0.0.1", 0)
    uv = uvicorn.Server(uvicorn.Config(create_app(server), log_level="critical", lifespan="on", access_log=False))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True, name="d3llm-test-server")
    thread.start()
    try:
        waited = 0.0
        while not uv.started:
            if not thread.is_alive() or waited >= timeout:
                raise RuntimeError("the in-process server did not start")
            thread.join(0.02)
            waited += 0.02
        yield InProcessServer(f"http://127.0.0.1:{sock.getsockname()[1]}", uv)
    finally:
        uv.should_exit = True
        thread.join(30)
        sock.close()


@dataclass
class LaunchedServer(ServerAddress):
    process: subprocess.Popen
    stderr_path: str

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
        yield LaunchedServer(url=found["url"], process=process, stderr_path=err.name)
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
