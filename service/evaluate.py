"""``realmqa eval``: EM/F1 of ``/answer`` and recall@k of ``/retrieve`` against a running service.

Questions come from SQuAD-format JSON (``{"data": [{"paragraphs": [{"qas": [...]}]}]}``, gzip or plain)
or JSON Lines of ``{"question": str, "answer": [str, ...]}``. recall@k is the share of questions with
a normalised reference answer inside one of the top-k blocks (:func:`realm_core.evaluation.has_answer`).
"""

from __future__ import annotations

import gzip
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from realm_core.evaluation import exact_match, f1_score, has_answer
from service.client import Client


@dataclass(frozen=True)
class Question:
    question: str
    answers: list[str]


def load_questions(path: str | Path) -> list[Question]:
    """Questions with reference answers from SQuAD JSON or JSON Lines.

    Raises:
        ValueError: the file is neither, naming the line or key at fault.
    """
    path = Path(path)
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    stripped = text.lstrip()
    if stripped.startswith("{") and '"data"' in stripped[:200]:
        data = json.loads(text)["data"]
        return [Question(qa["question"], [a["text"] for a in qa["answers"]])
                for art in data for p in art["paragraphs"] for qa in p["qas"]]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        d = json.loads(line)
        if not isinstance(d.get("question"), str) or not isinstance(d.get("answer"), list):
            raise ValueError(f"{path}:{n}: expected {{'question': str, 'answer': [str, ...]}}")
        out.append(Question(d["question"], [str(a) for a in d["answer"]]))
    return out


def evaluate(url: str, questions: list[Question], ks: tuple[int, ...] = (1, 5, 20), model: str | None = None,
             timeout_s: float = 120.0) -> dict[str, float]:
    """EM, F1 (%), recall@k (%) and the median /answer latency (ms) over ``questions``, one at a time.

    Raises:
        service.client.APIError: the service answered an error (after retrying 429s).
    """
    em = f1 = 0.0
    hits = dict.fromkeys(ks, 0)
    latencies = []
    with Client(url, read_timeout_s=timeout_s) as client:
        for q in questions:
            t0 = time.perf_counter()
            pred = client.answer(q.question, model=model).answer
            latencies.append((time.perf_counter() - t0) * 1e3)
            em += exact_match(pred, q.answers)
            f1 += f1_score(pred, q.answers)
            blocks = client.retrieve(q.question, k=max(ks), model=model).blocks
            first = next((i for i, b in enumerate(blocks) if has_answer(b.text, q.answers)), None)
            for k in ks:
                hits[k] += first is not None and first < k
    n = max(len(questions), 1)
    out = {"questions": float(len(questions)), "em": 100 * em / n, "f1": 100 * f1 / n}
    out.update({f"recall@{k}": 100 * hits[k] / n for k in ks})
    out["answer_ms_p50"] = statistics.median(latencies) if latencies else 0.0
    return out
