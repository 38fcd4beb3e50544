"""The built-in arith task: determinism, disjoint splits, well-formed worked solutions, real answer freedom,
answer extraction/scoring and the JSONL loader."""

import collections
import json
import re

import pytest

from d3llm import ConfigError
from d3llm.tasks import arith
from d3llm.tasks.data import ArithDataset, load_dataset, load_jsonl, write_jsonl
from d3llm.tasks.scoring import extract_answer, is_correct, normalize_number, reference_answer, score

STEP_RE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


@pytest.fixture(scope="module")
def train_problems():
    return arith.make_problems("train", 1500, seed=0)


@pytest.fixture(scope="module")
def test_problems():
    return arith.make_problems("test", 400, seed=0)


def test_deterministic_by_seed_and_index():
    a = arith.make_problem("train", 17, seed=3)
    assert a == arith.make_problem("train", 17, seed=3)
    assert a.question != arith.make_problem("train", 17, seed=4).question
    assert a.question != arith.make_problem("train", 18, seed=3).question
    assert arith.make_problems("test", 3, seed=1, start=5)[0] == arith.make_problem("test", 5, seed=1)


def test_splits_are_disjoint(train_problems, test_problems):
    train_sk = {p.skeleton for p in train_problems}
    test_sk = {p.skeleton for p in test_problems}
    assert not train_sk & test_sk
    assert not {p.question for p in train_problems} & {p.question for p in test_problems}
    assert all(arith.skeleton_split(p.skeleton) == "train" for p in train_problems)
    assert all(arith.skeleton_split(p.skeleton) == "test" for p in test_problems)
    # other seeds draw other problems but can never cross the split
    other = arith.make_problems("train", 300, seed=9)
    assert not {p.skeleton for p in other} & test_sk


def test_worked_solutions_are_correct_chains(train_problems):
    for p in train_problems:
        lines = p.answer.split("\n")
        assert lines[-1] == f"#### {p.target}"
        steps = [STEP_RE.search(line) for line in lines[:-1]]
        assert all(steps), p.answer
        assert 1 <= len(steps) == p.steps <= 4
        computed = set()
        for m in steps:
            a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            assert {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] == c and (op != "/" or a % b == 0)
            assert 1 <= c <= arith.MAX_VALUE
            computed.add(c)
        last = steps[-1]
        # the last step uses a number computed earlier (the first one: the starting amount), and gives the answer
        used = computed | {p.skeleton[0]} if p.steps == 1 else computed
        assert int(last.group(1)) in used or int(last.group(3)) in used, p.answer
        assert int(last.group(4)) == p.target
        assert arith.count_tokens(p.answer) <= arith.MAX_ANSWER_TOKENS
        assert arith.count_tokens(p.question) <= arith.MAX_QUESTION_TOKENS


def test_fixed_layout_and_real_freedom(train_problems):
    """Every solution line and every event sentence has 11 tokens and the question always has four event slots (so
    operands sit at fixed distances), while openers, names and items vary and each step uses the previous result."""
    first_words = collections.Counter(line.split()[0] for p in train_problems for line in p.answer.split("\n")[:-1])
    assert set(first_words) == set(arith.OPENERS) and min(first_words.values()) > 300
    counts = collections.Counter(p.steps for p in train_problems)
    assert set(counts) == {1, 2, 3, 4} and 0.1 < counts[1] / len(train_problems) < 0.2  # ONE_STEP_SHARE 15%
    assert {op for p in train_problems for op, _ in p.skeleton[1:]} == {"+", "-"}
    for p in train_problems:
        sentences = re.split(r"(?<=[.?]) ", p.question)
        assert len(sentences) == 2 + arith.SLOTS
        assert [arith.count_tokens(" " + s) for s in sentences[1:-1]] == [11] * arith.SLOTS, p.question
        assert arith.count_tokens(p.question) == arith.MAX_QUESTION_TOKENS
        lines = p.answer.split("\n")
        assert all(arith.count_tokens(line + "\n") == 11 for line in lines[:-1]), p.answer
        steps = [STEP_RE.search(line) for line in lines[:-1]]
        assert int(steps[0].group(1)) == p.skeleton[0]
        for prev, cur in zip(steps, steps[1:]):
            assert cur.group(1) == prev.group(4)  # a later step starts from the number computed before
        assert all(len(n) == 2 for m in steps for n in m.group(1, 3, 4))
    assert len({p.skeleton for p in arith.make_problems("train", 3000, seed=0)}) > 2900  # a large problem space


def test_bad_split_and_index():
    with pytest.raises(ConfigError, match=r"unknown split 'dev'.*\['train', 'test'\]"):
        arith.make_problem("dev", 0)
    with pytest.raises(ConfigError, match="index must be >= 0"):
        arith.make_problem("train", -1)


def test_arith_dataset_test_split_is_unique():
    ds = ArithDataset("test", size=300)
    assert len(ds) == 300 and len({ds[i].question for i in range(300)}) == 300
    assert ds[0].gold == str(arith.make_problem("test", 0).target)
    train = ArithDataset("train")
    assert train.iid and train[5].question == arith.make_problem("train", 5).question
    assert load_dataset("arith", default_split="test", size=10)[3] == ds[3]


@pytest.mark.parametrize("text, strict, flexible", [
    ("She has 3 + 4 = 7.\n#### 7", "7", "7"),
    ("#### 1,234.", "1234", "1234"),
    ("the answer is $56 dollars", None, "56"),
    ("#### 12\nthen 99 more", "12", "99"),
    ("nothing here", None, None),
    ("#### -3", "-3", "-3"),
    ("value 42.0 and #### 42.0", "42", "42"),
])
def test_extract_answer(text, strict, flexible):
    assert extract_answer(text, "strict") == strict
    assert extract_answer(text, "flexible") == flexible


def test_scoring():
    golds = ["Total: 3 + 4 = 7.\n#### 7", 12, "#### 5"]
    preds = ["3 + 4 = 7.\n#### 7", "it is 12", "#### 6\n5"]
    sc = score(preds, golds)
    assert (sc.n, sc.strict_correct, sc.flexible_correct) == (3, 1, 3)
    assert sc.strict == pytest.approx(100 / 3) and sc.to_dict()["flexible"] == 100.0
    assert is_correct("#### 1,000", "1000") and not is_correct("#### 100", "1000")
    assert reference_answer("no marker, last number 17") == "17"
    assert normalize_number("$1,234.") == "1234" and normalize_number("abc") is None
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score(["a", "b"], [1])
    with pytest.raises(ValueError, match="unknown extraction mode"):
        extract_answer("#### 1", "loose")


def test_jsonl_round_trip(tmp_path):
    problems = arith.make_problems("test", 5)
    file = write_jsonl(tmp_path / "test.jsonl", problems)
    ds = load_jsonl(file)
    assert len(ds) == 5 and ds[2].question == problems[2].question and ds[2].gold == str(problems[2].target)
    assert ds[0].source.endswith("test.jsonl:1")
    assert len(load_dataset(str(file), size=2)) == 2


@pytest.mark.parametrize("content, message", [
    ('{"question": "q"}\n', r"bad.jsonl:1: field 'answer' is missing"),
    ('{"question": "q", "answer": "#### 1"}\n\n[1, 2]\n', r"bad.jsonl:3: expected a JSON object, got list"),
    ('{"question": "q", "answer": 5}\n', r"bad.jsonl:1: field 'answer' must be a non-empty string, got 5"),
    ('{"question": "q", "answer": "#### 1"}\n{oops\n', r"bad.jsonl:2: not valid JSON"),
    ("\n\n", r"bad.jsonl holds no rows"),
])
def test_jsonl_errors(tmp_path, content, message):
    file = tmp_path / "bad.jsonl"
    file.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_jsonl(file)


def test_dataset_spec_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset file '.*missing.jsonl' does not exist"):
        load_dataset(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match=r"'gsm8k' is neither the built-in task"):
        load_dataset("gsm8k")
    with pytest.raises(ConfigError, match=r"unknown split 'val'"):
        load_dataset("arith:val")
    file = write_jsonl(tmp_path / "ok.jsonl", arith.make_problems("test", 2))
    assert json.loads(file.read_text().splitlines()[0])["split"] == "test"
