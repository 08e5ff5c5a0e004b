"""Gold-paragraph EM/F1 of model versions' readers (fp32) on the held-out questions, by the answer's length in
wordpieces (bench/README "Answer span width"): a reader scores spans of at most ``max_span_width`` wordpieces
(``reader_config.json``; REALM's 10), so longer answers can only be matched in part. Not a timing::

    python bench/answer_length.py --model minilm-squad/7 minilm-squad/8

Each question is read with its gold paragraph alone and no relevance score
(``realm_core.train_reader.evaluate_gold``, the trainer's own report, on subsets of the held-out file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# a partition of the questions by answer length: the "all" row is their question-weighted mean, not a second read
BUCKETS = (("<= 10", 0, 10), ("11-20", 11, 20), ("> 20", 21, 10**9))


def main() -> None:
    import torch

    from realm_core.model_spec import ModelSpec
    from realm_core.tokenizer import WordPieceTokenizer
    from realm_core.train_reader import evaluate_gold, load_reader
    from service.settings import BUNDLED_HOME

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", type=Path, default=BUNDLED_HOME, help="home of the models (default: the bundled one)")
    ap.add_argument("--model", nargs="+", required=True, help="name/version of each model to evaluate")
    ap.add_argument("--heldout", type=Path, default=BUNDLED_HOME / "heldout" / "squad-train-heldout.json")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    held = json.loads(a.heldout.read_text())["data"]
    print(f"{'model':>16} {'width':>5} {'answer':>6} {'questions':>9} {'EM':>6} {'F1':>6}")
    for ref in a.model:
        d = a.home / "models" / ref
        reader, tok = load_reader(d), WordPieceTokenizer.from_dir(d)
        spec = ModelSpec.read(d)
        pieces = {qa["id"]: len(tok.pieces([qa["answers"][0]["text"]])[0].ids)
                  for art in held for p in art["paragraphs"] for qa in p["qas"]}
        rows = {}
        for name, lo, hi in BUCKETS:
            arts = [{**art, "paragraphs": [{**p, "qas": [q for q in p["qas"] if lo <= pieces[q["id"]] <= hi]}
                                           for p in art["paragraphs"]]} for art in held]
            rows[name] = evaluate_gold(reader, tok, arts, spec.reader_seq_len, spec.max_question_tokens)
        n = sum(r["questions"] for r in rows.values())
        rows = {"all": {"questions": n, **{k: sum(r[k] * r["questions"] for r in rows.values()) / n
                                            for k in ("em", "f1")}}, **rows}
        for name, r in rows.items():
            print(f"{ref:>16} {reader.config.max_span_width:>5} {name:>6} {int(r['questions']):>9} "
                  f"{r['em']:>6.2f} {r['f1']:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
