"""Open-setting EM/F1 of a model for several ``relevance_scale`` values, from one pass of the reader.

The reader's span scores do not depend on the scale, so each question's reader beam is read once and
every scale is scored from the same logits (REALM §3.4: answer = argmax span score + scale × relevance).

    python bench/tune_relevance_scale.py --home service/default --model minilm-squad \
        --questions service/default/heldout/squad-train-heldout.json --limit 300
"""

from __future__ import annotations

import argparse

import torch

from index.version import open_version
from realm_core.evaluation import exact_match, f1_score
from realm_core.model_dir import load_model_dir
from realm_core.reader import select_spans
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
    p.add_argument("--scales", default="0,1,2,5,10,20,50")
    a = p.parse_args()
    from pathlib import Path

    home = Path(a.home)
    v = model_versions(home, a.model)[-1]
    model = load_model_dir(home / "models" / a.model / str(v), a.model, v)
    found = find_index(home, model.ref)
    assert found is not None
    engine = QAEngine(model, open_version(home / "indexes", *found))
    qs = load_questions(a.questions)[: a.limit]
    scales = [float(s) for s in a.scales.split(",")]
    em = dict.fromkeys(scales, 0.0)
    f1 = dict.fromkeys(scales, 0.0)
    tok = model.reader_tokenizer
    for q in qs:
        blocks = engine._retrieve([q.question], a.beam, {})[0]
        qp = engine.question_pieces([q.question])[0]
        enc = tok.encode_pairs([qp] * len(blocks), tok.pieces([b.block.text for b in blocks]), model.reader_seq_len)
        logits, starts, ends = model.reader(enc.input_ids, enc.attention_mask, enc.token_type_ids, enc.block_mask)
        rel = torch.tensor([b.score for b in blocks])
        for s in scales:
            bi, si = (int(x[0]) for x in select_spans((logits + s * rel[:, None])[None]))
            lo, hi = int(enc.block_offsets[bi, starts[si], 0]), int(enc.block_offsets[bi, ends[si], 1])
            pred = blocks[bi].block.text[lo:hi]
            em[s] += exact_match(pred, q.answers)
            f1[s] += f1_score(pred, q.answers)
    print(f"{len(qs)} questions, reader beam {a.beam}")
    print(f"{'scale':>8} {'EM':>7} {'F1':>7}")
    for s in scales:
        print(f"{s:8.1f} {100 * em[s] / len(qs):7.2f} {100 * f1[s] / len(qs):7.2f}")


if __name__ == "__main__":
    main()
