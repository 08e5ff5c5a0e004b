"""Questions per second of realmqa's engine and Hugging Face ``RealmForOpenQA`` on the same random weights.

Builds a random ``RealmForOpenQA`` + ``RealmRetriever`` (transformers 4.57.x) over a synthetic corpus, saves it
with ``save_pretrained``, converts it with ``realmqa convert-hf`` into a temporary home, then times, in one
process and with the same torch threads:

- the reference: ``model(**tokenizer([question]))`` per question (eval mode: it retrieves and reads
  ``reader_beam_size`` blocks; it accepts one question per call, so its "batch 32" is 32 calls);
- ours: ``QAEngine.answer(batch, reader_beam_size)`` over the converted model and its exact index, with the
  reader in each of ``--precisions`` (``fp32``; ``int8``: dynamic int8 on the CPU, see realm_core/precision.py).

It also counts questions where both give the same answer (decoded wordpieces), per precision. Presets:
``tiny`` (hidden 128, 2 layers) and ``base`` (REALM's RealmConfig: 768 hidden, 12 layers, 30,522 wordpieces). Needs the
``reference`` extra. Example::

    python bench/realm_vs_hf.py --preset tiny --blocks 100000 --questions 64 --threads 2

The build (minutes at the base preset) can be done apart from the timing, so that only the timing needs an
otherwise idle machine: ``--workdir DIR --build-only``, then ``--workdir DIR --reuse``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRESETS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
                 vocab_size=4000),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 vocab_size=30522),
}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_vocab(size: int, rng: random.Random) -> list[str]:
    """Specials, letters and ``##`` letters, punctuation, then distinct pseudo-words up to ``size`` entries."""
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = SPECIALS + letters + ["##" + c for c in letters] + list(".,?!;:'\"()-")
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    seen = set(vocab)
    while len(vocab) < size:
        w = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 3)))
        if w not in seen:
            seen.add(w)
            vocab.append(w)
    return vocab[:size]


def build(preset: str, blocks: int, out: Path, seed: int) -> tuple[list[str], list[str]]:
    """Save a random RealmForOpenQA + RealmRetriever into ``out``; return its words and vocabulary."""
    from transformers.models.deprecated.realm import RealmConfig, RealmForOpenQA, RealmRetriever, RealmTokenizerFast

    rng = random.Random(seed)
    p = PRESETS[preset]
    vocab = make_vocab(int(p["vocab_size"]), rng)
    words = [w for w in vocab[len(SPECIALS):] if len(w) > 1 and w.isalpha()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = RealmTokenizerFast(vocab_file=str(out / "vocab.txt"))
    # Blocks of up to 288 wordpieces, as REALM's (one pseudo-word = one wordpiece here).
    records = np.array([" ".join(rng.choices(words, k=rng.randint(100, 288))).encode() for _ in range(blocks)],
                       dtype=object)
    torch.manual_seed(seed)
    model = RealmForOpenQA(RealmConfig(**p, num_block_records=blocks), retriever=RealmRetriever(records, tok))
    with torch.no_grad():
        model.block_emb.normal_()
    model.eval().save_pretrained(out, safe_serialization=False)
    model.retriever.save_pretrained(out)
    return words, vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--blocks", type=int, default=100_000)
    ap.add_argument("--questions", type=int, default=64, help="questions timed per system and batch size")
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--threads", type=int, default=2, help="torch (and faiss) threads")
    ap.add_argument("--precisions", default="fp32,int8", help="our reader's precisions to time")
    ap.add_argument("--warmup", type=int, default=32,
                    help="questions (not among the timed ones) our engines answer, in one batch, before timing: the "
                         "first batches of a process pay one-time costs (measured: 34 q/s in the first pass over 64 "
                         "tiny questions, 40-44 after); the reference answers 2 first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="keep the checkpoint and home here (default: a temporary directory)")
    ap.add_argument("--reuse", action="store_true",
                    help="time the checkpoint and home an earlier run left in --workdir (same preset, blocks, seed)")
    ap.add_argument("--build-only", action="store_true",
                    help="build and convert into --workdir, time nothing (then time with --reuse)")
    a = ap.parse_args()

    import faiss

    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    from index.convert_hf import convert_hf_realm
    from service.registry import load_engine

    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="realm-bench-"))
    t0 = time.perf_counter()
    if a.reuse:
        if not a.workdir or not (work / "home").is_dir():
            sys.exit("--reuse needs a --workdir an earlier run filled")
        vocab = make_vocab(int(PRESETS[a.preset]["vocab_size"]), random.Random(a.seed))
        words = [w for w in vocab[len(SPECIALS):] if len(w) > 1 and w.isalpha()]
        print(f"reusing {work}")
    else:
        words, _ = build(a.preset, a.blocks, work / "ckpt", a.seed)
        c = convert_hf_realm(work / "ckpt", work / "home", "bench", progress=False)
        print(f"built and converted {a.preset} over {a.blocks} blocks in {time.perf_counter() - t0:.0f} s "
              f"(model {c.model_ref}, index {c.index.name}/{c.index.version}); work dir {work}")
        if a.build_only:
            return
    precisions = a.precisions.split(",")
    engines = {p: load_engine(work / "home", "bench", build_missing=False, precision=p) for p in precisions}
    engine = engines[precisions[0]]

    import os

    from transformers.models.deprecated.realm import RealmForOpenQA, RealmRetriever, RealmTokenizerFast

    os.environ["TRUST_REMOTE_CODE"] = "True"  # our own just-written block_records.npy
    hf_tok = RealmTokenizerFast.from_pretrained(work / "ckpt")
    hf = RealmForOpenQA.from_pretrained(work / "ckpt", retriever=RealmRetriever.from_pretrained(work / "ckpt")).eval()
    beam = hf.config.reader_beam_size

    rng = random.Random(a.seed + 1)
    questions = [" ".join(rng.choices(words, k=rng.randint(5, 15))) + "?" for _ in range(a.questions)]

    def hf_answer(q: str) -> str:
        with torch.no_grad():
            out = hf(**hf_tok([q], return_tensors="pt"), return_dict=True)
        return hf_tok.decode(out.predicted_answer_ids)

    warm = [" ".join(rng.choices(words, k=rng.randint(5, 15))) + "?" for _ in range(max(a.warmup, 2))]
    for q in warm[:2]:
        hf_answer(q)
    for e in engines.values():
        e.answer(warm, beam)
    print(f"torch threads {torch.get_num_threads()}, {a.questions} questions, reader beam {beam}, "
          f"warm-up {len(warm)} other questions")
    print(f"{'preset':>6} {'blocks':>7} {'batch':>5} {'precision':>9} {'HF q/s':>8} {'ours q/s':>9} {'ours/HF':>8}")
    agree: dict[str, int] = {}
    tok = engine.model.reader_tokenizer

    def decoded(x) -> str:  # type: ignore[no-untyped-def]
        p = tok.pieces([x.best.block.block.text])[0]
        ids = [i for i, (s, e) in zip(p.ids, p.offsets) if x.best.start_char <= s and e <= x.best.end_char]
        return hf_tok.decode(ids)

    for bs in (int(x) for x in a.batch_sizes.split(",")):
        t = time.perf_counter()
        ref = [hf_answer(q) for q in questions]  # one question per call, whatever the batch
        hf_qps = len(questions) / (time.perf_counter() - t)
        for prec, e in engines.items():
            t = time.perf_counter()
            ours = [x for i in range(0, len(questions), bs) for x in e.answer(questions[i:i + bs], beam)]
            our_qps = len(questions) / (time.perf_counter() - t)
            print(f"{a.preset:>6} {a.blocks:>7} {bs:>5} {prec:>9} {hf_qps:>8.2f} {our_qps:>9.2f} "
                  f"{our_qps / hf_qps:>8.2f}", flush=True)
            agree.setdefault(prec, sum(decoded(o) == r for o, r in zip(ours, ref)))
    for prec, n in agree.items():
        print(f"same answer as the reference ({prec}): {n}/{len(questions)}")


if __name__ == "__main__":
    main()
