"""Embedders: BERT + pooling (+ projection) → one vector per text.

Two poolings, chosen by ``EmbedderConfig.pooling`` through the ``POOLINGS`` registry:
- ``"realm"``: tanh-pooled ``[CLS]`` → Linear(hidden, proj) → LayerNorm (HF ``RealmEmbedder`` +
  ``RealmScorerProjection``), no normalisation;
- ``"mean"``: mean of the token vectors over the attention mask, then L2 normalisation
  (sentence-transformers ``Pooling(mean)`` + ``Normalize``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from realm_core.bert import BertConfig, BertModel
from realm_core.checkpoint import load_mapped, load_safetensors


@dataclass(frozen=True)
class EmbedderConfig:
    bert: BertConfig
    pooling: str = "mean"  # a key of POOLINGS
    proj_size: int = 128  # REALM retriever_proj_size; only for pooling "realm"
    normalize: bool = True  # L2-normalise the output (sentence-transformers); REALM: False
    max_tokens: int = 256  # texts are cut to this many tokens, specials included (MiniLM: 256)

    @property
    def dim(self) -> int:
        return self.proj_size if self.pooling == "realm" else self.bert.hidden_size


class RealmProjection(nn.Module):
    """Linear(hidden, proj) → LayerNorm(proj, eps=layer_norm_eps) (HF ``RealmScorerProjection``)."""

    def __init__(self, config: EmbedderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.bert.hidden_size, config.proj_size)
        self.LayerNorm = nn.LayerNorm(config.proj_size, eps=config.bert.layer_norm_eps)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(pooled))  # type: ignore[no-any-return]


def _mean_pool(model: Embedder, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    m = attention_mask[..., None].to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _realm_pool(model: Embedder, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    assert model.realm.pooler is not None and model.cls is not None
    return model.cls(model.realm.pooler(hidden))  # type: ignore[no-any-return]


POOLINGS: dict[str, Callable[[Embedder, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": _mean_pool,
    "realm": _realm_pool,
}


class Embedder(nn.Module):
    """Text encoder for questions or blocks. Keys: ``realm.*`` (BERT) and ``cls.*`` (REALM projection)."""

    def __init__(self, config: EmbedderConfig) -> None:
        super().__init__()
        if config.pooling not in POOLINGS:
            raise ValueError(f"pooling {config.pooling!r} is not one of {sorted(POOLINGS)}")
        self.config = config
        realm_pooling = config.pooling == "realm"
        self.realm = BertModel(config.bert, add_pooler=realm_pooling)
        self.cls = RealmProjection(config) if realm_pooling else None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(batch, seq_len) inputs → (batch, dim) embeddings."""
        hidden = self.realm(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        out = POOLINGS[self.config.pooling](self, hidden, attention_mask)
        return F.normalize(out, dim=-1) if self.config.normalize else out


def load_sentence_transformer(path: str | Path) -> Embedder:
    """A sentence-transformers BERT directory (``config.json``, ``model.safetensors``, ``1_Pooling/``,
    ``sentence_bert_config.json``, ``modules.json``) as a mean-pooling :class:`Embedder`.

    Raises:
        FileNotFoundError: a required file is missing.
        ValueError: the pooling is not mean pooling.
        realm_core.checkpoint.CheckpointError: the weights do not fit the config.
    """
    path = Path(path)
    bert = BertConfig.from_dict(json.loads((path / "config.json").read_text()))
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens"):
        raise ValueError(f"{path}: only mean pooling is supported, got {pooling}")
    st = path / "sentence_bert_config.json"
    max_tokens = json.loads(st.read_text()).get("max_seq_length", 512) if st.is_file() else 512
    modules = path / "modules.json"
    normalize = modules.is_file() and any(
        m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
    emb = Embedder(EmbedderConfig(bert=bert, pooling="mean", normalize=normalize, max_tokens=max_tokens))
    load_mapped(emb.realm, load_safetensors(path / "model.safetensors"), {"": ""},
                ignore=("pooler.", "embeddings.position_ids"))
    return emb.eval()
