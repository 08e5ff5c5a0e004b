"""realm_core.evaluation against the SQuAD v1.1 evaluation script's definitions."""

from __future__ import annotations

import pytest

from realm_core.evaluation import exact_match, f1_score, has_answer, normalize_answer


@pytest.mark.parametrize(("raw", "want"), [
    ("The Eiffel Tower.", "eiffel tower"),
    ("  an  apple a day ", "apple day"),
    ("Theatre and Anna", "theatre and anna"),  # articles only as whole words
    ("U.S.A.!", "usa"),
    ("rock 'n' roll", "rock n roll"),
    ("Tab\tand\nnewline", "tab and newline"),
    ("the", ""),
])
def test_normalize_answer(raw: str, want: str) -> None:
    assert normalize_answer(raw) == want


def test_exact_match() -> None:
    assert exact_match("the Eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower", "tower"]) == 0.0
    assert exact_match("Tower", ["Eiffel Tower", "the tower!"]) == 1.0  # best reference counts
    assert exact_match("anything", []) == 0.0


def test_f1_partial_overlap() -> None:
    # pred → [quick, brown, fox, jumps], ref → [quick, red, fox]: 2 common,
    # precision 2/4, recall 2/3, F1 = 2·(1/2)·(2/3) / (1/2 + 2/3) = 4/7.
    assert f1_score("The quick brown fox jumps", ["a quick red fox"]) == pytest.approx(4 / 7)


def test_f1_counts_repeated_tokens_once_per_match() -> None:
    # [x, x, y] vs [x, y, y]: common = min(2, 1) + min(1, 2) = 2 → P = R = 2/3.
    assert f1_score("x x y", ["x y y"]) == pytest.approx(2 / 3)


def test_f1_best_reference_and_edge_cases() -> None:
    assert f1_score("Leo Tolstoy", ["Tolstoy", "Leo Tolstoy"]) == 1.0
    assert f1_score("Leo Tolstoy", ["Tolstoy"]) == pytest.approx(2 / 3)  # P 1/2, R 1
    assert f1_score("Dostoevsky", ["Tolstoy"]) == 0.0
    assert f1_score("Tolstoy", []) == 0.0
    assert f1_score("the", ["a"]) == 0.0  # both normalise to nothing: v1.1 scores 0


def test_has_answer() -> None:
    text = "Leo Tolstoy wrote War and Peace; he visited the U.S.A. in 1890."
    assert has_answer(text, ["tolstoy"])
    assert has_answer(text, ["nothing", "War and Peace"])
    assert has_answer(text, ["USA"])
    assert not has_answer(text, ["Tol"])  # whole tokens only
    assert not has_answer(text, ["The"])  # a reference that normalises to nothing never matches
    assert not has_answer(text, [])
