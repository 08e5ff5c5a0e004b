"""realm_core against Hugging Face REALM (transformers 4.57.x, ``models/deprecated/realm``) on the same random
tiny weights: checkpoint loading, question embedding, retrieval, reader inputs, reader logits and the answer.

The reference is a random ``RealmForOpenQA`` + ``RealmRetriever`` over 2,000 blocks saved with
``save_pretrained`` (``tests/realm_core/hf_reference.py``, fixture ``hf_realm`` in ``tests/conftest.py``);
60 questions, some long enough that ``longest_first`` cuts the question, some with words outside the
vocabulary (``[UNK]``, dropped by HF's question round trip).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="REALM parity tests need the test-only reference extra: "
                    "pip install 'transformers>=4.57,<4.58'")

from realm_core import qa  # noqa: E402
from realm_core.checkpoint import CheckpointError  # noqa: E402
from realm_core.hf_realm import (  # noqa: E402
    block_emb_shape,
    iter_block_emb,
    load_modules,
    load_query_embedder,
    load_reader,
    load_tokenizer,
    open_checkpoint,
    write_model_dir,
)
from realm_core.model_dir import load_model_dir  # noqa: E402
from realm_core.reader import select_spans  # noqa: E402
from realm_core.tokenizer import (  # noqa: E402
    TRUNCATIONS,
    WordPieceTokenizer,
    truncate_longest_first,
    truncate_only_block,
)
from tests.conftest import HfRealmFixture  # noqa: E402
from tests.realm_core.hf_reference import CONFIG, make_questions  # noqa: E402

MASKED = -1e30  # masked span logits are finfo.min, far below this


@pytest.fixture(scope="module")
def tok(hf_realm: HfRealmFixture) -> WordPieceTokenizer:
    return load_tokenizer(hf_realm.path)


@pytest.fixture(scope="module")
def modules(hf_realm: HfRealmFixture):  # type: ignore[no-untyped-def]
    return load_modules(open_checkpoint(hf_realm.path))


@pytest.fixture(scope="module")
def block_index(hf_realm: HfRealmFixture) -> faiss.Index:
    """IndexFlatIP over block_emb, added in chunks of 300 rows (the conversion path, small chunks)."""
    index = faiss.IndexFlatIP(CONFIG["retriever_proj_size"])
    for xb in iter_block_emb(open_checkpoint(hf_realm.path), chunk_rows=300):
        index.add(np.ascontiguousarray(xb))
    return index


def _block_texts(hf_realm: HfRealmFixture, ids: list[int]) -> list[str]:
    return [bytes(hf_realm.hf.retriever.block_records[i]).decode() for i in ids]


# --- tokenizer ---------------------------------------------------------------------------------------


def test_tokenizer_pieces_equal_hf(hf_realm: HfRealmFixture, tok: WordPieceTokenizer) -> None:
    texts = hf_realm.questions + _block_texts(hf_realm, list(range(50)))
    ours = [p.ids for p in tok.pieces(texts)]
    ref = hf_realm.hf.tokenizer(texts, add_special_tokens=False).input_ids
    assert ours == ref


def test_question_round_trip_equals_hf_retriever(hf_realm: HfRealmFixture, tok: WordPieceTokenizer) -> None:
    """HF ``RealmRetriever.__call__`` decodes the embedder ids (``[UNK]`` dropped) and tokenizes again."""
    hf_tok = hf_realm.hf.tokenizer
    ours = tok.round_trip(hf_realm.questions, 512)
    ref = [hf_tok.decode(a.question_ids, skip_special_tokens=True) for a in hf_realm.answers]
    assert [p.ids for p in tok.pieces(ours)] == hf_tok(ref, add_special_tokens=False).input_ids
    unk = hf_tok.unk_token_id
    with_unk = [i for i, a in enumerate(hf_realm.answers) if unk in a.question_ids]
    assert len(with_unk) >= 5  # the case where the reader's question differs from the embedder's
    for i in with_unk:
        assert unk not in tok.pieces([ours[i]])[0].ids


def test_truncation_rules_by_hand() -> None:
    budget = 317  # reader_seq_len 320 − 3 special tokens
    assert truncate_longest_first(10, 300, budget) == (10, 300)  # fits
    assert truncate_longest_first(10, 400, budget) == (10, 307)  # only the longer is cut
    assert truncate_longest_first(200, 300, budget) == (158, 159)  # both cut to ~half
    assert truncate_longest_first(300, 300, budget) == (158, 159)  # a tie: the question is the "shorter"
    assert truncate_longest_first(400, 100, budget) == (217, 100)  # a long question, a short block
    assert truncate_longest_first(500, 0, budget) == (317, 0)
    assert truncate_only_block(10, 400, budget) == (10, 307)
    with pytest.raises(ValueError, match="no room"):
        truncate_only_block(317, 5, budget)
    assert set(TRUNCATIONS) == {"only_block", "longest_first"}


@pytest.mark.parametrize("max_length", [16, 33, 80])
def test_encode_pairs_longest_first_equals_hf_tokenizer(hf_realm: HfRealmFixture, tok: WordPieceTokenizer,
                                                        max_length: int) -> None:
    """Rows of (question, block) pairs of every length mix, against ``RealmTokenizerFast`` with the
    retriever's arguments (lists, ``padding=True, truncation=True``)."""
    hf_tok = hf_realm.hf.tokenizer
    qs = make_questions(24, seed=7)
    blocks = _block_texts(hf_realm, list(range(0, 2000, 83)))[:24]
    blocks[3] = ""  # an empty block is still a pair in batch mode: [CLS] q [SEP] [SEP]
    for start in range(0, 24, 6):
        q, b = qs[start:start + 6], blocks[start:start + 6]
        ours = tok.encode_pairs(tok.pieces(q), tok.pieces(b), max_length, truncation="longest_first")
        ref = hf_tok(q, b, padding=True, truncation=True, return_special_tokens_mask=True,
                     max_length=max_length, return_tensors="pt")
        assert torch.equal(ours.input_ids, ref.input_ids)
        assert torch.equal(ours.attention_mask, ref.attention_mask)
        assert torch.equal(ours.token_type_ids, ref.token_type_ids)
        ref_mask = ~ref.special_tokens_mask.bool() & ref.token_type_ids.bool()  # RealmForOpenQA.forward
        assert torch.equal(ours.block_mask, ref_mask)


# --- checkpoint --------------------------------------------------------------------------------------


def test_config_defaults_are_realms(hf_realm: HfRealmFixture, tmp_path: Path) -> None:
    """A config.json without hidden_act means RealmConfig's gelu_new, not BertConfig's gelu."""
    d = tmp_path / "ckpt"
    shutil.copytree(hf_realm.path, d)
    cfg = json.loads((d / "config.json").read_text())
    for k in ("hidden_act", "layer_norm_eps", "reader_layer_norm_eps"):
        del cfg[k]
    (d / "config.json").write_text(json.dumps(cfg))
    ckpt = open_checkpoint(d)
    assert (ckpt.bert.hidden_act, ckpt.bert.layer_norm_eps) == ("gelu_new", 1e-12)
    assert load_reader(ckpt).config.reader_layer_norm_eps == 1e-3


def _edited_checkpoint(src: Path, dst: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    shutil.copytree(src, dst)
    sd = torch.load(dst / "pytorch_model.bin", weights_only=True)
    edit(sd)
    torch.save(sd, dst / "pytorch_model.bin")
    return dst


def test_missing_key_is_named(hf_realm: HfRealmFixture, tmp_path: Path) -> None:
    d = _edited_checkpoint(hf_realm.path, tmp_path / "c", lambda sd: sd.pop("reader.qa_outputs.dense_output.bias"))
    with pytest.raises(CheckpointError, match=r"lacks 'reader\.qa_outputs\.dense_output\.bias'"):
        load_reader(open_checkpoint(d))
    load_query_embedder(open_checkpoint(d))  # the embedder does not need it


def test_missing_embedder_key_is_named(hf_realm: HfRealmFixture, tmp_path: Path) -> None:
    d = _edited_checkpoint(hf_realm.path, tmp_path / "c", lambda sd: sd.pop("embedder.cls.LayerNorm.weight"))
    with pytest.raises(CheckpointError, match=r"lacks 'embedder\.cls\.LayerNorm\.weight'"):
        load_query_embedder(open_checkpoint(d))


def test_unexpected_key_is_named(hf_realm: HfRealmFixture, tmp_path: Path) -> None:
    def edit(sd: dict[str, torch.Tensor]) -> None:
        sd["embedder.realm.encoder.layer.7.output.dense.weight"] = torch.zeros(2, 2)

    d = _edited_checkpoint(hf_realm.path, tmp_path / "c", edit)
    with pytest.raises(CheckpointError, match=r"unexpected checkpoint key 'embedder\.realm\.encoder\.layer\.7"):
        load_query_embedder(open_checkpoint(d))


def test_misshapen_key_and_missing_block_emb(hf_realm: HfRealmFixture, tmp_path: Path) -> None:
    def edit(sd: dict[str, torch.Tensor]) -> None:
        sd["reader.qa_outputs.dense_intermediate.weight"] = sd["reader.qa_outputs.dense_intermediate.weight"][:3]
        del sd["block_emb"]

    d = _edited_checkpoint(hf_realm.path, tmp_path / "c", edit)
    with pytest.raises(CheckpointError, match=r"'reader\.qa_outputs\.dense_intermediate\.weight' has shape"):
        load_reader(open_checkpoint(d))
    with pytest.raises(CheckpointError, match="lacks 'block_emb'"):
        block_emb_shape(open_checkpoint(d))


def test_safetensors_weights_load_the_same(hf_realm: HfRealmFixture, tmp_path: Path, modules) -> None:  # type: ignore[no-untyped-def]
    """A ``model.safetensors`` checkpoint (older transformers wrote them) reads as the ``.bin`` one."""
    from safetensors.torch import save_file

    d = tmp_path / "st"
    shutil.copytree(hf_realm.path, d)
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    save_file({k: v.clone().contiguous() for k, v in sd.items()}, str(d / "model.safetensors"))
    (d / "pytorch_model.bin").unlink()
    ckpt = open_checkpoint(d)
    assert ckpt.weights.name == "model.safetensors"
    emb, reader = load_modules(ckpt)
    for ours, ref in ((emb, modules[0]), (reader, modules[1])):
        for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
            assert torch.equal(a, b), k
    rows = np.concatenate(list(iter_block_emb(ckpt, chunk_rows=512)))
    assert np.array_equal(rows, hf_realm.hf.model.block_emb.numpy())


# --- model parity ------------------------------------------------------------------------------------


def test_query_projection_equals_hf(hf_realm: HfRealmFixture, tok: WordPieceTokenizer, modules) -> None:  # type: ignore[no-untyped-def]
    emb = modules[0]
    enc = tok.encode_texts(hf_realm.questions, emb.config.max_tokens)
    assert [row[row != tok.pad_id].tolist() for row in enc.input_ids] == [a.question_ids for a in hf_realm.answers]
    with torch.no_grad():
        ours = emb(enc.input_ids, enc.attention_mask, enc.token_type_ids)  # a padded batch of 60
    ref = torch.stack([a.projection for a in hf_realm.answers])
    assert ours.shape == (60, CONFIG["retriever_proj_size"])
    # fp32 after a LayerNorm: 1e-5 of the output's scale (its largest |value|, ~4.6 here). An absolute 1e-5 held
    # on the machines of earlier sittings; an AMD EPYC's kernels put us 1.7e-5 from HF (1.5e-5 one question at a
    # time, so not the padding), 36 fp32 ulps at 4.6.
    assert (ours - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_top_k_equals_hf(hf_realm: HfRealmFixture, tok: WordPieceTokenizer, modules, block_index) -> None:  # type: ignore[no-untyped-def]
    emb = modules[0]
    enc = tok.encode_texts(hf_realm.questions, emb.config.max_tokens)
    with torch.no_grad():
        xq = emb(enc.input_ids, enc.attention_mask, enc.token_type_ids).numpy()
    D, I = block_index.search(xq, 10)
    assert [row.tolist() for row in I] == [a.top_ids for a in hf_realm.answers]
    assert len({a.top_ids[0] for a in hf_realm.answers}) >= 10  # questions do retrieve different blocks


def test_reader_and_answer_equal_hf(hf_realm: HfRealmFixture, tok: WordPieceTokenizer, modules,  # type: ignore[no-untyped-def]
                                    block_index) -> None:
    """Per question: HF's reader inputs, logits within 1e-4, the same (block, span) and answer ids."""
    emb, reader = modules
    seq_len = CONFIG["reader_seq_len"]
    picked_blocks = set()
    for q, a in zip(hf_realm.questions, hf_realm.answers, strict=True):
        enc = tok.encode_texts([q], emb.config.max_tokens)
        with torch.no_grad():
            xq = emb(enc.input_ids, enc.attention_mask, enc.token_type_ids).numpy()
        D, I = block_index.search(xq, CONFIG["reader_beam_size"])
        ids = I[0].tolist()
        assert ids == a.retrieved_ids
        q_pieces = tok.pieces(tok.round_trip([q], emb.config.max_tokens))[0]
        texts = _block_texts(hf_realm, ids)
        inputs = tok.encode_pairs([q_pieces] * len(ids), tok.pieces(texts), seq_len, truncation="longest_first")
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            assert torch.equal(getattr(inputs, name), a.reader_inputs[name]), (q, name)
        assert torch.equal(inputs.block_mask, a.block_mask)
        rel = torch.from_numpy(D[0])
        assert (rel - a.relevance).abs().max().item() <= 1e-5
        with torch.no_grad():
            logits, starts, ends = reader(inputs.input_ids, inputs.attention_mask, inputs.token_type_ids,
                                          inputs.block_mask, rel)
        assert logits.shape == a.logits.shape
        live = a.logits > MASKED
        assert torch.equal(logits > MASKED, live)
        assert (logits[live] - a.logits[live]).abs().max().item() <= 1e-4
        block_idx, span_idx = select_spans(logits[None])
        b, s = int(block_idx[0]), int(span_idx[0])
        assert (b, s) == (a.block_idx, a.candidate), q
        assert (int(starts[s]), int(ends[s])) == (a.start_pos, a.end_pos)
        answer_ids = inputs.input_ids[b, starts[s]:ends[s] + 1].tolist()
        assert answer_ids == a.answer_ids
        assert hf_realm.hf.tokenizer.decode(answer_ids) == a.answer
        # The character offsets of the span cover exactly the answer's wordpieces in the block text.
        start_char, end_char = int(inputs.block_offsets[b, starts[s], 0]), int(inputs.block_offsets[b, ends[s], 1])
        block = tok.pieces([texts[b]])[0]
        inside = [i for i, (x, y) in zip(block.ids, block.offsets, strict=True) if start_char <= x and y <= end_char]
        assert inside == a.answer_ids
        picked_blocks.add(b)
    assert len(picked_blocks) >= 3  # the reader, not only the relevance score, chooses the block


def test_batched_read_equals_hf(hf_realm: HfRealmFixture, tok: WordPieceTokenizer, modules,  # type: ignore[no-untyped-def]
                               block_index) -> None:
    """All questions' reader beams read together (``qa.read_beams``: length-grouped passes, the block-only span
    head): per question, HF's span logits within 1e-4, the same masked spans and HF's answer."""
    emb, reader = modules
    questions, beams = [], []
    for q in hf_realm.questions:
        enc = tok.encode_texts([q], emb.config.max_tokens)
        with torch.no_grad():
            xq = emb(enc.input_ids, enc.attention_mask, enc.token_type_ids).numpy()
        D, I = block_index.search(xq, CONFIG["reader_beam_size"])
        questions.append(tok.pieces(tok.round_trip([q], emb.config.max_tokens))[0])
        beams.append([qa.BeamBlock(t, float(d)) for t, d in zip(_block_texts(hf_realm, I[0].tolist()), D[0])])
    batch = qa.read_beams(reader, tok, questions, beams, CONFIG["reader_seq_len"], "longest_first")
    assert len(batch.pass_rows) < len(questions)
    for reading, a, beam in zip(batch.readings, hf_realm.answers, beams, strict=True):
        logits = reading.logits(1.0)
        assert logits.shape == a.logits.shape
        live = a.logits > MASKED
        assert torch.equal(logits > MASKED, live)
        assert (logits[live] - a.logits[live]).abs().max().item() <= 1e-4
        best = qa.answer(reading, 1.0).best
        assert best.row == a.block_idx
        inside = [i for i, (x, y) in zip(*_block_pieces(tok, beam[best.row].text), strict=True)
                  if best.start_char <= x and y <= best.end_char]
        assert inside == a.answer_ids


def _block_pieces(tok: WordPieceTokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    p = tok.pieces([text])[0]
    return p.ids, p.offsets


def test_written_model_dir_loads_the_same(hf_realm: HfRealmFixture, tmp_path: Path, modules) -> None:  # type: ignore[no-untyped-def]
    spec = write_model_dir(open_checkpoint(hf_realm.path), tmp_path)
    assert spec["kind"] == "realm-hf" and spec["reader_seq_len"] == CONFIG["reader_seq_len"]
    assert spec["card"]["hf_searcher_beam_size"] == 5000 and spec["card"]["hf_reader_beam_size"] == 5
    m = load_model_dir(tmp_path, "tiny", 1)
    assert (m.reader_truncation, m.reader_question, m.block_max_tokens) == ("longest_first", "decoded", 288)
    assert m.max_question_tokens == CONFIG["max_position_embeddings"] - 2
    assert m.reader.config.relevance_scale == 1.0
    for ours, ref in ((m.query.embedder, modules[0]), (m.reader, modules[1])):
        assert ours.config == ref.config
        for (k, x), (_, y) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
            assert torch.equal(x, y), k
    assert m.reader_question_texts(hf_realm.questions[:6]) == m.query.tokenizer.round_trip(
        hf_realm.questions[:6], CONFIG["max_position_embeddings"])
