"""realm_core.train_retriever: REALM's retriever loss and its gradient on hand-made vectors, a training step
on a tiny random model over a frozen index (gold block added, the query moves toward it), resume, and the
published model version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from index.version import open_version
from realm_core.embedder import Embedder
from realm_core.model_dir import embed_texts, load_model_dir
from realm_core.train_retriever import (
    RetrieverTrainOptions,
    TrainQuestion,
    candidates,
    retriever_loss,
    train,
    train_step,
    training_questions,
    write_model_version,
)
from tests.service.tiny_home import make_tiny_home


def test_loss_gradient_moves_the_query_toward_the_gold_block() -> None:
    """∂loss/∂q = -s (b_gold - Σ_z p(z|x) b_z) for one positive (REALM eq. 2): computed by autograd, checked
    against the formula, and one step along it raises p(gold | x) and q·b_gold."""
    g = torch.Generator().manual_seed(0)
    xb = torch.nn.functional.normalize(torch.randn(1, 5, 16, generator=g), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(1, 16, generator=g), dim=-1).requires_grad_(True)
    positive = torch.tensor([[False, False, False, True, False]])
    s = 20.0
    loss = retriever_loss(q, xb, positive, s)
    loss.backward()
    p = torch.softmax(s * (xb[0] @ q[0].detach()), dim=0)
    expected = -s * (xb[0, 3] - p @ xb[0])
    torch.testing.assert_close(q.grad[0], expected, rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx(-float(torch.log(p[3])), rel=1e-5)
    q2 = q.detach() - 0.01 * q.grad
    p2 = torch.softmax(s * (xb[0] @ q2[0]), dim=0)
    assert p2[3] > p[3] and float(q2[0] @ xb[0, 3]) > float(q.detach()[0] @ xb[0, 3])


def test_loss_marginalises_over_every_positive_and_ignores_padding() -> None:
    xb = torch.eye(4)[None].repeat(2, 1, 1)  # (2, 4, 4)
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    positive = torch.tensor([[True, True, False, False], [False, True, False, True]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    loss = retriever_loss(q, xb, positive, 1.0, mask)
    e = np.e
    want = (-np.log((e + 1) / (e + 3)) - np.log(e / (e + 2))) / 2  # row 2: candidate 3 is padding
    assert loss.item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="at least one candidate"):
        retriever_loss(q, xb, torch.zeros(2, 4, dtype=torch.bool), 1.0)


def test_candidates_add_the_gold_rows_mips_missed() -> None:
    assert candidates(np.array([4, 2, -1]), [2, 9]) == [4, 2, 9]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_home(tmp_path_factory.mktemp("tiny"), blocks=120)


def _questions(home: Path) -> tuple[list[TrainQuestion], list[str]]:
    """One question per block, its title word as the answer; the gold block is the block itself."""
    iv = open_version(home / "indexes", "tiny")
    blocks = iv.blocks.get(range(len(iv.blocks)))
    texts = [b.text for b in blocks]
    arts = [{"title": "t", "paragraphs": [{"context": b.text, "qas": [
        {"question": f"who {b.text.split()[0]} {b.text.split()[1]}?", "answers": [{"text": b.text.split()[-1]}]}]}
        for b in blocks]}]
    return training_questions(arts, [b.id for b in blocks], texts, "b{paragraph}", set()), texts


def test_a_training_step_adds_the_gold_block_and_moves_the_query_toward_it(tiny: Path) -> None:
    model = load_model_dir(tiny / "models" / "tiny" / "1", "tiny", 1)
    iv = open_version(tiny / "indexes", "tiny")
    qs, texts = _questions(tiny)
    assert len(qs) == 120 and all(q.gold_rows[0] == i for i, q in enumerate(qs))
    xq = embed_texts(model.query, [q.question for q in qs]).numpy()
    _, I = iv.index.search(xq, 2)
    tq = next(q for i, q in enumerate(qs) if i not in I[i] and not any(r in q.gold_rows for r in I[i]))
    emb = Embedder(model.query.embedder.config)
    emb.load_state_dict(model.query.embedder.state_dict())
    emb.eval()  # no dropout: the step's effect alone
    gold = torch.from_numpy(iv.index.reconstruct(tq.gold_rows[0]))
    before = embed_texts(model.query, [tq.question])[0]
    opt = torch.optim.SGD(emb.parameters(), lr=0.01)
    loss, found = train_step(emb, model.query.tokenizer, iv.index, texts, [tq], 2, 20.0, 24)
    assert found == 0.0 and loss.item() > 0  # the answer came only from the added gold block
    loss.backward()
    opt.step()
    with torch.no_grad():
        enc = model.query.tokenizer.encode_texts([tq.question], 24)
        after = emb(enc.input_ids, enc.attention_mask, enc.token_type_ids)[0]
    assert float(after @ gold) > float(before @ gold)
    loss2, _ = train_step(emb, model.query.tokenizer, iv.index, texts, [tq], 2, 20.0, 24)
    assert loss2.item() < loss.item()


def test_train_resumes_and_publishes_a_model_version(tiny: Path, tmp_path: Path) -> None:
    model = load_model_dir(tiny / "models" / "tiny" / "1", "tiny", 1)
    iv = open_version(tiny / "indexes", "tiny")
    qs, texts = _questions(tiny)
    emb = Embedder(model.query.embedder.config)
    emb.load_state_dict(model.query.embedder.state_dict())
    opts = RetrieverTrainOptions(steps=2, batch_size=4, top_k=3, lr=1e-3, save_every=1)
    assert train(emb, model.query.tokenizer, iv.index, texts, qs, opts, tmp_path / "work", 24) == 2
    state = torch.load(tmp_path / "work" / "state.pt", weights_only=False)
    assert state["step"] == 2
    opts4 = RetrieverTrainOptions(steps=4, batch_size=4, top_k=3, lr=1e-3, save_every=1)
    resumed = Embedder(model.query.embedder.config)
    resumed.load_state_dict(model.query.embedder.state_dict())
    assert train(resumed, model.query.tokenizer, iv.index, texts, qs, opts4, tmp_path / "work", 24) == 4
    assert torch.load(tmp_path / "work" / "state.pt", weights_only=False)["step"] == 4
    base_json = (tiny / "models" / "tiny" / "1" / "model.json").read_bytes()
    out = write_model_version(tiny / "models" / "tiny" / "1", tiny / "models", "tiny-ft", resumed,
                              model.query.tokenizer, {"steps": 4})
    # regression: the base's model.json was once hard-linked and then written through the link
    assert (tiny / "models" / "tiny" / "1" / "model.json").read_bytes() == base_json
    assert out == tiny / "models" / "tiny-ft" / "1"
    spec = json.loads((out / "model.json").read_text())
    assert spec["query_embedder"] == {"source": "realmqa", "path": "query_embedder"}
    assert spec["block_embedder"] == {"source": "realmqa", "path": "."} and spec["card"]["query_embedder"]
    ft = load_model_dir(out, "tiny-ft", 1)
    assert ft.embedder_id == model.embedder_id  # the same block embedder, by content
    q = ["who red river?"]
    assert not torch.allclose(embed_texts(ft.query, q), embed_texts(model.query, q))
    torch.testing.assert_close(embed_texts(ft.block, q), embed_texts(model.block, q))  # the block side is frozen
    torch.testing.assert_close(embed_texts(ft.query, q), resumed(*_enc(model, q)).detach())


def _enc(model, q):  # type: ignore[no-untyped-def]
    e = model.query.tokenizer.encode_texts(q, 24)
    return e.input_ids, e.attention_mask, e.token_type_ids


def test_a_sweep_of_dead_staging_leaves_a_model_version_being_written(
        tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The staging directory of ``write_model_version`` is a locked scratch: a worker's or convert-hf's sweep of
    dead builders' staging (``Home.remove_dead_scratch``) that runs while it is written keeps it."""
    import realm_core.train_retriever as tr
    from index.home import Home

    model = load_model_dir(tiny / "models" / "tiny" / "1", "tiny", 1)
    swept: list[Path] = []
    save = tr.save_safetensors_atomic

    def save_then_sweep(state: dict[str, torch.Tensor], path: Path) -> None:
        save(state, path)
        swept.extend(Home(tiny).remove_dead_scratch(lambda job_id: False))

    monkeypatch.setattr(tr, "save_safetensors_atomic", save_then_sweep)
    out = write_model_version(tiny / "models" / "tiny" / "1", tiny / "models", "tiny-swept", model.query.embedder,
                              model.query.tokenizer, {"steps": 0})
    assert swept == [] and load_model_dir(out, "tiny-swept", 1).embedder_id == model.embedder_id
    assert sorted(p.name for p in (tiny / "models" / "tiny-swept").iterdir()) == ["1"]  # no staging or lock left
