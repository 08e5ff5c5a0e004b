"""Open-setting EM/F1 of a model for several ``relevance_scale`` values, from one pass of the reader.

The reader's span scores do not depend on the scale, so each question's reader beam is read once and
every scale is scored from the same logits (REALM §3.4: answer = argmax span score + scale × relevance).

    python bench/tune_relevance_scale.py --home service/default --model minilm-squad \
        --questions service/default/heldout/squad-train-heldout.json --limit 300
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from index.home import Home
from index.version import open_version
from realm_core import qa
from realm_core.evaluation import exact_match, f1_score
from realm_core.model_dir import load_model_dir
from service.engine import QAEngine
from service.evaluate import load_questions
from service.registry import find_index, model_versions


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--home", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--questions", required=True)
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch", type=int, default=32, help="questions per engine call")
    p.add_argument("--scales", default="0,1,2,5,10,20,50")
    a = p.parse_args()

    home = Path(a.home)
    v = model_versions(home, a.model)[-1]
    model = load_model_dir(Home(home).model_dir(a.model, v), a.model, v)
    found = find_index(home, model.ref)
    assert found is not None
    engine = QAEngine(model, open_version(Home(home).indexes_dir, *found))
    qs = load_questions(a.questions)[: a.limit]
    scales = [float(s) for s in a.scales.split(",")]
    em = dict.fromkeys(scales, 0.0)
    f1 = dict.fromkeys(scales, 0.0)
    for i in range(0, len(qs), a.batch):
        chunk = qs[i : i + a.batch]
        texts = [q.question for q in chunk]
        retrieved = engine.retrieve(texts, a.beam)
        batch = engine.read(engine.question_pieces(texts), [r.blocks for r in retrieved])
        for q, reading in zip(chunk, batch.readings, strict=True):
            for s in scales:
                pred = qa.answer(reading, s).best.text
                em[s] += exact_match(pred, q.answers)
                f1[s] += f1_score(pred, q.answers)
    print(f"{len(qs)} questions, reader beam {a.beam}")
    print(f"{'scale':>8} {'EM':>7} {'F1':>7}")
    for s in scales:
        print(f"{s:8.1f} {100 * em[s] / len(qs):7.2f} {100 * f1[s] / len(qs):7.2f}")


if __name__ == "__main__":
    main()
