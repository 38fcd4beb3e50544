"""Built-in tasks and datasets: the ``arith`` chain-of-thought task, its tokenizer, answer scoring, JSONL loading.

    from d3llm.tasks import make_problems, load_dataset, score, build_tokenizer
    test = load_dataset("arith:test")                      # 500 held-out problems
    score(predictions, [ex.gold for ex in test])           # strict (#### N) and flexible (last number) exact match
"""

from d3llm.tasks.arith import Problem, make_problem, make_problems, skeleton_split
from d3llm.tasks.data import ArithDataset, Example, ListDataset, load_dataset, load_jsonl, write_jsonl
from d3llm.tasks.scoring import Score, extract_answer, is_correct, reference_answer, score
from d3llm.tasks.tokenizer import build_tokenizer

__all__ = [
    "Problem", "make_problem", "make_problems", "skeleton_split", "ArithDataset", "Example", "ListDataset",
    "load_dataset", "load_jsonl", "write_jsonl", "Score", "extract_answer", "is_correct", "reference_answer", "score",
    "build_tokenizer",
]
