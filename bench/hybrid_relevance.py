"""Which relevance score the reader should add on a hybrid index (``model.json`` ``hybrid_relevance``), and at
which ``relevance_scale``: open-setting EM/F1 of each (relevance, scale) from one reader pass per question.

Questions are SQuAD v1.1 train questions that no reader has trained on: positions ``--start`` to
``--start + --n`` of the seed-13 training order (``realmqa train-reader --seed 13 --heldout-questions 2000``
reads that order from the front), so the choice is made off the held-out articles. The span scores do not
depend on the relevance score, so every row of the table comes from the same reader pass (REALM §3.4: answer
= argmax span score + scale × relevance score).

    python bench/hybrid_relevance.py --squad train-v1.1-reconstructed.json.gz --start 60000 --n 400
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.home import Home  # noqa: E402
from index.version import open_version  # noqa: E402
from realm_core import qa  # noqa: E402
from realm_core.evaluation import exact_match, f1_score  # noqa: E402
from realm_core.model_dir import load_model_dir  # noqa: E402
from realm_core.reader_data import build_examples, load_squad, split_heldout, training_order  # noqa: E402
from service.engine import QAEngine  # noqa: E402


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--squad", required=True, help="SQuAD v1.1 train JSON (.json or .json.gz)")
    ap.add_argument("--home", default="service/default")
    ap.add_argument("--model", default="minilm-squad/1", help="name/version")
    ap.add_argument("--index", default="minilm-squad/2", help="name/version of a hybrid index version")
    ap.add_argument("--start", type=int, default=60000, help="first position in the seed-13 training order")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--beam", type=int, default=5, help="reader beam")
    ap.add_argument("--scales", default="0,1,2,5,10,20,50")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    home = Home(Path(a.home))
    name, version = a.model.split("/")
    model = load_model_dir(home.model_dir(name, int(version)), name, int(version))
    iname, iversion = a.index.split("/")
    engine = QAEngine(model, open_version(home.indexes_dir, iname, int(iversion)))
    train, _ = split_heldout(load_squad(a.squad), 2000, 13)  # the articles train-reader trains on
    examples = build_examples(model.reader_tokenizer, train, model.reader.config, model.reader_seq_len,
                              model.max_question_tokens, 0, 13, 160)
    examples = training_order(examples, 13)  # train-reader's order, from its front
    by_id = {q["id"]: q for art in train for p in art["paragraphs"] for q in p["qas"]}
    qs = [by_id[e.id] for e in examples[a.start:a.start + a.n]]

    scales = [float(s) for s in a.scales.split(",")]
    kinds = ("dense", "fused")
    em = {(k, s): 0.0 for k in kinds for s in scales}
    f1 = dict(em)
    t0 = time.perf_counter()
    for i in range(0, len(qs), 16):
        chunk = qs[i:i + 16]
        texts = [q["question"] for q in chunk]
        found = engine.retrieve_blocks(texts, a.beam, {}, pieces=True)
        if any(b.fused is None for blocks in found for b in blocks):
            raise SystemExit(f"{a.index} is not a hybrid index version (no fused scores)")
        beams = [[qa.BeamBlock(b.block.text, 0.0, b.block.pieces) for b in blocks] for blocks in found]
        batch = qa.read_beams(model.reader, model.reader_tokenizer, engine.question_pieces(texts), beams,
                              model.reader_seq_len, model.reader_truncation, engine.max_pass_tokens)
        for q, blocks, reading in zip(chunk, found, batch.readings, strict=True):
            answers = [x["text"] for x in q["answers"]]
            for kind in kinds:
                rel = [b.score if kind == "dense" else float(b.fused or 0.0) for b in blocks]
                r = dataclasses.replace(reading, blocks=[dataclasses.replace(bb, relevance=x)
                                                         for bb, x in zip(reading.blocks, rel)])
                for s in scales:
                    pred = qa.answer(r, s).best.text
                    em[kind, s] += exact_match(pred, answers)
                    f1[kind, s] += f1_score(pred, answers)
    print(f"{len(qs)} train questions no reader trained on (order positions {a.start}..{a.start + len(qs) - 1}), "
          f"model {a.model}, index {a.index}, reader beam {a.beam}, {time.perf_counter() - t0:.0f} s")
    print(f"{'relevance':>9} {'scale':>6} {'EM':>7} {'F1':>7}")
    for kind in kinds:
        for s in scales:
            print(f"{kind:>9} {s:6.1f} {100 * em[kind, s] / len(qs):7.2f} {100 * f1[kind, s] / len(qs):7.2f}")


if __name__ == "__main__":
    main()
