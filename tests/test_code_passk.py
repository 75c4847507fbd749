"""pass@k against exact enumeration, Δpass and intervals over problems; problem selection; code extraction."""

from fractions import Fraction
from itertools import combinations

import numpy as np
import pytest

from deval.analyses.code import passk, programs
from deval.analyses.code.problems import COUNT, load_problems, parse_ranges, select
from deval.errors import ConfigError


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """P(a uniformly drawn k-subset of n samples, c of them passing, holds a pass), by enumerating the subsets."""
    subsets = list(combinations(range(n), k))
    return Fraction(sum(1 for s in subsets if any(i < c for i in s)), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration_exactly(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert passk.pass_at_k(n, c, k) == float(exact_pass_at_k(n, c, k)), (n, c, k)


def test_pass_at_k_large_n_against_the_product_form():
    # Chen et al.'s numerically stable form, for n where enumeration is out of reach
    for n, c, k in [(200, 3, 100), (200, 0, 10), (1000, 999, 1), (150, 20, 100), (100, 1, 100)]:
        stable = 1.0 if n - c < k else 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))
        assert passk.pass_at_k(n, c, k) == pytest.approx(stable, abs=1e-12)
    assert passk.pass_at_k(10, 3, 1) == 0.3 and passk.pass_at_k(10, 0, 10) == 0.0


def test_pass_at_k_refuses_impossible_counts():
    for n, c, k in [(5, 6, 1), (5, 2, 6), (5, 2, 0), (5, -1, 1)]:
        with pytest.raises(ValueError):
            passk.pass_at_k(n, c, k)


def test_summary_has_delta_pass_and_intervals_that_cover_the_mean():
    counts = [(10, 0), (10, 1), (10, 5), (10, 10), (10, 2)]
    s = passk.summarise_counts(counts, np.random.default_rng(0))
    assert set(s["pass@k"]) == {"1", "10"} and set(s["delta_pass"]) == {"10"}
    p1 = np.mean([c / 10 for _, c in counts])
    p10 = np.mean([0.0 if c == 0 else 1.0 for _, c in counts])
    assert s["pass@k"]["1"]["mean"] == pytest.approx(p1)
    assert s["delta_pass"]["10"]["mean"] == pytest.approx(p10 - p1)
    for stat in (*s["pass@k"].values(), *s["delta_pass"].values()):
        lo, hi = stat["ci"]
        assert lo <= stat["mean"] <= hi and stat["problems"] == 5


def test_k_is_limited_by_the_fewest_samples():
    s = passk.summarise_counts([(12, 3), (9, 1)], np.random.default_rng(0))
    assert set(s["pass@k"]) == {"1"} and s["samples_per_problem"] == 9


def test_problem_ranges_and_errors():
    assert parse_ranges("0-3,2,10") == [0, 1, 2, 3, 10]
    problems = load_problems()
    assert len(problems) == COUNT and problems[163].task_id == "HumanEval/163"
    assert [p.task_id for p in select(problems, "5-9", limit=2)] == ["HumanEval/5", "HumanEval/6"]
    for bad in ("0-200", "a", "5-2", "-1"):
        with pytest.raises(ConfigError, match="--problems"):
            parse_ranges(bad)


def test_chat_replies_become_programs_and_normalise():
    p = load_problems()[0]
    fenced = ("Here you go:\n```python\ndef helper():\n    pass\n```\nand\n```python\n"
              f"def {p.entry_point}(numbers, threshold):\n    # a comment\n    return False\n```\nDone.")
    code = programs.extract_code(p, fenced, raw=False)
    assert code.startswith(f"def {p.entry_point}(") and "Done" not in code
    solution = programs.solution_source(p, code)
    assert solution.startswith(p.prompt) and solution.count(f"def {p.entry_point}(") == 2
    same = programs.solution_source(p, f"def {p.entry_point}(numbers,threshold):\n  return False  # other\n")
    assert programs.normalise(solution) == programs.normalise(same)
    differs = programs.solution_source(p, f"def {p.entry_point}(numbers, threshold):\n    return True\n")
    assert programs.normalise(differs) != programs.normalise(solution)
    body = programs.solution_source(p, "    return False\n")  # a body continues the prompt
    assert body == p.prompt + "    return False\n"
    assert programs.extract_code(p, "    return 1\n", raw=True) == "    return 1\n"
    assert programs.normalise("def f(:\n  # x\n    pass") == "def f(:\n    pass"
