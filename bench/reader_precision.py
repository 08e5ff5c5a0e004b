"""The bundled reader in each precision this machine runs: questions/s through ``realm_core.qa.read_beams`` and
how many answers equal fp32's on the CPU.

Each held-out question is read with a reader beam of its gold paragraph and the next ``--beam − 1`` paragraphs
of its article (relevance scores 0), ``--batch`` questions per call, as the engine reads a batch. Needs only
the repository's files (no index, no query embedder)::

    python bench/reader_precision.py --questions 64 --batch 32 --threads 2          # CPU: fp32, int8
    python bench/reader_precision.py --questions 256 --batch 32                      # + fp32/fp16/bf16 on CUDA

``--open N`` instead answers N held-out questions (0: all 2,005) in the open setting, in process through
:class:`service.engine.QAEngine` on the bundled home (its served index, reader beam ``--beam``, ``--batch``
questions per engine call; batched answers equal one-at-a-time ones, ``tests/realm_core/test_qa.py``), once
per precision, and prints EM/F1 and how many answers equal fp32's (not a timing)::

    python bench/reader_precision.py --open 0 --batch 32 --threads 2
    python bench/reader_precision.py --open 0 --precisions int8 --answers-dir DIR   # fp32 answers from DIR

``--home``/``--model`` choose the model version (default: the bundled home's newest); int8 uses its model.json's
``int8_smoothing`` calibration when it has one (``realmqa calibrate-int8``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.home import Home  # noqa: E402
from realm_core import qa  # noqa: E402
from realm_core.atomic import write_atomic  # noqa: E402
from realm_core.evaluation import exact_match, f1_score  # noqa: E402
from realm_core.model_dir import load_model_dir  # noqa: E402
from realm_core.reader import SpanReader  # noqa: E402
from realm_core.tokenizer import WordPieceTokenizer  # noqa: E402
from service.evaluate import load_questions  # noqa: E402
from service.registry import load_engine  # noqa: E402

HOME = Path(__file__).resolve().parents[1] / "service" / "default"


def open_setting(home: Path, model: str, n: int, batch: int, beam: int, precisions: list[str],
                 answers_dir: Path | None) -> None:
    """EM/F1 of the served bundled default in each CPU precision over the first ``n`` held-out questions; with
    ``answers_dir``, each precision's answers are written to ``answers_dir/open-<precision>.json`` and compared
    with fp32's from there when this run has none (so that precisions can run in separate commands)."""
    qs = load_questions(HOME / "heldout" / "squad-train-heldout.json")
    qs = qs[:n] if n else qs
    print(f"open setting, {len(qs)} held-out questions, reader beam {beam}, batch {batch}")
    print(f"{'precision':>9} {'index':>14} {'EM':>6} {'F1':>6} {'= fp32':>11} {'s':>6}")
    ref: list[str] | None = None
    saved = answers_dir / "open-fp32.json" if answers_dir else None
    if "fp32" not in precisions and saved and saved.exists():
        ref = json.loads(saved.read_text())["answers"][: len(qs)]
    for prec in precisions:
        name, version = Home(home).resolve_model(model)
        engine = load_engine(home, name, version, build_missing=False, precision=prec)
        t = time.perf_counter()
        got = [a.best.answer for i in range(0, len(qs), batch)
               for a in engine.answer([q.question for q in qs[i:i + batch]], beam)]
        dt = time.perf_counter() - t
        em = 100 * sum(exact_match(g, q.answers) for g, q in zip(got, qs)) / len(qs)
        f1 = 100 * sum(f1_score(g, q.answers) for g, q in zip(got, qs)) / len(qs)
        if answers_dir:
            answers_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(answers_dir / f"open-{prec}.json", json.dumps({"index": engine.index_ref, "em": em,
                                                                        "f1": f1, "answers": got}))
        ref = ref or got
        same = f"{sum(g == r for g, r in zip(got, ref)):>5}/{len(qs)}" if len(ref) == len(got) else "-"
        print(f"{prec:>9} {engine.index_ref:>14} {em:>6.2f} {f1:>6.2f} {same:>11} {dt:>6.0f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--open", type=int, default=-1, help="open-setting EM/F1 on N held-out questions (0: all)")
    ap.add_argument("--precisions", default="fp32,int8", help="--open: the CPU precisions to run, comma-separated")
    ap.add_argument("--answers-dir", type=Path, help="--open: write/compare each precision's answers here")
    ap.add_argument("--home", type=Path, default=HOME, help="home of the model (default: the bundled one)")
    ap.add_argument("--model", default="minilm-squad", help="model name or name/version (default: the newest)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.open >= 0:
        open_setting(a.home, a.model, a.open, a.batch, a.beam, a.precisions.split(","), a.answers_dir)
        return
    name, version = Home(a.home).resolve_model(a.model)
    model_dir = Home(a.home).model_dir(name, version)
    spec = json.loads((model_dir / "model.json").read_text())
    tok = WordPieceTokenizer.from_dir(model_dir)
    items = []
    for art in json.loads((HOME / "heldout" / "squad-train-heldout.json").read_text())["data"]:
        ps = [p["context"] for p in art["paragraphs"]]
        for j, p in enumerate(art["paragraphs"]):
            items += [(q["question"], [ps[(j + k) % len(ps)] for k in range(a.beam)], [x["text"] for x in q["answers"]])
                      for q in p["qas"][:1]]
    items = items[:: max(1, len(items) // a.questions)][: a.questions]
    runs = [("fp32", "cpu"), ("int8", "cpu")]
    if torch.cuda.is_available():
        runs += [("fp32", "cuda"), ("fp16", "cuda"), ("bf16", "cuda")]
    print(f"{name}/{version}: torch {torch.__version__}, threads {torch.get_num_threads()}, cuda "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; {len(items)} questions, "
          f"reader beam {a.beam}, batch {a.batch}")
    print(f"{'precision':>9} {'device':>6} {'q/s':>8} {'rows/s':>8} {'EM':>6} {'= fp32 cpu':>10}")
    ref = None
    for prec, device in runs:
        reader = load_model_dir(model_dir, name, version, precision=prec).reader
        if device == "cuda" and prec == "fp32":
            reader = reader.cuda()

        def read(chunk: list, reader: SpanReader = reader) -> list[qa.SpanChoice]:  # type: ignore[type-arg]
            b = qa.read_beams(reader, tok, tok.pieces([c[0] for c in chunk]),
                              [[qa.BeamBlock(t, 0.0) for t in c[1]] for c in chunk], spec["reader_seq_len"])
            return [qa.answer(r, 0.0).best for r in b.readings]

        with torch.no_grad():
            read(items[: a.batch])  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = [x for i in range(0, len(items), a.batch) for x in read(items[i:i + a.batch])]
            if device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
        em = 100 * sum(exact_match(o.text, c[2]) for o, c in zip(out, items)) / len(items)
        ref = ref or out
        same = sum((x.row, x.start_char, x.end_char) == (y.row, y.start_char, y.end_char) for x, y in zip(out, ref))
        print(f"{prec:>9} {device:>6} {len(items) / dt:>8.2f} {len(items) * a.beam / dt:>8.1f} {em:>6.1f} "
              f"{same:>5}/{len(items)}", flush=True)


if __name__ == "__main__":
    main()
