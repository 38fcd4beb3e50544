"""``arith``: the built-in chain-of-thought task, GSM8K in miniature.

Each problem is a short story with a running count: a starting amount, then one to four events that add or take
away some of it (each later step uses the number the previous step computed), sometimes interleaved with
irrelevant sentences, and a question about the final amount. The reference answer is a worked solution, one
``a op b = c`` step per line, and a final line ``#### N``::

    Q: Mia has 58 cards. Then Mia sells 44 cards to her friend Joe. Then Mia wins 16 cards from her friend Joe.
       Then Mia walks for a bit with her friend Joe. Then Mia walks for a bit with her friend Joe.
       How many cards does Mia have now?
    A: Now 58 - 44 = 14.
       Then 14 + 16 = 30.
       #### 30

Every number, given or computed, has two digits (10-99). Why the layout is this regular: a model of under a
million parameters has to be trained from scratch on 2 CPU cores in minutes. Copying an operand from a position
that depends on the content of the question (which a free-form GSM8K answer needs at every step) is what such
models learn slowest; here every step sentence of the question and every solution line have the same number of
tokens (11), and the question always has four event slots (unused ones hold an irrelevant sentence), so each
operand sits at a fixed distance from the line that uses it and the model spends its capacity on the arithmetic
and the chain. The task still has what makes parallel decoding hard: the result of every line is needed by the
next one, so the lines cannot be decoded independently (a model that decodes many tokens per forward has to
guess results before the numbers they depend on are written), and each line opens with one of several words.

Determinism and splits: problem ``i`` of a split is a pure function of ``(seed, split, i)``. A problem's identity
is its *skeleton* (start value and the list of (operation, operand)); names, items, friends and phrasings are
cosmetic. A hash of the skeleton assigns it to ``test`` (1 in :data:`TEST_BUCKETS` buckets) or ``train``, and each
split only keeps its own skeletons, so no test problem's arithmetic ever appears in the training split, whatever
the seeds.

Conversations (:func:`make_conversation`): one to three earlier questions with their worked answers, then the
question to answer; every problem of a conversation comes from the same split. The answer always follows its own
question directly, so the fixed operand distances hold in the last turn whatever came before.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

from d3llm.errors import ConfigError

SPLITS = ("train", "test")
TEST_BUCKETS = 16          # 1/16 of all skeletons are test-only
MIN_VALUE, MAX_VALUE = 10, 99  # every number in a problem, given or computed, has two digits
SLOTS = 4                  # event sentences per question (steps, then irrelevant sentences)
STEP_CHOICES = (2, 3, 4)   # steps of a problem, uniform, except ONE_STEP_SHARE of the problems that have one step
ONE_STEP_SHARE = 0.15      # (drawn apart, so the two-to-four-step problem of every other index is unchanged)
LINE_TOKENS = 11           # one solution line with its newline
FINAL_TOKENS = 3           # the closing "#### N" (N has two digits)
MAX_ANSWER_TOKENS = LINE_TOKENS * max(STEP_CHOICES) + FINAL_TOKENS  # 47
MAX_QUESTION_TOKENS = 58
MAX_TURNS = 4              # questions in one conversation (three earlier turns, then the question)
HISTORY_POOL = 10**9       # earlier turns of a conversation are problems of this index range of the split

# Pieces the task tokenizer splits text into: a newline, the answer marker, a word or a single digit or a
# punctuation mark, each with its leading space. Shared with d3llm.tasks.tokenizer.
TOKEN_PATTERN = r"\n|####| ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]"
_TOKEN_RE = re.compile(TOKEN_PATTERN)


def count_tokens(text: str) -> int:
    """Number of task-tokenizer tokens of ``text`` (without special tokens)."""
    return len(_TOKEN_RE.findall(text))


@dataclass(frozen=True)
class Problem:
    """One problem: ``question``, worked ``answer`` ending in ``#### N``, the integer ``target`` N, the number of
    arithmetic ``steps``, and ``family``/``skeleton`` (the identity that decides the split)."""

    question: str
    answer: str
    target: int
    steps: int
    family: str
    skeleton: tuple = field(repr=False)
    index: int = -1
    split: str = ""

    def to_json(self) -> dict:
        """The JSONL row the user-file loader reads back (``question``, ``answer`` and metadata)."""
        return {"question": self.question, "answer": self.answer, "target": self.target, "steps": self.steps,
                "family": self.family, "split": self.split, "index": self.index}


# ------------------------------------------------------------------------------------------------------------
# vocabulary of the problems (every name, item and verb is one token, so all sentences of a kind have one length)
# ------------------------------------------------------------------------------------------------------------

NAMES = {"her": ["Mia", "Ann", "Ava", "Zoe", "Eva", "Kate", "Lucy", "Emma"],
         "his": ["Tom", "Ben", "Leo", "Sam", "Max", "Jack", "Noah", "Hugo"]}
FRIENDS = ["Joe", "Kim", "Ray", "Ivy", "Dan", "Amy"]
ITEMS = ["apples", "coins", "cards", "shells", "pens", "stamps", "beads", "marbles", "stickers", "cookies"]
GAIN = ["gets", "buys", "wins", "takes"]       # "+": ... {b} {item} from {pos} friend {Friend}.
LOSE = ["gives", "sells", "lends", "sends"]    # "-": ... {b} {item} to {pos} friend {Friend}.
IDLE = ["talks", "walks", "plays", "reads"]    # irrelevant: ... for a bit with {pos} friend {Friend}.
OPENERS = ["So", "Then", "Now", "Next", "Thus"]  # first word of a solution line

Q_START = "{Name} has {a} {item}."
Q_GAIN = "Then {Name} {verb} {b} {item} from {pos} friend {Friend}."
Q_LOSE = "Then {Name} {verb} {b} {item} to {pos} friend {Friend}."
Q_IDLE = "Then {Name} {verb} for a bit with {pos} friend {Friend}."
Q_ASK = "How many {item} does {Name} have now?"
LINE = "{opener} {v} {op} {b} = {c}."


def _vocabulary_words() -> list[str]:
    """Every word the generator can emit (used to build the tokenizer's closed vocabulary)."""
    templates = " ".join([Q_START, Q_GAIN, Q_LOSE, Q_IDLE, Q_ASK, LINE])
    text = re.sub(r"\{\w+\}", " ", templates) + " " + " ".join(
        list(NAMES) + NAMES["her"] + NAMES["his"] + FRIENDS + ITEMS + GAIN + LOSE + IDLE + OPENERS)
    words = set(re.findall(r"[A-Za-z]+", text))
    return sorted(words | {w.capitalize() for w in words} | {w.lower() for w in words})


def _draw(rng: random.Random, split: str, one_step: bool = False) -> tuple[tuple, list[str], list[str], int]:
    """One problem of ``split``: (skeleton, question sentences, solution lines, target); ``one_step``: a single
    event."""
    while True:
        n_steps = 1 if one_step else rng.choice(STEP_CHOICES)
        value = rng.randint(MIN_VALUE, MAX_VALUE)
        steps = []
        for _ in range(n_steps):
            ops = [op for op, ok in (("+", value + MIN_VALUE <= MAX_VALUE), ("-", value - MIN_VALUE >= MIN_VALUE)) if ok]
            op = rng.choice(ops)
            high = MAX_VALUE - value if op == "+" else value - MIN_VALUE
            b = rng.randint(MIN_VALUE, high)
            result = value + b if op == "+" else value - b
            steps.append((op, b, value, result))
            value = result
        skeleton = (steps[0][2], *[(op, b) for op, b, _, _ in steps])
        if skeleton_split(skeleton) == split:
            break
    pos = rng.choice(list(NAMES))
    cos = {"Name": rng.choice(NAMES[pos]), "pos": pos, "Friend": rng.choice(FRIENDS), "item": rng.choice(ITEMS)}
    question = [Q_START.format(a=steps[0][2], **cos)]
    lines = []
    for op, b, v, c in steps:
        template, verbs = (Q_GAIN, GAIN) if op == "+" else (Q_LOSE, LOSE)
        question.append(template.format(verb=rng.choice(verbs), b=b, **cos))
        lines.append(LINE.format(opener=rng.choice(OPENERS), v=v, op=op, b=b, c=c))
    question += [Q_IDLE.format(verb=rng.choice(IDLE), **cos) for _ in range(SLOTS - n_steps)]
    question.append(Q_ASK.format(**cos))
    return skeleton, question, lines, value


# ------------------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------------------

def skeleton_split(skeleton: tuple) -> str:
    """``"test"`` for 1 in :data:`TEST_BUCKETS` skeletons (by a stable hash), else ``"train"``."""
    digest = hashlib.sha256(repr(skeleton).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_BUCKETS == 0 else "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} of the built-in task 'arith'; expected one of {list(SPLITS)}")


def is_one_step(split: str, index: int, seed: int = 0) -> bool:
    """Whether problem ``index`` of ``split`` has one step (a draw of its own: cheap, without the problem)."""
    return random.Random(f"arith-steps:{seed}:{split}:{index}").random() < ONE_STEP_SHARE


def make_problem(split: str, index: int, seed: int = 0) -> Problem:
    """Problem number ``index`` of ``split`` for ``seed``: a pure function of the three (random access)."""
    _check_split(split)
    if index < 0:
        raise ConfigError(f"problem index must be >= 0, got {index}")
    rng = random.Random(f"arith:{seed}:{split}:{index}")
    skeleton, question, lines, target = _draw(rng, split, is_one_step(split, index, seed))
    return Problem(question=" ".join(question), answer="\n".join(lines) + f"\n#### {target}", target=target,
                   steps=len(lines), family="count", skeleton=skeleton, index=index, split=split)


def max_answer_tokens(steps: int = max(STEP_CHOICES)) -> int:
    """The most task-tokenizer tokens an answer of a problem with at most ``steps`` steps takes (``steps`` lines,
    then ``#### N``)."""
    return LINE_TOKENS * steps + FINAL_TOKENS


def make_problems(split: str, n: int, seed: int = 0, start: int = 0) -> list[Problem]:
    """Problems ``start .. start + n - 1`` of ``split``."""
    return [make_problem(split, i, seed) for i in range(start, start + n)]


def task_words() -> list[str]:
    """The closed set of words the generator can emit (the task tokenizer's vocabulary is built from it)."""
    return _vocabulary_words()


def make_conversation(split: str, index: int, turns: int, seed: int = 0) -> list[Problem]:
    """A conversation of ``turns`` questions ending in problem ``index`` of ``split``: ``turns - 1`` earlier problems
    of the same split (answered, in the chat history) and then that problem. The earlier ones are drawn from the
    split's own stream at indices derived from ``(seed, split, index, turn)``, so a test conversation holds only
    test problems and a training one only training problems; ``turns == 1`` is the problem alone."""
    if turns < 1:
        raise ConfigError(f"a conversation needs at least one turn, got turns={turns}")
    final = make_problem(split, index, seed)
    earlier = []
    for turn in range(turns - 1):
        digest = hashlib.sha256(f"arith-history:{seed}:{split}:{index}:{turn}".encode()).digest()
        earlier.append(make_problem(split, int.from_bytes(digest[:8], "big") % HISTORY_POOL, seed))
    return earlier + [final]
