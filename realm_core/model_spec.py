"""``model.json``: the one owner of a model version's description, and the block embedder's content id.

:class:`ModelSpec` reads, validates and writes ``model.json`` (format 1, see :mod:`realm_core.model_dir`);
nothing else parses that file. It needs no torch, so listing a home stays cheap.

The **block embedder id** (:meth:`ModelSpec.block_embedder_id`) identifies the block embedder by content:
sha256 over the embedder source and, for each file that source's loader reads (:data:`EMBEDDER_FILES`) and the
tokenizer file, its relative name and sha256. Two model versions with the same block embedder files (a new
reader, say) therefore have the same id and serve the same index versions; an index built by another
embedder is refused. The id is computed once per process per set of files (keyed by size and mtime) or read
from ``model.json``'s ``embedder_id`` where a writer cached it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realm_core.atomic import fsync_dir, new_scratch, write_atomic

MODEL_FORMAT = 1

# Files each embedder source's loader reads (realm_core.model_dir.EMBEDDER_SOURCES), besides the tokenizer;
# optional ones that are absent are skipped.
EMBEDDER_FILES: dict[str, tuple[str, ...]] = {
    "sentence-transformers": ("config.json", "1_Pooling/config.json", "sentence_bert_config.json", "modules.json",
                              "model.safetensors"),
    "realmqa": ("embedder_config.json", "embedder.safetensors"),
}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")  # WordPieceTokenizer.from_dir reads the first present
MODEL_CARD = "MODEL_CARD.md"  # a version's hand-written card: it describes that version alone


class ModelDirError(ValueError):
    """A model version directory that cannot be loaded; the message names the file or field."""


def resolve_path(base: Path, spec: str) -> Path:
    """A ``path`` of model.json as a directory or file on disk: relative to the version directory, absolute,
    or ``python-package:<module>/<subdir>`` for files shipped inside an installed package.

    Raises:
        ModelDirError: the named python package is not installed.
    """
    if spec.startswith("python-package:"):
        module, _, sub = spec[len("python-package:"):].partition("/")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise ModelDirError(f"python package {module!r} named in model.json is not installed")
        return Path(list(found.submodule_search_locations)[0]) / sub
    p = Path(spec)
    return p if p.is_absolute() else base / p


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


@dataclass(frozen=True)
class EmbedderSpec:
    source: str  # a key of EMBEDDER_FILES / realm_core.model_dir.EMBEDDER_SOURCES
    path: str = "."  # see resolve_path

    def files(self, base: Path) -> tuple[Path, list[str]]:
        """(the embedder directory, the relative names of the files that define it: weights, config, tokenizer).

        Raises:
            ModelDirError: an unknown source, or no tokenizer file.
        """
        if self.source not in EMBEDDER_FILES:
            raise ModelDirError(f"embedder source {self.source!r} is not one of {sorted(EMBEDDER_FILES)}")
        d = resolve_path(base, self.path)
        names = [f for f in EMBEDDER_FILES[self.source] if (d / f).is_file()]
        tok = next((f for f in TOKENIZER_FILES if (d / f).is_file()), None)
        if tok is None:
            raise ModelDirError(f"{d}: no tokenizer file ({' or '.join(TOKENIZER_FILES)})")
        return d, [*names, tok]


_ID_CACHE: dict[tuple[Any, ...], str] = {}


def embedder_content_id(base: Path, emb: EmbedderSpec) -> str:
    """sha256 over the embedder's source and its files' names and contents (see the module docstring);
    cached per process by the files' paths, sizes and mtimes.

    Raises:
        ModelDirError: see :meth:`EmbedderSpec.files`; OSError: a file cannot be read.
    """
    d, names = emb.files(base)
    stats = tuple((n, (d / n).stat().st_size, (d / n).stat().st_mtime_ns) for n in names)
    key = (emb.source, str(d.resolve()), stats)
    if key not in _ID_CACHE:
        h = hashlib.sha256(f"realmqa-embedder\0{emb.source}\n".encode())
        for n in names:
            h.update(f"{n}\0{sha256_file(d / n)}\n".encode())
        _ID_CACHE[key] = h.hexdigest()
    return _ID_CACHE[key]


def _embedder(d: Any, where: str) -> EmbedderSpec:
    if not isinstance(d, dict) or not isinstance(d.get("source"), str):
        raise ModelDirError(f"model.json {where} must be an object with a string 'source'")
    return EmbedderSpec(d["source"], str(d.get("path", ".")))


@dataclass(frozen=True)
class ReaderSpec:
    config: str  # reader_config.json
    weights: str  # reader.safetensors
    tokenizer: str = "."  # directory of the reader's tokenizer file


@dataclass(frozen=True)
class Int8SmoothingSpec:
    """model.json ``int8_smoothing``: the int8 reader's SmoothQuant calibration (``realmqa calibrate-int8``)."""

    calibration: str  # safetensors file: Linear name → (in_features,) largest |input| per channel
    alpha: float  # migration strength in [0, 1] (realm_core.precision.Smoothing)


def _int8_smoothing(d: Any, where: str) -> Int8SmoothingSpec | None:
    if d is None:
        return None
    if not isinstance(d, dict) or not isinstance(d.get("calibration"), str):
        raise ModelDirError(f"{where} int8_smoothing must be an object with a string 'calibration'")
    alpha = d.get("alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ModelDirError(f"{where} int8_smoothing.alpha must be a number in [0, 1], not {alpha!r}")
    return Int8SmoothingSpec(d["calibration"], float(alpha))


def _count(d: Any, field: str, where: str) -> int:
    if isinstance(d, bool) or not isinstance(d, int) or d < 0:
        raise ModelDirError(f"{where} {field} must be a whole number ≥ 0, not {d!r}")
    return d


def _int8_fp32_layers(d: Any, where: str) -> tuple[str, ...] | None:
    if d is None:
        return None
    if not isinstance(d, list) or not all(isinstance(x, str) and x for x in d):
        raise ModelDirError(f"{where} int8_fp32_layers must be a list of Linear module names, not {d!r}")
    return tuple(d)


@dataclass(frozen=True)
class ModelSpec:
    """The contents of ``model.json`` (see :mod:`realm_core.model_dir` for the meaning of each field)."""

    query_embedder: EmbedderSpec
    reader: ReaderSpec
    reader_seq_len: int  # tokens per reader row
    max_question_tokens: int
    block_max_tokens: int  # REALM: 288
    block_embedder: EmbedderSpec | None = None  # None: the query embedder embeds blocks too
    kind: str = "realmqa"  # "realmqa" | "realm-hf"
    format: int = MODEL_FORMAT
    reader_truncation: str = "only_block"
    reader_question: str = "text"
    precision: str = "fp32"  # the reader's: a key of realm_core.precision.PRECISIONS
    hybrid_relevance: str = "dense"  # the relevance score the reader adds on a hybrid index: dense | fused
    int8_smoothing: Int8SmoothingSpec | None = None  # the int8 reader's calibration; None: plain int8
    # Linear layers the int8 reader keeps float32; None: realm_core.precision.INT8_FP32_LAYERS
    int8_fp32_layers: tuple[str, ...] | None = None
    int8_activations: str = "dynamic"  # a key of realm_core.precision.INT8_ACTIVATIONS
    int8_outlier_channels: int = 0  # per int8 feed-forward output, input channels kept float32 (Int8Plan)
    default_corpus: str | None = None  # corpus the service builds an index from when none exists
    embedder_id: str | None = None  # cached block embedder id (see block_embedder_id)
    card: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this realmqa does not know, kept on write

    @property
    def block(self) -> EmbedderSpec:
        """The embedder that embeds blocks."""
        return self.block_embedder or self.query_embedder

    def block_embedder_id(self, root: Path) -> str:
        """The block embedder's content id (cached ``embedder_id``, else computed from its files).

        Raises:
            ModelDirError, OSError: the embedder's files cannot be found or read.
        """
        return self.embedder_id or embedder_content_id(root, self.block)

    @classmethod
    def from_dict(cls, d: Any, where: str = "model.json") -> ModelSpec:
        """Raises: ModelDirError naming the field at fault."""
        if not isinstance(d, dict):
            raise ModelDirError(f"{where} is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        try:
            r = d["reader"]
            if not isinstance(r, dict):
                raise ModelDirError(f"{where} field 'reader' must be an object")
            block = d.get("block_embedder")
            return cls(
                query_embedder=_embedder(d["query_embedder"], f"{where} query_embedder"),
                reader=ReaderSpec(str(r["config"]), str(r["weights"]), str(r.get("tokenizer", "."))),
                reader_seq_len=int(d["reader_seq_len"]), max_question_tokens=int(d["max_question_tokens"]),
                block_max_tokens=int(d["block_max_tokens"]),
                block_embedder=None if block is None else _embedder(block, f"{where} block_embedder"),
                kind=str(d.get("kind", "realmqa")), format=int(d.get("format", MODEL_FORMAT)),
                reader_truncation=str(d.get("reader_truncation", "only_block")),
                reader_question=str(d.get("reader_question", "text")),
                precision=str(d.get("precision", "fp32")),
                hybrid_relevance=str(d.get("hybrid_relevance", "dense")),
                int8_smoothing=_int8_smoothing(d.get("int8_smoothing"), where),
                int8_fp32_layers=_int8_fp32_layers(d.get("int8_fp32_layers"), where),
                int8_activations=str(d.get("int8_activations", "dynamic")),
                int8_outlier_channels=_count(d.get("int8_outlier_channels", 0), "int8_outlier_channels", where),
                default_corpus=d.get("default_corpus"), embedder_id=d.get("embedder_id"),
                card=dict(d.get("card") or {}), extra={k: v for k, v in d.items() if k not in known})
        except KeyError as e:
            raise ModelDirError(f"{where} lacks field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, ModelDirError):
                raise
            raise ModelDirError(f"{where}: {e}") from None

    @classmethod
    def read(cls, root: str | Path) -> ModelSpec:
        """``root/model.json``.

        Raises:
            ModelDirError: missing, unreadable, not UTF-8 JSON, or a field is missing or malformed.
        """
        path = Path(root) / "model.json"
        try:
            return cls.from_dict(json.loads(path.read_bytes().decode("utf-8")), str(path))
        except FileNotFoundError:
            raise ModelDirError(f"{path} is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelDirError(f"{path} cannot be read: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": self.format, "kind": self.kind,
                             "query_embedder": dataclasses.asdict(self.query_embedder),
                             "block_embedder": None if self.block_embedder is None
                             else dataclasses.asdict(self.block_embedder),
                             "reader": dataclasses.asdict(self.reader),
                             "reader_seq_len": self.reader_seq_len, "max_question_tokens": self.max_question_tokens,
                             "block_max_tokens": self.block_max_tokens, "reader_truncation": self.reader_truncation,
                             "reader_question": self.reader_question, "precision": self.precision}
        if self.hybrid_relevance != "dense":  # written only when set, so older model.json files read back equal
            d["hybrid_relevance"] = self.hybrid_relevance
        if self.int8_smoothing is not None:
            d["int8_smoothing"] = dataclasses.asdict(self.int8_smoothing)
        if self.int8_fp32_layers is not None:
            d["int8_fp32_layers"] = list(self.int8_fp32_layers)
        if self.int8_activations != "dynamic":  # written only when set, as hybrid_relevance
            d["int8_activations"] = self.int8_activations
        if self.int8_outlier_channels:
            d["int8_outlier_channels"] = self.int8_outlier_channels
        for k in ("default_corpus", "embedder_id"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return {**d, "card": self.card, **self.extra}

    def write(self, root: str | Path) -> None:
        """Write ``root/model.json`` atomically."""
        write_atomic(Path(root) / "model.json", json.dumps(self.to_dict(), indent=2) + "\n")

    def with_embedder_id(self, root: Path) -> ModelSpec:
        """This spec with ``embedder_id`` computed from the files (for writers that cache it)."""
        return dataclasses.replace(self, embedder_id=embedder_content_id(root, self.block))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def publish_model_version(base: Path, models_dir: Path, name: str, leave_out: Collection[str],
                          write: Callable[[Path, ModelSpec], ModelSpec]) -> Path:
    """Publish ``models_dir/name/<next>``: the base version's files except ``leave_out`` and its
    :data:`MODEL_CARD` (hard-linked where possible: versions are immutable and every file written here is new,
    replaced into place), the files ``write(staging, base_spec)`` adds and the model.json it returns; staged in a
    hidden directory and renamed into place. The new version's model.json ``card`` says how it was made; the
    base's card file would describe other weights or settings, so it is never carried over. Returns the version
    directory.

    Raises:
        ModelDirError: the base's model.json is malformed; OSError: no version number could be taken in 8 tries.
    """
    spec = ModelSpec.read(base)
    parent = models_dir / name
    scratch = new_scratch(parent, ".staging-")  # locked: a sweep of dead staging leaves it alone
    staging = scratch.path
    try:
        for p in base.iterdir():
            if p.name in ("model.json", MODEL_CARD) or p.name in leave_out:
                continue
            if p.is_dir():
                shutil.copytree(p, staging / p.name, copy_function=_link_or_copy, symlinks=True)
            else:
                _link_or_copy(str(p), str(staging / p.name))
        write(staging, spec).write(staging)
        staging.chmod(0o755)
        taken = max((int(p.name) for p in parent.iterdir() if p.name.isascii() and p.name.isdigit()), default=0)
        for version in range(taken + 1, taken + 9):
            try:
                os.rename(staging, parent / str(version))  # fails if another publisher took the number
            except OSError:
                continue
            fsync_dir(parent)
            return parent / str(version)
        raise OSError(f"could not publish a version of model {name} in {parent}")
    finally:
        scratch.release()  # the directory if it was not renamed into place, and its lock
