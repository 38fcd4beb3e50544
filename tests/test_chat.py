"""``d3llm chat`` under a pseudo-terminal: a question, the key of the glyphs, the live canvas, the reply and its
figures (NFE, tokens, TPF, tokens/s), later turns of the conversation, the commands, /quit."""

import os
import pty
import re
import select
import subprocess
import sys
import time

import d3llm
from d3llm.assets import default_model_path
from d3llm.cli.display import legend
from d3llm.tasks import load_dataset

STATS = re.compile(r"^\[(\w+)\] NFE (\d+)  tokens (\d+)  TPF ([\d.]+)  ([\d.]+) tokens/s$", re.M)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


class Terminal:
    """A child process on a pseudo-terminal; ``expect`` reads until a pattern appears (bounded in time)."""

    def __init__(self, argv: list[str]) -> None:
        master, slave = pty.openpty()
        env = dict(os.environ, OMP_NUM_THREADS="1", TERM="xterm", COLUMNS="160", LINES="40")
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.master = master
        self.raw = ""
        self.consumed = 0  # characters of ``text`` that earlier ``expect`` calls matched

    def expect(self, pattern: str, timeout: float = 60.0) -> str:
        """The output (ANSI codes removed) after the previous match, up to and including the first match."""
        deadline = time.monotonic() + timeout
        start = self.consumed
        while True:
            match = re.search(pattern, self.text[start:])
            if match:
                seen = self.text[start : start + match.end()]
                self.consumed = start + match.end()
                return seen
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {pattern!r}; the terminal shows:\n{self.text[-3000:]}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    self.raw += os.read(self.master, 65536).decode("utf-8", errors="replace")
                except OSError:  # the child closed the terminal
                    time.sleep(0.05)

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw)

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            os.close(self.master)


def test_chat_in_a_terminal():
    folder = default_model_path()
    model, tokenizer = d3llm.load_model(folder), d3llm.load_tokenizer(folder)
    question = load_dataset("arith:test")[6].question
    result = d3llm.generate(model, [d3llm.encode_prompt(tokenizer, question)])
    expected = result.texts(tokenizer)[0]
    term = Terminal([sys.executable, "-m", "d3llm.cli.main", "chat"])
    try:
        banner = term.expect(r"you> ")
        assert "multi_block" in banner and "/quit" in banner
        term.send(question)
        reply = term.expect(r"(?s)bot> .*?\nyou> ")
        assert "░" in reply  # the canvas was drawn while masked positions were left
        assert f"bot> {expected}\n" in reply
        # the key of the glyphs, before the first canvas
        assert reply.index(legend(live=True)) < reply.index("bot> ")
        # the reply's figures: the same forwards and tokens as d3llm.generate, TPF = tokens / NFE
        method, nfe, tokens, tpf, speed = STATS.search(reply.split(f"bot> {expected}\n", 1)[1]).groups()
        assert method == "multi_block" and int(nfe) == int(result.nfe[0]) and int(tokens) == len(result.tokens[0])
        assert f"{int(tokens) / int(nfe):.2f}" == tpf and float(speed) > 0
        # a second and a third question of the same conversation (the chat history in the prompt) are answered too
        for later in (load_dataset("arith:test")[7], load_dataset("arith:test")[8]):
            term.send(later.question)
            answer = term.expect(r"(?s)bot> .*?\nyou> ")
            assert f"#### {later.gold}\n" in answer.rsplit("bot> ", 1)[1]
            assert STATS.search(answer.rsplit("bot> ", 1)[1])  # every reply has its figures
        term.send("/method vanilla")
        assert "decoder: vanilla" in term.expect(r"you> ")
        term.send("/reset")
        assert "conversation cleared" in term.expect(r"you> ")
        term.send("/nonsense")
        assert "unknown command /nonsense" in term.expect(r"you> ")
        term.send("/quit")
        assert term.close() == 0
        assert term.text.count(legend(live=True)) == 1  # the key once, however many replies drew the canvas
    finally:
        if term.process.poll() is None:
            term.process.kill()
            term.process.wait()
