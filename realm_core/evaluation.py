"""SQuAD answer normalisation, EM and F1 (the official SQuAD v1.1 evaluation script's definitions)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse white space (SQuAD v1.1)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, references: Iterable[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference answer, else 0.0."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(r) for r in references))


def _f1(prediction: str, reference: str) -> float:
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, references: Iterable[str]) -> float:
    """Best token F1 of the normalised prediction against any reference answer."""
    return max((_f1(prediction, r) for r in references), default=0.0)


def has_answer(text: str, references: Iterable[str]) -> bool:
    """True if a normalised reference answer occurs in the normalised text (for recall@k)."""
    t = f" {normalize_answer(text)} "
    return any(f" {normalize_answer(r)} " in t for r in references if normalize_answer(r))
