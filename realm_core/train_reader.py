"""Fine-tune a BERT backbone with REALM's reader head on SQuAD v1.1 (``realmqa train-reader``).

Loss: negative marginal log-likelihood over every occurrence of the answer in the reader beam
(REALM §3.4, HF ``RealmReader.forward`` loss branch): correct spans are found as HF
``compute_correct_candidates`` does, by matching the answer's wordpiece ids inside the block. Each
question reads its gold paragraph and ``negatives`` other paragraphs of the same article, so the
reader learns to prefer spans in the right block. Whole articles are held out (``heldout_questions``
questions at least) and written as SQuAD-format JSON for evaluation; no held-out paragraph is trained on.

Warm start and resumption:

- ``--init-reader DIR_OR_FILE`` starts from an existing reader (``reader.safetensors`` + ``reader_config.json``
  beside it, fp16 or fp32) instead of a backbone with a fresh span head; ``--seen-questions N`` says that the
  first N questions of the seeded order were already trained on (by the run that made that reader), so they
  are read last.
- Every ``--save-every`` steps, when a run stops early and at its last step, ``OUT/checkpoint/train_state.pt``
  is published atomically with the weights (fp32), AdamW and scheduler state, the step, the elapsed seconds and
  torch's RNG state.
  ``--resume`` continues from it: the data order is a function of the step (a seeded shuffle), so a resumed
  run reads the same batches, and with ``--max-minutes 0`` it reaches the same weights as an uninterrupted run.
  ``--max-steps`` ends a run after that many steps of this invocation (a slice; the schedule still spans all
  steps).

Publishing: ``--publish HOME/models/NAME/VERSION`` (a model version directory) publishes the trained reader
as the next version of NAME in that home (:func:`publish_reader`) once training and evaluation end; that
version's other files are kept, its int8 calibration is dropped (it belongs to the old weights: run ``realmqa
calibrate-int8`` on the new version), and model.json's card records the run.

Device and precision: ``--device auto`` trains on the GPU that torch sees (``cuda``), else on the CPU; ``--amp
auto`` runs the forward pass under bf16 autocast on CUDA and in fp32 on the CPU. The weights, AdamW's moments,
the loss (a log-sum-exp over all span logits, in fp32) and every checkpoint stay fp32 either way, and a
checkpoint resumes on either device (the device and autocast are not part of the data order).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from realm_core.atomic import publish_file, write_atomic
from realm_core.bert import BertConfig, init_weights
from realm_core.checkpoint import load_mapped, load_safetensors, save_safetensors_atomic
from realm_core.evaluation import exact_match, f1_score
from realm_core.model_spec import ModelDirError, ModelSpec, publish_model_version
from realm_core.qa import BeamBlock, answer, read_beams
from realm_core.reader import ReaderConfig, SpanReader, marginal_log_likelihood, reader_config_from_dict
from realm_core.reader_data import Example, build_examples, collate, load_squad, split_heldout, training_order
from realm_core.tokenizer import Pieces, WordPieceTokenizer

log = logging.getLogger(__name__)


def new_reader(backbone_dir: Path, cfg_overrides: dict[str, Any]) -> SpanReader:
    """A reader whose BERT comes from a HF-format BERT directory and whose span head is fresh."""
    bert = BertConfig.from_dict(json.loads((backbone_dir / "config.json").read_text()))
    reader = SpanReader(ReaderConfig(bert=bert, **cfg_overrides))
    init_weights(reader.qa_outputs)
    load_mapped(
        reader.realm,
        load_safetensors(backbone_dir / "model.safetensors"),
        {"": ""},
        ignore=("pooler.", "embeddings.position_ids"),
    )
    return reader


def reader_files(path: str | Path) -> tuple[Path, Path]:
    """(weights, config) of a saved reader: a directory holding ``reader.safetensors`` and
    ``reader_config.json``, or the weights file itself with the config beside it.

    Raises:
        FileNotFoundError: either file is missing.
    """
    path = Path(path)
    weights = path / "reader.safetensors" if path.is_dir() else path
    config = weights.parent / "reader_config.json"
    for f in (weights, config):
        if not f.is_file():
            raise FileNotFoundError(f"--init-reader: no {f}")
    return weights, config


def load_reader(path: str | Path) -> SpanReader:
    """A saved reader (see :func:`reader_files`), in fp32 whatever the file's dtype."""
    weights, config = reader_files(path)
    reader = SpanReader(reader_config_from_dict(json.loads(config.read_text())))
    load_mapped(reader, {k: v.float() for k, v in load_safetensors(weights).items()}, {"": ""})
    return reader


# Arguments that fix the data order and the schedule: a resumed run must be given the same ones.
ORDER_ARGS = ("seed", "heldout_questions", "max_questions", "seen_questions", "epochs", "batch_size", "negatives",
              "reader_seq_len", "max_question_tokens", "train_window", "lr", "warmup", "max_minutes",
              "max_span_width")


def train_device(name: str) -> torch.device:
    """The device ``--device NAME`` trains on: ``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``.

    Raises:
        SystemExit: ``NAME`` is not a torch device, or names CUDA where torch sees no GPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise SystemExit(f"realmqa train-reader: --device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"realmqa train-reader: --device {name!r}: torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise SystemExit(f"realmqa train-reader: --device {name!r}: only cpu and cuda are supported")
    return dev


def autocast_dtype(amp: str, dev: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp``: ``auto`` is bf16 on CUDA and none (fp32) on the CPU."""
    if amp == "auto":
        return torch.bfloat16 if dev.type == "cuda" else None
    return torch.bfloat16 if amp == "bf16" else None


def batch_loss(reader: SpanReader, tok: WordPieceTokenizer, batch: list[Example], reader_seq_len: int,
               amp: torch.dtype | None) -> torch.Tensor:
    """() the training loss of one batch: REALM's marginal log-likelihood (:func:`marginal_log_likelihood`) over
    each question's rows (questions × blocks, ≤ ``reader_seq_len`` tokens) on the reader's device, the forward
    pass under ``amp`` autocast (None: fp32), the log-sum-exp in fp32.

    Raises:
        ValueError: the questions read different numbers of blocks (:func:`collate`).
    """
    dev = next(reader.parameters()).device
    inputs, correct = collate(tok, batch, reader_seq_len, reader.config.max_span_width)
    inputs = {k: v.to(dev, non_blocking=True) for k, v in inputs.items()}
    with torch.autocast(dev.type, dtype=amp) if amp else contextlib.nullcontext():
        logits, _, _ = reader(**inputs)
    return marginal_log_likelihood(logits.float().view(len(batch), -1), correct.to(dev).view(len(batch), -1))


def save_checkpoint(out: Path, reader: SpanReader, opt: torch.optim.Optimizer, sched: Any, step: int,
                    elapsed_s: float, args: dict[str, Any], questions: int) -> None:
    """Publish ``out/checkpoint/``: fp32 reader files for evaluation, ``progress.json``, and last (the file
    ``--resume`` reads, self-contained) ``train_state.pt``, each atomically."""
    ck = out / "checkpoint"
    save_reader(reader, ck, torch.float32)
    write_atomic(ck / "progress.json", json.dumps({"steps": step, "questions": questions}))
    state = {
        "reader": reader.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "step": step,
        "elapsed_s": elapsed_s,
        "torch_rng": torch.get_rng_state(),
        # dropout masks on a GPU come from its own generator
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "args": {k: args[k] for k in ORDER_ARGS},
    }
    publish_file(ck / "train_state.pt", lambda tmp: torch.save(state, tmp))


def load_checkpoint(out: Path, args: dict[str, Any]) -> dict[str, Any]:
    """The state :func:`save_checkpoint` wrote.

    Raises:
        SystemExit: no state in ``out/checkpoint``, or it was written with other data-order arguments.
    """
    path = out / "checkpoint" / "train_state.pt"
    if not path.is_file():
        raise SystemExit(f"realmqa train-reader: --resume: no {path}")
    st: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)  # any device resumes
    # an argument added after the checkpoint was written: the run behaved as that argument's default does
    saved = {k: st["args"].get(k, parser().get_default(k)) for k in ORDER_ARGS}
    diff = {k: (saved[k], args[k]) for k in ORDER_ARGS if saved[k] != args[k]}
    if diff:
        raise SystemExit(f"realmqa train-reader: --resume: {path} was written with other arguments "
                         f"(saved, given): {diff}")
    return st


@torch.no_grad()
def evaluate_gold(
    reader: SpanReader,
    tok: WordPieceTokenizer,
    articles: list[dict[str, Any]],
    reader_seq_len: int,
    max_question_tokens: int,
    batch_size: int = 32,
) -> dict[str, float]:
    """EM/F1 (%) of the reader on each question with its gold paragraph alone."""
    reader.eval()
    items = [
        (qa["question"], p["context"], [a["text"] for a in qa["answers"]])
        for art in articles
        for p in art["paragraphs"]
        for qa in p["qas"]
    ]
    em = f1 = 0.0
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        qs = [
            Pieces(q.ids[:max_question_tokens], q.offsets[:max_question_tokens])
            for q in tok.pieces([c[0] for c in chunk])
        ]
        beams = [[BeamBlock(c[1], 0.0)] for c in chunk]  # the gold paragraph alone, no relevance score
        batch = read_beams(reader, tok, qs, beams, reader_seq_len)
        for reading, (_, _, refs) in zip(batch.readings, chunk, strict=True):
            pred = answer(reading, 0.0).best.text
            em += exact_match(pred, refs)
            f1 += f1_score(pred, refs)
    n = max(len(items), 1)
    return {"em": 100 * em / n, "f1": 100 * f1 / n, "questions": float(len(items))}


def save_reader(reader: SpanReader, out: Path, dtype: torch.dtype) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype) for k, v in reader.state_dict().items()}
    save_safetensors_atomic(tensors, out / "reader.safetensors")
    write_atomic(out / "reader_config.json", json.dumps(dataclasses.asdict(reader.config), indent=2))


def publishable_base(base: str | Path) -> ModelSpec:
    """The model.json of a model version that can take a trained reader (:func:`publish_reader`).

    Raises:
        ModelDirError: no readable model.json, or not a ``realmqa`` model (a ``realm-hf`` model keeps Hugging
            Face's reader layout); OSError: it cannot be read.
    """
    spec = ModelSpec.read(base)
    if spec.kind != "realmqa":
        raise ModelDirError(f"{Path(base) / 'model.json'}: model kind {spec.kind!r}; only 'realmqa' models take a "
                            "trained reader")
    return spec


def publish_reader(base: Path, out: Path, report: dict[str, Any]) -> Path:
    """Publish ``out``'s reader (``reader.safetensors``, ``reader_config.json``, ``tokenizer.json``) as the next
    version of the model whose version directory is ``base`` (``HOME/models/NAME/VERSION``;
    :func:`realm_core.model_spec.publish_model_version`, which never carries a ``MODEL_CARD.md`` over): the
    base's files but its reader's and its int8 calibration file (it belongs to the old weights); model.json the
    base's with ``precision`` fp32 where it was int8 and the int8 fields reset, and ``card.reader`` describing
    ``report`` (a ``train_report.json``). Returns the version directory.

    Raises:
        ModelDirError: the base's model.json is malformed or not a realmqa model's (:func:`publishable_base`);
            OSError: a file cannot be read or no version number could be taken in 8 tries.
    """
    spec = publishable_base(base)
    tok_dir = Path(spec.reader.tokenizer)
    targets = {
        "reader.safetensors": Path(spec.reader.weights),
        "reader_config.json": Path(spec.reader.config),
        "tokenizer.json": tok_dir / "tokenizer.json",
    }
    leave = {t.parts[0] for t in targets.values()}
    if spec.int8_smoothing is not None:
        leave.add(Path(spec.int8_smoothing.calibration).parts[0])
    heldout = report["heldout"]
    a = report["args"]
    card = (f"realmqa train-reader from {a.get('init_reader') or a.get('backbone')}: {report['steps']} steps, "
            f"{report['questions_seen']} questions seen ({report['train_questions']} in the run; seed {a['seed']}, "
            f"max span width {json.loads((out / 'reader_config.json').read_text())['max_span_width']}); "
            f"held-out gold-paragraph EM {heldout['em']:.2f} / F1 {heldout['f1']:.2f} on "
            f"{int(heldout['questions'])} questions")

    def write(staging: Path, old: ModelSpec) -> ModelSpec:
        for src, dst in targets.items():
            (staging / dst).parent.mkdir(parents=True, exist_ok=True)
            publish_file(staging / dst, functools.partial(shutil.copyfile, out / src))
        card_fields = {k: v for k, v in old.card.items() if k != "int8_calibration"}
        return dataclasses.replace(old, precision="fp32" if old.precision == "int8" else old.precision,
                                   int8_smoothing=None, int8_fp32_layers=None, int8_activations="dynamic",
                                   int8_outlier_channels=0, card={**card_fields, "reader": card})

    return publish_model_version(base, base.parent.parent, base.parent.name, leave, write)


def parser() -> argparse.ArgumentParser:
    """``realmqa train-reader``'s arguments."""
    p = argparse.ArgumentParser(prog="realmqa train-reader", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--squad", required=True, help="SQuAD v1.1 train JSON (.json or .json.gz)")
    p.add_argument("--backbone", help="HF-format BERT dir: config.json, model.safetensors, tokenizer "
                   "(required unless --init-reader; with it, only the tokenizer is read from here)")
    p.add_argument("--init-reader", help="start from this reader: a dir with reader.safetensors + "
                   "reader_config.json (+ tokenizer.json when there is no --backbone), or the weights file")
    p.add_argument("--seen-questions", type=int, default=0,
                   help="the first N questions of the seeded order were already trained on: read them last")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint/train_state.pt")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--heldout-questions", type=int, default=2000)
    p.add_argument("--max-questions", type=int, default=0, help="train on at most this many questions (0: all)")
    p.add_argument("--max-minutes", type=float, default=0,
                   help="stop after this long, counted across resumed runs (0: no limit)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps of this run (0: no limit)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16, help="questions per step")
    p.add_argument("--negatives", type=int, default=1, help="other paragraphs of the article read per question")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.06, help="share of steps")
    p.add_argument("--reader-seq-len", type=int, default=384, help="tokens per reader row")
    p.add_argument("--max-question-tokens", type=int, default=64)
    p.add_argument(
        "--train-window", type=int, default=0, help="cut blocks to this many pieces around the answer (0: whole)"
    )
    p.add_argument("--max-span-width", type=int, default=0,
                   help="widest answer span in wordpieces, trained and saved in reader_config.json (0: the "
                   "--init-reader's, or REALM's 10 for a fresh head); questions whose answer is wider are skipped")
    p.add_argument("--publish", metavar="HOME/models/NAME/VERSION",
                   help="publish the trained reader as the next version of that model (its other files kept, "
                   "its int8 calibration dropped)")
    p.add_argument("--device", default="auto",
                   help="where to train: auto (cuda when torch sees a GPU, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=("auto", "bf16", "none"), default="auto",
                   help="autocast of the forward pass: auto (bf16 on CUDA, none on the CPU), bf16 or none")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--save-every", type=int, default=200, help="steps between checkpoints")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    a = p.parse_args(argv)
    if not a.backbone and not a.init_reader:
        p.error("one of --backbone and --init-reader is required")
    if a.max_span_width < 0:
        p.error("--max-span-width must be at least 1 (0: keep the reader's)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.publish:  # refused before training, not after it
        try:
            publishable_base(a.publish)
        except (ModelDirError, OSError) as e:
            raise SystemExit(f"realmqa train-reader: --publish {a.publish}: {e}") from None
    dev = train_device(a.device)
    amp = autocast_dtype(a.amp, dev)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    state = load_checkpoint(out, vars(a)) if a.resume else None
    if state is None and (out / "checkpoint" / "train_state.pt").is_file():
        raise SystemExit(f"realmqa train-reader: {out}/checkpoint/train_state.pt exists: pass --resume, "
                         "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if a.init_reader:
        reader = load_reader(a.init_reader)
        tok = WordPieceTokenizer.from_dir(Path(a.backbone) if a.backbone else reader_files(a.init_reader)[0].parent)
    else:
        reader = new_reader(Path(a.backbone), {})
        tok = WordPieceTokenizer.from_dir(Path(a.backbone))
    if a.max_span_width:  # the span head has no per-width weights: any width reads the same parameters
        reader.config = dataclasses.replace(reader.config, max_span_width=a.max_span_width)
    cfg = reader.config
    articles = load_squad(a.squad)
    train_arts, held_arts = split_heldout(articles, a.heldout_questions, a.seed)
    write_atomic(out / "heldout.json", json.dumps({"version": "1.1", "data": held_arts}))
    examples = build_examples(
        tok, train_arts, cfg, a.reader_seq_len, a.max_question_tokens, a.negatives, a.seed, a.train_window
    )
    examples = training_order(examples, a.seed, a.seen_questions)
    if a.max_questions:
        examples = examples[: a.max_questions]
    steps = math.ceil(len(examples) * a.epochs / a.batch_size)
    log.info("train %d questions (%d held-out articles), %d steps", len(examples), len(held_arts), steps)
    log.info("device %s, autocast %s", dev, amp or "none (fp32)")
    reader.to(dev)
    opt = torch.optim.AdamW(reader.parameters(), lr=a.lr, weight_decay=0.01)
    warm = max(1, int(steps * a.warmup))
    start = 0
    elapsed0 = 0.0
    if state is not None:
        reader.load_state_dict(state["reader"])
        start, elapsed0 = int(state["step"]), float(state["elapsed_s"])
    t0 = time.time() - elapsed0  # the time budget counts the earlier runs too

    def lr_factor(s: int) -> float:
        # Linear warm-up, then linear decay to 0 over the steps or the time budget, whichever ends first.
        progress = s / steps
        if a.max_minutes:
            progress = max(progress, (time.time() - t0) / (a.max_minutes * 60))
        return min((s + 1) / warm, max(0.0, 1.0 - progress) / max(1e-9, 1.0 - a.warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    if state is not None:
        # After the scheduler is made: making it sets the optimizer's learning rate for step 0.
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])  # dropout masks continue as they would have
        if dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        log.info("resumed from %s at step %d (%.0f s trained)", out / "checkpoint", start, elapsed0)
    done = start

    def questions_seen(step: int) -> int:
        return min(step * a.batch_size, math.ceil(len(examples) * a.epochs))

    def checkpoint() -> None:
        save_checkpoint(out, reader, opt, sched, done, time.time() - t0, vars(a),
                        questions_seen(done))

    reader.train()
    for step in range(start, steps):
        i = (step * a.batch_size) % len(examples)
        batch = examples[i : i + a.batch_size]
        loss = batch_loss(reader, tok, batch, a.reader_seq_len, amp)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reader.parameters(), 1.0)
        opt.step()
        sched.step()
        done = step + 1
        if step % 20 == 0:
            log.info(
                "step %d/%d loss %.3f lr %.2e %.1f s",
                step,
                steps,
                loss.item(),
                sched.get_last_lr()[0],
                time.time() - t0,
            )
        spent = a.max_minutes and time.time() - t0 > a.max_minutes * 60 or lr_factor(done) == 0.0
        sliced = a.max_steps and done - start >= a.max_steps
        if done % a.save_every == 0 or spent or sliced or done == steps:  # the last step too: the final fp32
            # weights and optimizer state stay in checkpoint/ for --init-reader or --resume
            checkpoint()
        if spent:
            log.info("stopping at step %d: the time budget or the learning-rate schedule is spent", done)
            break
        if sliced:
            log.info("stopping at step %d: --max-steps %d done in this run", done, a.max_steps)
            break
    train_s = time.time() - t0
    save_reader(reader, out, torch.float16)
    tok.save(out)
    # Evaluate what is shipped: the fp16 weights, loaded back in fp32.
    shipped = load_reader(out).to(dev)
    scores = evaluate_gold(shipped, tok, held_arts, a.reader_seq_len, a.max_question_tokens)
    report = {
        "steps": done,
        "questions_seen": questions_seen(done),
        "train_questions": len(examples),
        "train_seconds": round(train_s),
        "heldout": scores,
        "args": vars(a),
    }
    log.info("held-out gold-paragraph EM %.2f F1 %.2f on %d questions", scores["em"], scores["f1"], scores["questions"])
    if a.publish:
        report["published"] = str(publish_reader(Path(a.publish), out, report))
        log.info("published %s (fp32; run realmqa calibrate-int8 on it for int8)", report["published"])
    write_atomic(out / "train_report.json", json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
