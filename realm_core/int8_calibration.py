"""``realmqa calibrate-int8``: SmoothQuant calibration of a model version's int8 reader, published as a new
model version.

Dynamic int8 quantises each Linear's input with one scale per call (per tensor), so a few input channels with
large values (BERT's outlier channels) leave few of the 256 steps to all the others. SmoothQuant (Xiao et al.
2023, arXiv:2211.10438, §4) divides input channel j by s_j and multiplies the weight's column j by s_j, an exact
identity in real arithmetic that flattens the input's channels before quantisation; s_j comes from the largest
|input| of channel j on calibration data and the weight's column, with a migration strength α (eq. 4).

This command reads ``--questions`` SQuAD training questions, each with its gold paragraph (as serving reads a
block: ``realm_core.qa.read_beams``), from the articles that ``realmqa train-reader`` trains on (the held-out
articles, drawn as it draws them, are left out), records every int8 Linear's input range, then reads them
again with the smoothed int8 reader and measures how far each int8 Linear's output strays from the float
layer's on the same input (:func:`realm_core.precision.int8_layer_errors`); the ``--keep-fp32`` layers that
stray furthest stay float32 (default 0). On the bundled reader the feed-forward outputs lead: their input, GELU's
activation, has one or two channels at ~3× the range of the rest, which ``--outlier-channels`` (default 2)
computes in float32 beside the int8 product of the others; that kept the answers of keeping 4 whole layers
float32 at the speed of none (bench/README.md, "Mixed precision", "Outlier channels"). It publishes
``<model>/<next>``: the base version's files, ``int8_calibration.safetensors`` and model.json with
``int8_smoothing``, ``int8_fp32_layers``, ``int8_outlier_channels`` and ``int8_activations`` (``--activations``:
``static`` by default, each layer's input quantised on its calibrated range so that an answer does not depend on
the batch) (and ``precision`` set with ``--precision``). fp32 readers ignore them::

    realmqa calibrate-int8 --home service/default --model minilm-squad/7 \\
        --squad train-v1.1.json.gz --questions 128 --alpha 0.75 --keep-fp32 0 --outlier-channels 2
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from realm_core import qa
from realm_core.checkpoint import save_safetensors_atomic
from realm_core.model_dir import QAModel
from realm_core.model_spec import Int8SmoothingSpec, ModelSpec, publish_model_version
from realm_core.precision import (
    INT8_ACTIVATIONS,
    INT8_FP32_LAYERS,
    Int8Plan,
    Smoothing,
    calibrate_int8,
    int8_layer_errors,
)
from realm_core.reader import SpanReader
from realm_core.reader_data import split_heldout

CALIBRATION_FILE = "int8_calibration.safetensors"


def calibration_questions(articles: list[dict[str, Any]], n: int, heldout_questions: int, seed: int
                          ) -> list[tuple[str, str]]:
    """``n`` (question, gold paragraph) pairs drawn with ``seed`` from the training articles: those left after
    :func:`realm_core.reader_data.split_heldout` (``heldout_questions``, ``seed``), as ``train-reader`` splits.

    Raises:
        ValueError: the training articles hold fewer than ``n`` questions, or ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"questions must be at least 1, not {n}")
    train, _ = split_heldout(articles, heldout_questions, seed)
    pool = [(str(q["question"]), str(p["context"])) for a in train for p in a["paragraphs"] for q in p["qas"]]
    if len(pool) < n:
        raise ValueError(f"the training articles hold {len(pool)} questions, fewer than the {n} asked for")
    return random.Random(seed).sample(pool, n)


def _reads(model: QAModel, items: list[tuple[str, str]], batch_size: int) -> Callable[[SpanReader], None]:
    """A ``run`` for :mod:`realm_core.precision`: reads ``items`` (question, block text) ``batch_size``
    questions per reader pass, a reader beam of one block each."""
    tok = model.reader_tokenizer

    def run(reader: SpanReader) -> None:
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            qa.read_beams(reader, tok, tok.pieces([q for q, _ in chunk]),
                          [[qa.BeamBlock(text, 0.0)] for _, text in chunk], model.reader_seq_len)

    return run


def calibrate(model: QAModel, items: list[tuple[str, str]], batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Input ranges of the model's reader (:func:`realm_core.precision.calibrate_int8`) on ``items`` (question,
    block text), read ``batch_size`` questions per reader pass with a reader beam of one block each."""
    return calibrate_int8(model.reader, _reads(model, items, batch_size))  # under no_grad


def layers_to_keep(model: QAModel, items: list[tuple[str, str]], smoothing: Smoothing, keep: int,
                   activations: str = "dynamic", outlier_channels: int = 0, batch_size: int = 32,
                   ) -> tuple[tuple[str, ...], dict[str, float]]:
    """The Linear layers the int8 reader keeps float32: :data:`realm_core.precision.INT8_FP32_LAYERS` and the
    ``keep`` int8 layers whose outputs stray furthest from float32 on ``items``
    (:func:`realm_core.precision.int8_layer_errors` with ``smoothing``, ``activations`` and
    ``outlier_channels``), and every layer's error.

    Raises:
        ValueError: ``keep`` < 0 (PrecisionError, a ValueError, for a plan that does not fit the reader).
    """
    if keep < 0:
        raise ValueError(f"keep-fp32 must be at least 0, not {keep}")
    errors = int8_layer_errors(model.reader, _reads(model, items, batch_size),
                               Int8Plan(INT8_FP32_LAYERS, smoothing, activations, outlier_channels))
    return INT8_FP32_LAYERS + tuple(list(errors)[:keep]), errors


def publish(base: Path, models_dir: Path, name: str, amax: dict[str, torch.Tensor], alpha: float,
            fp32_layers: tuple[str, ...], activations: str, precision: str | None, card: str,
            outlier_channels: int = 0) -> Path:
    """``models_dir/name/<next>``: the base's files, the calibration and model.json naming it,
    ``fp32_layers``, ``activations`` and ``outlier_channels`` (and ``precision`` when given). Returns the version
    directory."""
    def write(staging: Path, spec: ModelSpec) -> ModelSpec:
        save_safetensors_atomic(amax, staging / CALIBRATION_FILE)
        return dataclasses.replace(spec, int8_smoothing=Int8SmoothingSpec(CALIBRATION_FILE, alpha),
                                   int8_fp32_layers=fp32_layers, int8_activations=activations,
                                   int8_outlier_channels=outlier_channels,
                                   precision=precision or spec.precision,
                                   card={**spec.card, "int8_calibration": card})

    return publish_model_version(base, models_dir, name, (CALIBRATION_FILE,), write)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``realmqa calibrate-int8`` (the command lives in ``service.cli``, which opens the home)."""
    p.add_argument("--home", required=True)
    p.add_argument("--model", required=True, help="base model name/version (its reader is calibrated)")
    p.add_argument("--squad", required=True, help="SQuAD-format training questions (.json or .json.gz)")
    p.add_argument("--questions", type=int, default=128, help="calibration questions (default 128)")
    p.add_argument("--heldout-questions", type=int, default=2000,
                   help="questions of whole articles left out, as train-reader's flag (default 2000)")
    p.add_argument("--seed", type=int, default=13, help="held-out split and question draw (default 13)")
    p.add_argument("--alpha", type=float, default=0.75, help="SmoothQuant migration strength in [0, 1] "
                   "(default 0.75, chosen on SQuAD train questions: bench/README.md, 'int8')")
    p.add_argument("--keep-fp32", type=int, default=0, help="int8 Linear layers kept float32: those whose "
                   "outputs stray furthest on the calibration questions (default 0: with the outlier channels "
                   "float32, keeping 4 layers bought little, bench/README.md 'Outlier channels'; the span "
                   "head's output is kept besides)")
    p.add_argument("--activations", choices=INT8_ACTIVATIONS, default="static", help="int8_activations of the new "
                   "version: 'static' (each layer's input on its calibrated range: answers independent of the "
                   "batch; the default) or 'dynamic' (per call)")
    p.add_argument("--outlier-channels", type=int, default=2, help="int8_outlier_channels of the new version: in "
                   "each int8 feed-forward output, the input channels of largest smoothed range computed in "
                   "float32 (default 2, chosen on SQuAD train questions: bench/README.md, 'Outlier channels')")
    p.add_argument("--precision", choices=("int8", "fp32"), help="set model.json's precision in the new version")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
