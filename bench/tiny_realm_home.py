"""A home that serves a random tiny Hugging Face REALM, for ``bench/load.py`` (issue 9's served check).

Writes the tiny ``RealmForOpenQA`` + ``RealmRetriever`` the parity tests use
(``tests/realm_core/hf_reference.py``: hidden 64, 2 layers, reader_seq_len 80, 2,000 block records), converts
it with ``realmqa convert-hf`` into ``HOME`` (model and index ``tiny-realm``), and writes ``HOME/questions.jsonl``
(the tests' 60 questions) for ``load.py --questions``. Needs the ``reference`` extra (transformers). Then::

    realmqa serve --home HOME --model tiny-realm --port 8441 --build-missing-index false &
    python bench/load.py --url http://127.0.0.1:8441 --concurrency 1,32 --duration 20 \\
        --questions HOME/questions.jsonl

    python bench/tiny_realm_home.py HOME
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("home", help="a new or empty directory")
    ap.add_argument("--blocks", type=int, default=2000, help="block records of the checkpoint")
    a = ap.parse_args()

    from index.convert_hf import convert_hf_realm
    from tests.realm_core.hf_reference import build_checkpoint, make_questions

    home = Path(a.home)
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "tiny-realm"
        build_checkpoint(ckpt, num_blocks=a.blocks)
        c = convert_hf_realm(ckpt, home, "tiny-realm", progress=False)
    (home / "questions.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in make_questions()))
    print(f"{home}: model {c.model_ref}, index {c.index.name}/{c.index.version}; questions {home / 'questions.jsonl'}")


if __name__ == "__main__":
    main()
