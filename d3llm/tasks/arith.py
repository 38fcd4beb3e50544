"""``arith``: the built-in chain-of-thought task, GSM8K in miniature.

Each problem is a short word problem needing two to four arithmetic steps (``+ - * /`` on whole numbers below
1000), where later steps use numbers computed earlier. The reference answer is a worked solution, one step per
line, each step written as ``a op b = c`` inside a sentence, and a final line ``#### N``::

    Q: Mia buys 4 pens for 3 dollars each and 2 books for 15 dollars each. She pays with 50 dollars.
       How much change does she get?
    A: The books cost 2 * 15 = 30 dollars.
       Pens cost 3 * 4 = 12 dollars.
       In total she spends 30 + 12 = 42 dollars.
       She gets 50 - 42 = 8 dollars back.
       #### 8

Solutions deliberately keep the freedom real chain-of-thought answers have, because that freedom is what makes
parallel decoding hard (the accuracy-parallelism trade-off d3LLM addresses): every step has several phrasings of
different lengths, commutative operands come in either order, independent steps come in either order, and numbers
have one to three digits, so the token at a given position depends on choices made at earlier positions.

Determinism and splits: problem ``i`` of a split is a pure function of ``(seed, split, i)``. A problem's identity
is its *skeleton* (family, variant and numbers; names, items and phrasings are cosmetic); a hash of the skeleton
assigns it to ``test`` (1 in :data:`TEST_BUCKETS` buckets) or ``train``, and each split only keeps its own
skeletons, so no test problem's arithmetic ever appears in the training split, whatever the seeds.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

from d3llm.errors import ConfigError

SPLITS = ("train", "test")
TEST_BUCKETS = 16          # 1/16 of all skeletons are test-only
MAX_VALUE = 999            # every number in a problem, given or computed, lies in [1, MAX_VALUE]
MAX_ANSWER_TOKENS = 62     # answers longer than this (in task tokens) are redrawn, so that answer + end of turn <= 63
MAX_QUESTION_TOKENS = 48

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
# vocabulary of the problems
# ------------------------------------------------------------------------------------------------------------

NAMES = {
    "she": ["Mia", "Ann", "Lily", "Emma", "Zoe", "Ava", "Nina", "Rosa", "Ella", "Sara", "Kate", "Lucy"],
    "he": ["Tom", "Ben", "Leo", "Sam", "Max", "Jack", "Omar", "Ravi", "Luis", "Noah", "Finn", "Hugo"],
}
SHOP_ITEMS = ["pens", "books", "cups", "hats", "toys", "plates", "lamps", "shirts", "bowls", "kites"]
COLLECT_ITEMS = ["stickers", "marbles", "cards", "stamps", "shells", "coins", "beads", "apples", "cookies",
                 "pencils"]
BAKED = ["cookies", "muffins", "rolls", "cupcakes", "pies", "buns"]
CONTAINERS = ["trays", "batches", "boxes"]
PACKS = ["boxes", "bags", "packs"]
FRIENDS_WORDS = ["friends", "cousins", "classmates"]


def _pron(gender: str, cap: bool = False) -> str:
    p = gender
    return p.capitalize() if cap else p


def _have(gender: str) -> str:  # verb agreement is always third person singular here
    return "has"


def _vocabulary_words() -> list[str]:
    """Every word the generator can emit (used to build the tokenizer's closed vocabulary)."""
    text = re.sub(r"\{\w+\}", " ", " ".join(_ALL_TEMPLATE_TEXT)) + " " + " ".join(
        ["he", "she"] + NAMES["she"] + NAMES["he"] + SHOP_ITEMS + COLLECT_ITEMS + BAKED + CONTAINERS + PACKS + FRIENDS_WORDS
    )
    words = set(re.findall(r"[A-Za-z]+", text))
    return sorted(words | {w.capitalize() for w in words} | {w.lower() for w in words})


# ------------------------------------------------------------------------------------------------------------
# rendering helpers
# ------------------------------------------------------------------------------------------------------------

def _calc(rng: random.Random, op: str, a: int, b: int) -> tuple[str, int]:
    """``"a op b = c"`` with the operands of ``+``/``*`` in random order; returns (text, c)."""
    c = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    if op in "+*" and rng.random() < 0.5:
        a, b = b, a
    return f"{a} {op} {b} = {c}", c


def _pick(rng: random.Random, options: list[str], **values) -> str:
    return rng.choice(options).format(**values)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# Phrasings. {e} is an "a op b = c" expression; others are names/items. All are later capitalised at line start.
SHOP_COST = ["The {item} cost {e} dollars.", "{Item} cost {e} dollars.", "{e} dollars for the {item}.",
             "{P} spends {e} dollars on {item}.", "{n} {item} cost {e} dollars."]
SHOP_TOTAL = ["In total {p} spends {e} dollars.", "Total: {e} dollars.", "{P} spends {e} dollars in total.",
              "{e} dollars in total.", "All together that is {e} dollars."]
SHOP_CHANGE = ["{P} gets {e} dollars back.", "The change is {e} dollars.", "{e} dollars of change.",
               "Change: {e} dollars."]

RUN_ADD = ["{Name} has {e} {item}.", "Now {p} has {e}.", "After that {p} has {e} {item}.", "{e}.",
           "{P} has {e} {item} now."]
RUN_SUB = ["{P} has {e} {item} left.", "{e} {item} are left.", "Then {e}.", "Now {p} has {e}.",
           "{Name} keeps {e} {item}."]
RUN_PACKS = ["The {packs} hold {e} {item}.", "{e} {item} in the {packs}.", "{k} {packs} have {e} {item}.",
             "{P} gets {e} new {item}."]
RUN_SHARE = ["Each {friend} gets {e} {item}.", "{e} each.", "Each one gets {e}.", "{e} {item} for each {friend}."]

CMP_ADD_REL = ["{X} has {e} {item}.", "{X}: {e}.", "{X} has {e}.", "So {X} has {e} {item}."]
CMP_SUM = ["Together they have {e} {item}.", "{e} {item} in total.", "Together: {e}.", "{X} and {Y} have {e}."]

BAKE_MAKE = ["{P} bakes {e} {item}.", "{e} {item} are baked.", "That is {e} {item}.", "{e} {item}."]
BAKE_LEFT = ["{e} {item} are left.", "{P} has {e} {item} left.", "Left: {e}.", "Then {e} {item} remain."]
BAKE_BOX = ["{P} fills {e} {packs}.", "{e} {packs}.", "That is {e} {packs}.", "{e} {packs} are filled."]
BAKE_MONEY = ["{P} earns {e} dollars.", "{e} dollars.", "That makes {e} dollars.", "The {packs} bring {e} dollars."]

# Question sentences.
Q_SHOP_ONE = ["{Name} buys {n} {item} for {c} dollars each.", "{Name} buys {n} {item} at {c} dollars each."]
Q_SHOP_TWO = ["{Name} buys {n} {item} for {c} dollars each and {m} {item2} for {d} dollars each."]
Q_SHOP_PAY = ["{P} pays with {m} dollars.", "{P} pays with a {m} dollar bill."]
Q_SHOP_ASK_TOTAL = ["How much does {p} spend in total?", "How many dollars does {p} spend?"]
Q_SHOP_ASK_CHANGE = ["How much change does {p} get?", "How many dollars does {p} get back?"]

Q_RUN_START = ["{Name} has {a} {item}.", "{Name} collects {a} {item}."]
Q_RUN_ADD = ["{P} finds {b} more.", "{P} buys {b} more {item}.", "{P} gets {b} more {item}."]
Q_RUN_SUB = ["{P} gives {b} to {Friend}.", "{P} loses {b} {item}.", "Then {p} gives away {b} {item}."]
Q_RUN_PACKS = ["{P} buys {k} {packs} of {b} {item}.", "{P} gets {k} {packs} with {b} {item} each."]
Q_RUN_SHARE = ["{P} shares them equally among {k} {friend}."]
Q_RUN_ASK = ["How many {item} does {p} have now?", "How many {item} does {name} have at the end?"]
Q_RUN_ASK_SHARE = ["How many {item} does each {friend1} get?"]

Q_CMP_START = ["{A} has {a} {item}."]
Q_CMP_REL = {
    "+": ["{X} has {d} more {item} than {Y}.", "{X} has {d} more than {Y}."],
    "-": ["{X} has {d} fewer {item} than {Y}.", "{X} has {d} less than {Y}."],
    "*": ["{X} has {d} times as many {item} as {Y}.", "{X} has {d} times as many as {Y}."],
}
Q_CMP_ASK_ONE = ["How many {item} does {X} have?"]
Q_CMP_ASK_TWO = ["How many {item} do {X} and {Y} have together?"]
Q_CMP_ASK_ALL = ["How many {item} do the three have in total?", "How many {item} do they have altogether?"]

Q_BAKE_MAKE = ["{Name} bakes {a} {cont} of {b} {item}.", "A baker makes {a} {cont} with {b} {item} each."]
Q_BAKE_SELL = ["{P} sells {c} {item}.", "{c} {item} are sold.", "Then {p} sells {c} of them."]
Q_BAKE_BOX = ["{P} puts the rest in {packs} of {d}."]
Q_BAKE_PRICE = ["Each of the {packs} sells for {m} dollars."]
Q_BAKE_ASK_LEFT = ["How many {item} are left?"]
Q_BAKE_ASK_BOX = ["How many {packs} does {p} fill?"]
Q_BAKE_ASK_MONEY = ["How many dollars does {p} earn?", "How much money does {p} make?"]

_ALL_TEMPLATE_TEXT = [t for group in (
    SHOP_COST, SHOP_TOTAL, SHOP_CHANGE, RUN_ADD, RUN_SUB, RUN_PACKS, RUN_SHARE, CMP_ADD_REL, CMP_SUM, BAKE_MAKE,
    BAKE_LEFT, BAKE_BOX, BAKE_MONEY, Q_SHOP_ONE, Q_SHOP_TWO, Q_SHOP_PAY, Q_SHOP_ASK_TOTAL, Q_SHOP_ASK_CHANGE,
    Q_RUN_START, Q_RUN_ADD, Q_RUN_SUB, Q_RUN_PACKS, Q_RUN_SHARE, Q_RUN_ASK, Q_RUN_ASK_SHARE, Q_CMP_START,
    *Q_CMP_REL.values(), Q_CMP_ASK_ONE, Q_CMP_ASK_TWO, Q_CMP_ASK_ALL, Q_BAKE_MAKE, Q_BAKE_SELL, Q_BAKE_BOX,
    Q_BAKE_PRICE, Q_BAKE_ASK_LEFT, Q_BAKE_ASK_BOX, Q_BAKE_ASK_MONEY,
) for t in group] + ["dollars", "friend", "cousin", "classmate", "each", "the", "a"]


class _Reject(Exception):
    """The drawn numbers break a constraint (non-integer, out of range): draw again."""


def _check(*values: int) -> None:
    for v in values:
        if not 1 <= v <= MAX_VALUE:
            raise _Reject


def _num(rng: random.Random, digits_weights=(3, 4, 2)) -> int:
    """A number with 1, 2 or 3 digits (weights per digit count), so that numbers vary in length."""
    d = rng.choices((1, 2, 3), weights=digits_weights)[0]
    lo = 2 if d == 1 else 10 ** (d - 1)
    return rng.randint(lo, 10 ** d - 1)


# ------------------------------------------------------------------------------------------------------------
# families: each returns (skeleton, question, lines, target, steps) or raises _Reject
# ------------------------------------------------------------------------------------------------------------

def _shopping(rng: random.Random, cos: dict, n_steps: int):
    """Buying one or two kinds of items; total cost and/or change. 2 steps: one item + change; 3: two items +
    total; 4: two items + total + change. The two item costs are independent (free order)."""
    n, c = rng.randint(2, 9), _num(rng, (4, 5, 1))
    two = n_steps >= 3
    m_, d = (rng.randint(2, 9), _num(rng, (4, 5, 1))) if two else (0, 0)
    cost1, cost2 = n * c, m_ * d
    total = cost1 + cost2
    pay = 0
    if n_steps in (2, 4):
        pay = rng.choice([10, 20, 50]) * rng.randint(1, 20)
        if pay <= total:
            raise _Reject
    _check(n, c, cost1, total, *(x for x in (m_, d, cost2) if two), *([pay, pay - total] if pay else []))
    skeleton = ("shop", n_steps, n, c, m_, d, pay)
    item, item2 = rng.sample(SHOP_ITEMS, 2)
    q = [_pick(rng, Q_SHOP_TWO if two else Q_SHOP_ONE, n=n, c=c, m=m_, d=d, item=item, item2=item2, **cos)]
    if pay:
        q.append(_pick(rng, Q_SHOP_PAY, m=pay, **cos))
    q.append(_pick(rng, Q_SHOP_ASK_CHANGE if pay else Q_SHOP_ASK_TOTAL, **cos))
    costs = [(n, c, item)] + ([(m_, d, item2)] if two else [])
    rng.shuffle(costs)  # independent steps in either order
    lines = []
    for k, price, it in costs:
        e, _ = _calc(rng, "*", k, price)
        lines.append(_pick(rng, SHOP_COST, e=e, item=it, Item=it.capitalize(), n=k, **cos))
    if two:
        e, _ = _calc(rng, "+", cost1, cost2)
        lines.append(_pick(rng, SHOP_TOTAL, e=e, **cos))
    if pay:
        e, _ = _calc(rng, "-", pay, total)
        lines.append(_pick(rng, SHOP_CHANGE, e=e, **cos))
    return skeleton, q, lines, (pay - total if pay else total)


def _running(rng: random.Random, cos: dict, n_steps: int):
    """One person's count changes event by event (sequential steps); buying packs adds a multiplication step;
    sharing equally at the end adds a division."""
    item = rng.choice(COLLECT_ITEMS)
    friend = rng.choice(FRIENDS_WORDS)
    a = _num(rng, (2, 5, 2))
    kinds = []
    share = rng.random() < 0.35
    budget = n_steps - 1 if share else n_steps   # every kind is one step, except packs (two)
    while budget > 0:
        kind = rng.choice(["add", "sub", "packs"] if budget >= 2 else ["add", "sub"])
        kinds.append(kind)
        budget -= 2 if kind == "packs" else 1
    q = [_pick(rng, Q_RUN_START, a=a, item=item, **cos)]
    lines: list[str] = []
    value, skeleton = a, ["run", a]
    friend_names = [x for x in NAMES["she"] + NAMES["he"] if x != cos["Name"]]
    for kind in kinds:
        if kind == "add":
            b = _num(rng, (3, 5, 1))
            q.append(_pick(rng, Q_RUN_ADD, b=b, item=item, **cos))
            e, value = _calc(rng, "+", value, b)
            lines.append(_pick(rng, RUN_ADD, e=e, item=item, **cos))
        elif kind == "sub":
            b = _num(rng, (3, 5, 1))
            if b >= value:
                raise _Reject
            q.append(_pick(rng, Q_RUN_SUB, b=b, item=item, Friend=rng.choice(friend_names), **cos))
            e, value = _calc(rng, "-", value, b)
            lines.append(_pick(rng, RUN_SUB, e=e, item=item, **cos))
        else:
            k, b = rng.randint(2, 9), _num(rng, (4, 5, 0))
            packs = rng.choice(PACKS)
            q.append(_pick(rng, Q_RUN_PACKS, k=k, b=b, packs=packs, item=item, **cos))
            e, got = _calc(rng, "*", k, b)
            _check(got)
            lines.append(_pick(rng, RUN_PACKS, e=e, k=k, packs=packs, item=item, **cos))
            e, value = _calc(rng, "+", value, got)
            lines.append(_pick(rng, RUN_ADD, e=e, item=item, **cos))
            b = (k, b)
        _check(value)
        skeleton += [kind, b]
    if share:
        divisors = [k for k in range(2, 10) if value % k == 0 and value // k >= 2]
        if not divisors:
            raise _Reject
        k = rng.choice(divisors)
        q.append(_pick(rng, Q_RUN_SHARE, k=k, friend=friend, **cos))
        q.append(_pick(rng, Q_RUN_ASK_SHARE, item=item, friend1=friend[:-1], **cos))
        e, value = _calc(rng, "/", value, k)
        lines.append(_pick(rng, RUN_SHARE, e=e, item=item, friend=friend[:-1], **cos))
        skeleton += ["share", k]
    else:
        q.append(_pick(rng, Q_RUN_ASK, item=item, **cos))
    if len(lines) != n_steps:
        raise _Reject
    return tuple(skeleton), q, lines, value


def _compare(rng: random.Random, cos: dict, n_steps: int):
    """Three people compared with +/-/* relations; B from A, C from A (independent of B) or from B.
    2 steps: ask for C; 3 steps: ask for B + C; 4 steps: ask for A + B + C (two additions, free order)."""
    item = rng.choice(COLLECT_ITEMS)
    people = rng.sample(NAMES["she"] + NAMES["he"], 3)
    A, B, C = people
    a = _num(rng, (3, 5, 1))
    values = {A: a}
    q = [_pick(rng, Q_CMP_START, A=A, a=a, item=item)]
    rels = []
    for X, Y in ((B, A), (C, B if n_steps == 2 else rng.choice([A, B]))):  # 2 steps: C needs B
        op = rng.choice("+-*")
        d = rng.randint(2, 9) if op == "*" else _num(rng, (4, 5, 0))
        y = values[Y]
        x = {"+": y + d, "-": y - d, "*": y * d}[op]
        _check(x)
        values[X] = x
        rels.append((X, Y, op, d))
        q.append(_pick(rng, Q_CMP_REL[op], X=X, Y=Y, d=d, item=item))
    lines = []
    order = list(rels)
    if order[1][1] == A and rng.random() < 0.5:  # C does not depend on B: free order
        order.reverse()
    for X, Y, op, d in order:
        e, _ = _calc(rng, op, values[Y], d)
        lines.append(_pick(rng, CMP_ADD_REL, X=X, e=e, item=item))
    if n_steps == 2:
        q.append(_pick(rng, Q_CMP_ASK_ONE, X=C, item=item))
        target = values[C]
    elif n_steps == 3:
        q.append(_pick(rng, Q_CMP_ASK_TWO, X=B, Y=C, item=item))
        e, target = _calc(rng, "+", values[B], values[C])
        lines.append(_pick(rng, CMP_SUM, X=B, Y=C, e=e, item=item))
    else:
        q.append(_pick(rng, Q_CMP_ASK_ALL, item=item))
        first = rng.sample(people, 2)
        e, partial = _calc(rng, "+", values[first[0]], values[first[1]])
        lines.append(_pick(rng, CMP_SUM, X=first[0], Y=first[1], e=e, item=item))
        rest = next(p for p in people if p not in first)
        e, target = _calc(rng, "+", partial, values[rest])
        lines.append(_pick(rng, CMP_SUM[:3], e=e, item=item))
        _check(partial)
    _check(target)
    skeleton = ("cmp", n_steps, a, *[(op, d, Y == A) for _, Y, op, d in rels])
    return skeleton, q, lines, target


def _baking(rng: random.Random, cos: dict, n_steps: int):
    """Baking trays, selling some, boxing the rest, selling boxes: strictly sequential steps."""
    item, cont, packs = rng.choice(BAKED), rng.choice(CONTAINERS), rng.choice(PACKS)
    a, b = rng.randint(2, 9), _num(rng, (3, 6, 0))
    made = a * b
    c = rng.randint(1, made - 1) if made > 2 else 1
    left = made - c
    _check(made, c, left)
    q = [_pick(rng, Q_BAKE_MAKE, a=a, b=b, cont=cont, item=item, **cos), _pick(rng, Q_BAKE_SELL, c=c, item=item, **cos)]
    lines = [_pick(rng, BAKE_MAKE, e=_calc(rng, "*", a, b)[0], item=item, **cos),
             _pick(rng, BAKE_LEFT, e=_calc(rng, "-", made, c)[0], item=item, **cos)]
    target, skeleton = left, ["bake", a, b, c]
    if n_steps >= 3:
        divisors = [d for d in range(2, 10) if left % d == 0 and left // d >= 2]
        if not divisors:
            raise _Reject
        d = rng.choice(divisors)
        boxes = left // d
        q.append(_pick(rng, Q_BAKE_BOX, packs=packs, d=d, **cos))
        lines.append(_pick(rng, BAKE_BOX, e=_calc(rng, "/", left, d)[0], packs=packs, **cos))
        target = boxes
        skeleton.append(d)
        if n_steps == 4:
            m = rng.randint(2, 19)
            _check(boxes * m)
            q.append(_pick(rng, Q_BAKE_PRICE, packs=packs, m=m))
            q.append(_pick(rng, Q_BAKE_ASK_MONEY, **cos))
            lines.append(_pick(rng, BAKE_MONEY, e=_calc(rng, "*", boxes, m)[0], packs=packs, **cos))
            target = boxes * m
            skeleton.append(m)
        else:
            q.append(_pick(rng, Q_BAKE_ASK_BOX, packs=packs, **cos))
    else:
        q.append(_pick(rng, Q_BAKE_ASK_LEFT, item=item))
    return tuple(skeleton), q, lines, target


FAMILIES = {"shop": _shopping, "run": _running, "cmp": _compare, "bake": _baking}


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


def make_problem(split: str, index: int, seed: int = 0) -> Problem:
    """Problem number ``index`` of ``split`` for ``seed``: a pure function of the three (random access)."""
    _check_split(split)
    if index < 0:
        raise ConfigError(f"problem index must be >= 0, got {index}")
    rng = random.Random(f"arith:{seed}:{split}:{index}")
    while True:
        family = rng.choice(list(FAMILIES))
        n_steps = rng.choice((2, 3, 4))
        gender = rng.choice(("she", "he"))
        name = rng.choice(NAMES[gender])
        cos = {"Name": name, "name": name, "P": _pron(gender, True), "p": _pron(gender)}
        try:
            skeleton, q, lines, target = FAMILIES[family](rng, cos, n_steps)
        except _Reject:
            continue
        if skeleton_split(skeleton) != split:
            continue
        question = " ".join(q)
        answer = "\n".join(_cap(line) for line in lines) + f"\n#### {target}"
        if count_tokens(answer) > MAX_ANSWER_TOKENS or count_tokens(question) > MAX_QUESTION_TOKENS:
            continue
        return Problem(question=question, answer=answer, target=target, steps=len(lines), family=family,
                       skeleton=skeleton, index=index, split=split)


def make_problems(split: str, n: int, seed: int = 0, start: int = 0) -> list[Problem]:
    """Problems ``start .. start + n - 1`` of ``split``."""
    return [make_problem(split, i, seed) for i in range(start, start + n)]


def task_words() -> list[str]:
    """The closed set of words the generator can emit (the task tokenizer's vocabulary is built from it)."""
    return _vocabulary_words()
