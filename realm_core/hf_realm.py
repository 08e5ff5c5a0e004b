"""Hugging Face REALM checkpoints (``RealmForOpenQA`` + ``RealmRetriever``) read into realmqa's modules.

A checkpoint directory is what ``RealmForOpenQA.save_pretrained`` and ``RealmRetriever.save_pretrained``
write (transformers ≤ 4.57, ``transformers/models/deprecated/realm/``):

- ``config.json`` (``RealmConfig``), weights in ``pytorch_model.bin`` or ``model.safetensors``;
- ``vocab.txt`` and/or ``tokenizer.json`` (+ ``tokenizer_config.json``): BERT WordPiece;
- ``block_records.npy``: a numpy object array of the blocks' utf-8 ``bytes``.

Keys of the ``RealmForOpenQA`` state dict and where they go (``EMBEDDER_KEYS``, ``READER_KEYS``):
``embedder.realm.*`` → :class:`~realm_core.embedder.Embedder` ``realm.*``; ``embedder.cls.dense.*`` and
``embedder.cls.LayerNorm.*`` (HF ``RealmScorerProjection``) → ``cls.*``; ``reader.realm.*`` →
:class:`~realm_core.reader.SpanReader` ``realm.*``; ``reader.qa_outputs.*`` (HF ``RealmReaderProjection``)
→ ``qa_outputs.*``. Ignored on purpose: the masked-LM heads ``embedder.cls.predictions.*`` and
``reader.cls.*`` (unused at inference), the reader's pooler ``reader.realm.pooler.*`` (computed by HF
``RealmBertModel`` but never read by ``RealmReader``), and ``*.embeddings.position_ids`` /
``token_type_ids`` buffers older releases saved. ``block_emb`` (``num_block_records × retriever_proj_size``
float32, 6.8 GB at full size) is never loaded whole: :func:`iter_block_emb` yields it in row chunks from a
memory map.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, normalizers
from tokenizers.implementations import BertWordPieceTokenizer

from realm_core.bert import BertConfig
from realm_core.checkpoint import CheckpointError, load_mapped, save_safetensors_atomic
from realm_core.embedder import Embedder, EmbedderConfig
from realm_core.reader import ReaderConfig, SpanReader
from realm_core.tokenizer import WordPieceTokenizer

log = logging.getLogger(__name__)

# HF ``RealmConfig.__init__`` defaults (configuration_realm.py), applied under a config.json that omits a
# key — BertConfig's own defaults differ (hidden_act "gelu").
REALM_CONFIG_DEFAULTS: dict[str, Any] = {
    "vocab_size": 30522, "hidden_size": 768, "retriever_proj_size": 128, "num_hidden_layers": 12,
    "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu_new",
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512,
    "type_vocab_size": 2, "layer_norm_eps": 1e-12, "span_hidden_size": 256, "max_span_width": 10,
    "reader_layer_norm_eps": 1e-3, "reader_beam_size": 5, "reader_seq_len": 320,
    "num_block_records": 13353718, "searcher_beam_size": 5000,
}

BLOCK_EMB_KEY = "block_emb"
EMBEDDER_KEYS = {"embedder.realm.": "realm.", "embedder.cls.dense.": "cls.dense.",
                 "embedder.cls.LayerNorm.": "cls.LayerNorm."}
READER_KEYS = {"reader.realm.": "realm.", "reader.qa_outputs.": "qa_outputs."}
_BUFFERS = ("realm.embeddings.position_ids", "realm.embeddings.token_type_ids")
# Each loader skips the other's keys; between them every key of the checkpoint is checked once.
EMBEDDER_IGNORE = (BLOCK_EMB_KEY, "reader.", "embedder.cls.predictions.", *("embedder." + b for b in _BUFFERS))
READER_IGNORE = (BLOCK_EMB_KEY, "embedder.", "reader.cls.", "reader.realm.pooler.",
                 *("reader." + b for b in _BUFFERS))

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class HfRealmCheckpoint:
    """A checkpoint directory: its path, ``config.json`` (with REALM's defaults filled in), weights file."""

    path: Path
    config: dict[str, Any]
    weights: Path

    @property
    def bert(self) -> BertConfig:
        return BertConfig.from_dict(self.config)


def open_checkpoint(path: str | Path) -> HfRealmCheckpoint:
    """Read ``config.json`` and find the weights of a saved ``RealmForOpenQA``.

    Raises:
        FileNotFoundError: no ``config.json`` or no weights file.
        CheckpointError: the config is not REALM's, or uses what realmqa's encoder lacks (relative positions).
    """
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing: not a saved RealmForOpenQA")
    raw = json.loads(cfg_path.read_text())
    if raw.get("model_type") != "realm":
        raise CheckpointError(f"{cfg_path}: model_type {raw.get('model_type')!r} is not 'realm'")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{cfg_path}: position_embedding_type {raw['position_embedding_type']!r} "
                              "is not supported (only 'absolute')")
    weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{path} has none of {list(WEIGHT_FILES)}")
    return HfRealmCheckpoint(path, {**REALM_CONFIG_DEFAULTS, **raw}, weights)


def _small_tensors(ckpt: HfRealmCheckpoint) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint but ``block_emb``, which stays on disk.

    ``pytorch_model.bin`` is opened with ``torch.load(mmap=True, weights_only=True)``: tensors are views
    of a memory map, so ``block_emb`` costs no memory until read (and weights_only refuses pickled code).
    """
    if ckpt.weights.suffix == ".safetensors":
        with safe_open(str(ckpt.weights), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k != BLOCK_EMB_KEY}
    sd = torch.load(str(ckpt.weights), map_location="cpu", mmap=True, weights_only=True)
    return {k: v for k, v in sd.items() if k != BLOCK_EMB_KEY}


def load_query_embedder(ckpt: HfRealmCheckpoint, tensors: Mapping[str, torch.Tensor] | None = None) -> Embedder:
    """The question embedder, HF ``RealmEmbedder``: BERT → tanh-pooled ``[CLS]`` → ``RealmScorerProjection``
    (Linear(hidden, retriever_proj_size) → LayerNorm(eps=layer_norm_eps)), not normalised.

    Questions are embedded whole up to ``max_position_embeddings`` tokens (HF tokenizes them untruncated).

    Raises:
        CheckpointError: a missing, unexpected or misshapen key, named.
    """
    cfg = EmbedderConfig(bert=ckpt.bert, pooling="realm", proj_size=int(ckpt.config["retriever_proj_size"]),
                         normalize=False, max_tokens=int(ckpt.config["max_position_embeddings"]))
    emb = Embedder(cfg)
    load_mapped(emb, _small_tensors(ckpt) if tensors is None else tensors, EMBEDDER_KEYS, ignore=EMBEDDER_IGNORE)
    return emb.eval()


def load_reader(ckpt: HfRealmCheckpoint, tensors: Mapping[str, torch.Tensor] | None = None) -> SpanReader:
    """The reader, HF ``RealmReader`` (encoder + ``RealmReaderProjection``), adding the raw relevance score
    (``relevance_scale`` 1.0, as ``RealmReader.forward``).

    Raises:
        CheckpointError: a missing, unexpected or misshapen key, named.
    """
    cfg = ReaderConfig(bert=ckpt.bert, span_hidden_size=int(ckpt.config["span_hidden_size"]),
                       max_span_width=int(ckpt.config["max_span_width"]),
                       reader_layer_norm_eps=float(ckpt.config["reader_layer_norm_eps"]), relevance_scale=1.0)
    reader = SpanReader(cfg)
    load_mapped(reader, _small_tensors(ckpt) if tensors is None else tensors, READER_KEYS, ignore=READER_IGNORE)
    return reader.eval()


def load_modules(ckpt: HfRealmCheckpoint) -> tuple[Embedder, SpanReader]:
    """Query embedder and reader from one read of the weights file."""
    tensors = _small_tensors(ckpt)
    return load_query_embedder(ckpt, tensors), load_reader(ckpt, tensors)


def load_tokenizer(path: str | Path) -> WordPieceTokenizer:
    """The checkpoint's tokenizer as HF ``RealmTokenizerFast.__init__`` builds it.

    ``tokenizer.json`` if present, else BERT's pipeline from ``vocab.txt``; then, as
    ``RealmTokenizerFast.__init__`` does, the normaliser's ``lowercase`` / ``strip_accents`` /
    ``handle_chinese_chars`` follow ``tokenizer_config.json`` (``do_lower_case``, ``strip_accents``,
    ``tokenize_chinese_chars``) where they differ.
    """
    path = Path(path)
    tc_path = path / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.is_file() else {}
    lower = bool(tc.get("do_lower_case", True))
    strip, chinese = tc.get("strip_accents"), bool(tc.get("tokenize_chinese_chars", True))
    if (path / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    elif (path / "vocab.txt").is_file():
        tok = BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=lower, strip_accents=strip,
                                     handle_chinese_chars=chinese)._tokenizer
    else:
        raise FileNotFoundError(f"no tokenizer.json or vocab.txt in {path}")
    state = json.loads(tok.normalizer.__getstate__()) if tok.normalizer is not None else {}
    if state.get("type") == "BertNormalizer" and (
        state.get("lowercase", lower) != lower or state.get("strip_accents", strip) != strip
        or state.get("handle_chinese_chars", chinese) != chinese
    ):
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=state.get("clean_text", True), handle_chinese_chars=chinese, strip_accents=strip,
            lowercase=lower)
    return WordPieceTokenizer(tok)


def block_emb_shape(ckpt: HfRealmCheckpoint) -> tuple[int, int]:
    """(num_block_records, retriever_proj_size) of the stored ``block_emb``.

    Raises:
        CheckpointError: the checkpoint has no ``block_emb`` or it is not 2-d.
    """
    if ckpt.weights.suffix == ".safetensors":
        with safe_open(str(ckpt.weights), framework="pt") as f:
            if BLOCK_EMB_KEY not in f.keys():
                raise CheckpointError(f"checkpoint lacks {BLOCK_EMB_KEY!r}")
            shape = tuple(f.get_slice(BLOCK_EMB_KEY).get_shape())
    else:
        sd = torch.load(str(ckpt.weights), map_location="cpu", mmap=True, weights_only=True)
        if BLOCK_EMB_KEY not in sd:
            raise CheckpointError(f"checkpoint lacks {BLOCK_EMB_KEY!r}")
        shape = tuple(sd[BLOCK_EMB_KEY].shape)
    if len(shape) != 2:
        raise CheckpointError(f"checkpoint key {BLOCK_EMB_KEY!r} has shape {shape}, expected 2 dimensions")
    return int(shape[0]), int(shape[1])


def iter_block_emb(ckpt: HfRealmCheckpoint, chunk_rows: int = 65536) -> Iterator[np.ndarray]:
    """``block_emb`` in consecutive row chunks, each a (≤ chunk_rows, retriever_proj_size) float32 array.

    Rows are read from a memory map (``torch.load(mmap=True)`` or safetensors slices), so no more than one
    chunk is copied at a time; a chunk of a float32 ``.bin`` is a view of the map, not a copy.
    """
    if ckpt.weights.suffix == ".safetensors":
        with safe_open(str(ckpt.weights), framework="pt") as f:
            sl = f.get_slice(BLOCK_EMB_KEY)
            n = sl.get_shape()[0]
            for i in range(0, n, chunk_rows):
                yield sl[i:i + chunk_rows].to(torch.float32).numpy()
        return
    sd = torch.load(str(ckpt.weights), map_location="cpu", mmap=True, weights_only=True)
    emb = sd[BLOCK_EMB_KEY]
    for i in range(0, emb.shape[0], chunk_rows):
        yield emb[i:i + chunk_rows].to(torch.float32).numpy()


def load_block_records(path: str | Path) -> np.ndarray:
    """``block_records.npy``: (num_block_records,) object array of utf-8 ``bytes``, one per block.

    The file is a pickled numpy object array, so it is loaded with ``np.load(allow_pickle=True)`` —
    unpickling runs code the file names. Call this only on a checkpoint you trust (your own, or one
    you downloaded from its publisher); HF ``RealmRetriever.from_pretrained`` asks for
    ``TRUST_REMOTE_CODE=True`` for the same reason. The whole array is held in memory while it is used.

    Raises:
        FileNotFoundError: no ``block_records.npy``.
        CheckpointError: the array is not 1-d.
    """
    p = Path(path) / "block_records.npy"
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing: save the RealmRetriever into the checkpoint directory")
    records = np.load(p, allow_pickle=True)
    if records.ndim != 1:
        raise CheckpointError(f"{p} has shape {records.shape}, expected one row per block")
    return records


def write_model_dir(ckpt: HfRealmCheckpoint, out: str | Path, max_question_tokens: int | None = None,
                    block_max_tokens: int = 288) -> dict[str, Any]:
    """Write the checkpoint as a realmqa model version directory (see :mod:`realm_core.model_dir`).

    Files: ``embedder_config.json`` + ``embedder.safetensors`` (query embedder, source ``"realmqa"``),
    ``reader_config.json`` + ``reader.safetensors``, ``tokenizer.json`` (and ``vocab.txt`` when the
    checkpoint has one), ``model.json`` of kind ``"realm-hf"`` with HF's reader-input rules
    (``reader_truncation`` ``"longest_first"``, ``reader_question`` ``"decoded"``) and a card naming the
    checkpoint and HF's beam sizes. The checkpoint has no block embedder (blocks come embedded in
    ``block_emb``), so ``block_embedder`` is null: ``realmqa index build`` with this model would embed new
    blocks with the question embedder.

    Args:
        out: an existing, empty directory.
        max_question_tokens: the longest question accepted; default ``max_position_embeddings − 2``, the
            most the embedder reads whole (HF tokenizes questions untruncated).

    Returns:
        the model.json contents written.
    """
    out = Path(out)
    cfg = ckpt.config
    embedder, reader = load_modules(ckpt)
    tok = load_tokenizer(ckpt.path)
    limit = int(cfg["max_position_embeddings"]) - 2
    if max_question_tokens is None:
        max_question_tokens = limit
    if not 0 < max_question_tokens <= limit:
        raise ValueError(f"max_question_tokens must be in [1, {limit}], got {max_question_tokens}")
    (out / "embedder_config.json").write_text(json.dumps(asdict(embedder.config), indent=2))
    save_safetensors_atomic(embedder.state_dict(), out / "embedder.safetensors")
    (out / "reader_config.json").write_text(json.dumps(asdict(reader.config), indent=2))
    save_safetensors_atomic(reader.state_dict(), out / "reader.safetensors")
    tok.save(out)
    if (ckpt.path / "vocab.txt").is_file():
        (out / "vocab.txt").write_bytes((ckpt.path / "vocab.txt").read_bytes())
    spec = {
        "format": 1,
        "kind": "realm-hf",
        "query_embedder": {"source": "realmqa", "path": "."},
        "block_embedder": None,
        "reader": {"config": "reader_config.json", "weights": "reader.safetensors", "tokenizer": "."},
        "reader_seq_len": int(cfg["reader_seq_len"]),
        "max_question_tokens": max_question_tokens,
        "block_max_tokens": block_max_tokens,
        "reader_truncation": "longest_first",
        "reader_question": "decoded",
        "card": {
            "source": "Hugging Face RealmForOpenQA + RealmRetriever checkpoint, converted by realmqa convert-hf",
            "checkpoint": str(ckpt.path.resolve()),
            "weights": ckpt.weights.name,
            "transformers_version": cfg.get("transformers_version"),
            "hf_reader_beam_size": int(cfg["reader_beam_size"]),
            "hf_searcher_beam_size": int(cfg["searcher_beam_size"]),
            "hf_eval_searcher_beam_size": int(cfg["reader_beam_size"]),
            "num_block_records": int(cfg["num_block_records"]),
            "block_embedder": "none in the checkpoint: blocks are pre-embedded (block_emb)",
        },
    }
    (out / "model.json").write_text(json.dumps(spec, indent=2))
    return spec
