"""A BERT encoder in plain PyTorch, read in order: embeddings → self-attention → feed-forward → layer → encoder.

Parameter names follow the Hugging Face BERT checkpoint keys (``embeddings.word_embeddings.weight``,
``encoder.layer.0.attention.self.query.weight``, ...), so loading a checkpoint is a key map with a shape
check per tensor (see :mod:`realm_core.checkpoint`). The same module serves sentence-transformers
MiniLM (``hidden_act="gelu"``) and REALM (``hidden_act="gelu_new"``, HF ``RealmBertModel``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    # "gelu" is the exact erf GELU (BERT, MiniLM); "gelu_new" is the tanh approximation (REALM,
    # HF ``NewGELUActivation``).
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    # Only matters for training (dropout is off in eval mode).
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
        """Build from a Hugging Face ``config.json`` dict, ignoring keys this encoder does not use."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class BertEmbeddings(nn.Module):
    """word + token type + absolute position embeddings, then LayerNorm (HF ``RealmEmbeddings.forward``)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """input_ids, token_type_ids: (batch, seq_len) int64 → (batch, seq_len, hidden)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(positions)[None]
        )
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not a multiple of "
                f"num_attention_heads {config.num_attention_heads}"
            )
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob
        self._qkv: tuple[torch.Tensor, torch.Tensor] | None = None  # stacked projections (_fused_qkv)
        self._qkv_key: tuple[tuple[int, int, int, int], ...] | None = None
        # query, key and value as one module with 3C outputs, set in place of the three (int8: realm_core.precision)
        self.qkv: nn.Module | None = None

    def _fused_qkv(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(weight (3C, C), bias (3C,)): query, key and value stacked, for inference with plain float
        ``nn.Linear`` layers; None while training, under autograd or with other layers (e.g. int8 ones).
        Rebuilt whenever a weight changes (its storage or in-place version)."""
        layers = (self.query, self.key, self.value)
        if self.training or torch.is_grad_enabled() or any(type(m) is not nn.Linear or m.bias is None
                                                           for m in layers):
            return None
        key = tuple((m.weight.data_ptr(), m.weight._version, m.bias.data_ptr(), m.bias._version) for m in layers)
        if self._qkv_key != key:
            self._qkv = (torch.cat([m.weight for m in layers]), torch.cat([m.bias for m in layers]))
            self._qkv_key = key
        return self._qkv

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C); attn_bias: (B, 1, 1, T) additive mask → (B, T, C)."""
        B, T, C = x.shape
        D = C // self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, self.num_heads, D).transpose(1, 2)  # (B, H, T, D)

        if self.qkv is not None:  # one module for the three projections
            q, k, v = (heads(t) for t in self.qkv(x).split(C, dim=-1))
        elif (qkv := self._fused_qkv()) is not None:  # one matrix product: the same sums as three Linear calls
            q, k, v = (heads(t) for t in F.linear(x, *qkv).split(C, dim=-1))
        else:
            q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.dropout_p if self.training else 0.0
        )  # (B, H, T, D)
        return y.transpose(1, 2).reshape(B, T, C)


class BertSelfOutput(nn.Module):
    """Linear → dropout → LayerNorm(x + residual): post-LN as in BERT."""

    def __init__(self, config: BertConfig, in_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config, config.hidden_size)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, attn_bias), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))  # type: ignore[no-any-return]


class BertLayer(nn.Module):
    """attention → feed-forward (intermediate + output), each with a post-LN residual."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertSelfOutput(config, config.intermediate_size)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, attn_bias)
        return self.output(self.intermediate(x), x)  # type: ignore[no-any-return]


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, attn_bias)
        return x


class BertPooler(nn.Module):
    """tanh(Linear(hidden[:, 0])) — the pooled ``[CLS]`` of BERT (HF ``RealmPooler``)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (batch, seq_len, hidden) → (batch, hidden)."""
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    """The BERT encoder: token ids → contextual vectors (and the pooled ``[CLS]`` on request)."""

    def __init__(self, config: BertConfig, add_pooler: bool = False) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooler else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode a padded batch.

        Args:
            input_ids: (batch, seq_len) int64 wordpiece ids.
            attention_mask: (batch, seq_len), 1 on tokens, 0 on padding.
            token_type_ids: (batch, seq_len), 0 for the first segment and 1 for the second; zeros if None.
            keep: (N,) int64 flat positions (row × seq_len + position) of the only tokens whose last hidden
                state is wanted, or None for all. The last layer's attention still reads every token; its
                attention output, feed-forward and LayerNorms (row-wise) run on the kept tokens only.

        Returns:
            (batch, seq_len, hidden) last hidden states; with ``keep``, (N, hidden) those of the kept tokens.
        """
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        # Additive mask as HF ``get_extended_attention_mask``: 0 on tokens, finfo.min on padding.
        attn_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # (B, 1, 1, T)
        if keep is None:
            return self.encoder(x, attn_bias)  # type: ignore[no-any-return]
        if not len(self.encoder.layer):
            return x.reshape(-1, x.shape[-1]).index_select(0, keep)
        *first, last = cast(list[BertLayer], list(self.encoder.layer))
        for layer in first:
            x = layer(x, attn_bias)
        C = x.shape[-1]
        y = last.attention.self(x, attn_bias).reshape(-1, C).index_select(0, keep)  # (N, C)
        x = last.attention.output(y, x.reshape(-1, C).index_select(0, keep))
        return last.output(last.intermediate(x), x)  # type: ignore[no-any-return]


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation (normal(0, 0.02) weights, zero biases, unit LayerNorm) for fresh heads."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
