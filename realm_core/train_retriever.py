"""Fine-tune the query embedder against a frozen index (``realmqa train-retriever``; REALM §3.3, §4.5).

During REALM's fine-tuning the block embeddings and the MIPS index stay fixed and only the query side
learns. For a question ``x`` the current query embedder gives ``q = Embed_input(x)``; MIPS over the frozen
index returns the top-K blocks; REALM's retriever objective is the marginal likelihood of the blocks that
contain the answer among them:

    p(z | x) = exp(s · q·b_z) / Σ_{z' ∈ top-K} exp(s · q·b_z')          (REALM eq. 2, restricted to top-K)
    loss(x)  = -log Σ_{z ∈ top-K, z contains an answer} p(z | x)

``b_z`` are the index's stored block embeddings (constants: no gradient reaches them). As ORQA and DPR do,
the gold block (the question's own paragraph, where it contains the answer) is added to the candidates when
MIPS did not return it, so every question has a positive. ``s`` (``--scale``) is an inverse temperature:
REALM's embeddings are unnormalised (``s = 1``); sentence-transformers embedders L2-normalise, so inner
products are cosines in [-1, 1] and ``s = 20`` (the sentence-transformers MultipleNegativesRankingLoss
default) makes the softmax usable. The ranking MIPS serves does not depend on ``s``.

Resumable: the embedder, optimiser and step are saved atomically to ``WORK/state.pt`` every ``--save-every``
steps; run the same command again to continue. At the end (``--steps`` done or ``--max-minutes`` spent) a new
model version is published in the home: the base version's files (reader, tokenizer, block embedder;
hard-linked where possible) with ``query_embedder/`` replaced by the trained one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from realm_core.atomic import publish_file, write_atomic
from realm_core.checkpoint import save_safetensors_atomic
from realm_core.embedder import Embedder
from realm_core.evaluation import has_answer
from realm_core.model_spec import EmbedderSpec, ModelSpec, publish_model_version
from realm_core.tokenizer import WordPieceTokenizer

log = logging.getLogger(__name__)


def retriever_loss(q: torch.Tensor, xb: torch.Tensor, positive: torch.Tensor, scale: float,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """REALM's retriever loss (module docstring), averaged over the batch.

    Args:
        q: (batch, dim) query embeddings (with gradient).
        xb: (batch, candidates, dim) frozen block embeddings of each question's candidates.
        positive: (batch, candidates) bool, the candidates that contain an answer.
        scale: inverse temperature ``s``.
        mask: (batch, candidates) bool, False on padding candidates (questions with fewer candidates).
    Returns:
        () the mean over questions of ``-log Σ_{positive} p(z|x)``.
    Raises:
        ValueError: a question with no positive candidate (its loss would be infinite).
    """
    mask = torch.ones_like(positive) if mask is None else mask
    positive = positive & mask
    if not bool(positive.any(dim=1).all()):
        raise ValueError("every question needs at least one candidate that contains the answer")
    logits = (scale * torch.einsum("bd,bcd->bc", q, xb)).masked_fill(~mask, -math.inf)  # (B, C)
    logp = F.log_softmax(logits, dim=-1)
    return -torch.logsumexp(logp.masked_fill(~positive, -math.inf), dim=-1).mean()


@dataclass(frozen=True)
class TrainQuestion:
    question: str
    answers: list[str]
    gold_rows: list[int]  # rows of the question's paragraph that contain an answer


def training_questions(articles: list[dict[str, Any]], block_ids: Sequence[str], block_texts: Sequence[str],
                       gold_id: str, exclude_titles: set[str]) -> list[TrainQuestion]:
    """SQuAD questions with the rows of their gold blocks. The block id of paragraph ``p`` of the article
    titled ``t`` is ``gold_id.format(title=t, paragraph=p)``, or that id followed by ``#n`` for the pieces of a
    split paragraph (:func:`index.corpus.split_blocks`). Questions of ``exclude_titles`` articles and those
    whose paragraph has no block containing an answer are left out."""
    rows_of: dict[str, list[int]] = {}
    for r, bid in enumerate(block_ids):
        rows_of.setdefault(bid.split("#", 1)[0], []).append(r)
    out = []
    for art in articles:
        if art["title"] in exclude_titles:
            continue
        for p, para in enumerate(art["paragraphs"]):
            rows = rows_of.get(gold_id.format(title=art["title"], paragraph=p), [])
            for qa in para["qas"]:
                answers = [a["text"] for a in qa["answers"]]
                gold = [r for r in rows if has_answer(block_texts[r], answers)]
                if gold:
                    out.append(TrainQuestion(qa["question"], answers, gold))
    return out


def candidates(top: np.ndarray, gold_rows: list[int]) -> list[int]:
    """The MIPS top-K rows (``-1`` dropped), then the gold rows MIPS missed (ORQA/DPR)."""
    rows = [int(r) for r in top if r >= 0]
    return rows + [r for r in gold_rows if r not in rows]


def train_step(embedder: Embedder, tokenizer: WordPieceTokenizer, index: Any, block_texts: Sequence[str],
               batch: Sequence[TrainQuestion], top_k: int, scale: float, max_question_tokens: int
               ) -> tuple[torch.Tensor, float]:
    """The loss of one batch (backward not called) and the share of its questions whose answer MIPS found in
    the top-K with the current query embedder. ``index`` is a faiss index over the frozen block embeddings
    (``search`` and ``reconstruct_batch``)."""
    enc = tokenizer.encode_texts([q.question for q in batch], min(max_question_tokens, embedder.config.max_tokens))
    q = embedder(enc.input_ids, enc.attention_mask, enc.token_type_ids)  # (B, dim)
    _, I = index.search(np.ascontiguousarray(q.detach().float().numpy()), top_k)
    rows = [candidates(I[b], tq.gold_rows) for b, tq in enumerate(batch)]
    C = max(map(len, rows))
    xb = torch.zeros((len(batch), C, q.shape[1]))
    positive = torch.zeros((len(batch), C), dtype=torch.bool)
    found = 0
    for b, (tq, rs) in enumerate(zip(batch, rows)):
        xb[b, :len(rs)] = torch.from_numpy(index.reconstruct_batch(np.asarray(rs, dtype=np.int64)))
        pos = [has_answer(block_texts[r], tq.answers) for r in rs]
        positive[b, :len(rs)] = torch.tensor(pos)
        found += any(pos[:int((I[b] >= 0).sum())])  # among what MIPS returned, gold rows added aside
    mask = torch.arange(C)[None, :] < torch.tensor([len(r) for r in rows])[:, None]  # (B, C) False: padding
    return retriever_loss(q.float(), xb, positive, scale, mask), found / len(batch)


def save_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save published atomically (:func:`realm_core.atomic.publish_file`)."""
    publish_file(path, lambda tmp: torch.save(state, tmp))


def write_model_version(base: Path, models_dir: Path, name: str, embedder: Embedder,
                        tokenizer: WordPieceTokenizer, card: dict[str, Any]) -> Path:
    """Publish ``models_dir/name/<next>`` (:func:`realm_core.model_spec.publish_model_version`): the base
    version's files, ``query_embedder/`` with the trained embedder (source ``realmqa``), and model.json naming it
    as the query embedder and the base's block embedder, unchanged, as the block embedder. Returns the version
    directory.

    Raises:
        realm_core.model_spec.ModelDirError: the base's model.json is malformed; OSError: no version number
            could be taken in 8 tries.
    """
    def write(staging: Path, spec: ModelSpec) -> ModelSpec:
        qdir = staging / "query_embedder"
        qdir.mkdir()
        write_atomic(qdir / "embedder_config.json", json.dumps(dataclasses.asdict(embedder.config), indent=2))
        save_safetensors_atomic(embedder.state_dict(), qdir / "embedder.safetensors")
        tokenizer.save(qdir)
        return dataclasses.replace(spec, query_embedder=EmbedderSpec("realmqa", "query_embedder"),
                                   block_embedder=spec.block, card={**spec.card, "query_embedder": card})

    return publish_model_version(base, models_dir, name, ("query_embedder",), write)


@dataclass(frozen=True)
class RetrieverTrainOptions:
    steps: int = 1000
    max_minutes: float = 0.0  # stop (and publish) after this long; 0: no limit
    batch_size: int = 32  # questions per step
    top_k: int = 8  # MIPS candidates per question (REALM's top-K)
    scale: float = 20.0  # inverse temperature s on relevance scores (see the module docstring)
    lr: float = 2e-5
    warmup: float = 0.05  # share of steps with a linear warm-up, then linear decay to 0 at ``steps``
    seed: int = 13
    save_every: int = 50  # steps between atomic saves of the state


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``realmqa train-retriever`` (the command lives in ``service.cli``, which opens the home)."""
    p.add_argument("--home", required=True)
    p.add_argument("--model", required=True, help="base model name/version (its query embedder is trained)")
    p.add_argument("--index", required=True, help="frozen index name/version built by the base's block embedder")
    p.add_argument("--squad", required=True, help="SQuAD-format training questions (.json or .json.gz)")
    p.add_argument("--exclude", help="SQuAD-format JSON whose articles are left out (held-out questions)")
    p.add_argument("--gold-id", default="train/{title}/{paragraph}",
                   help="block id of a question's paragraph ({title}; {paragraph}: its index in the article)")
    p.add_argument("--out-model", required=True, help="model name to publish the new version under")
    p.add_argument("--work", required=True, help="directory for the resumable state (state.pt)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-publish", action="store_true", help="train and save the state only")
    d = RetrieverTrainOptions()
    for f in dataclasses.fields(RetrieverTrainOptions):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(d, f.name)), default=getattr(d, f.name))


def options_from_args(a: argparse.Namespace) -> RetrieverTrainOptions:
    return RetrieverTrainOptions(**{f.name: getattr(a, f.name) for f in dataclasses.fields(RetrieverTrainOptions)})


def train(embedder: Embedder, tokenizer: WordPieceTokenizer, index: Any, block_texts: Sequence[str],
          questions: Sequence[TrainQuestion], opts: RetrieverTrainOptions, work: Path,
          max_question_tokens: int = 64) -> int:
    """Train ``embedder`` in place (resuming from ``work/state.pt`` if present); returns the steps done.

    ``index`` is the frozen faiss index of the block embeddings (``search``, ``reconstruct_batch``).
    """
    work.mkdir(parents=True, exist_ok=True)
    embedder.float().train()
    opt = torch.optim.AdamW(embedder.parameters(), lr=opts.lr, weight_decay=0.01)
    warm = max(1, int(opts.warmup * opts.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (opts.steps - s) / max(1, opts.steps - warm))))
    state_path = work / "state.pt"
    step = 0
    if state_path.is_file():
        st = torch.load(state_path, weights_only=False)
        embedder.load_state_dict(st["embedder"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        step = int(st["step"])
        log.info("resumed from %s at step %d", state_path, step)
    order = list(range(len(questions)))
    random.Random(opts.seed).shuffle(order)
    torch.manual_seed(opts.seed + step)
    t0 = time.time()
    losses: list[float] = []
    found: list[float] = []
    while step < opts.steps:
        batch = [questions[order[(step * opts.batch_size + i) % len(order)]] for i in range(opts.batch_size)]
        loss, f = train_step(embedder, tokenizer, index, block_texts, batch, opts.top_k, opts.scale,
                             max_question_tokens)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(embedder.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        losses.append(loss.item())
        found.append(f)
        if step % 10 == 0:
            log.info("step %d/%d loss %.4f answer in MIPS top-%d %.3f lr %.2e %.0f s", step, opts.steps,
                     float(np.mean(losses[-10:])), opts.top_k, float(np.mean(found[-10:])), sched.get_last_lr()[0],
                     time.time() - t0)
        over = bool(opts.max_minutes) and time.time() - t0 > opts.max_minutes * 60
        if step % opts.save_every == 0 or step == opts.steps or over:
            save_state(state_path, {"embedder": embedder.state_dict(), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "step": step,
                                    "options": dataclasses.asdict(opts)})
        if over:
            log.info("stopping at step %d: max_minutes spent", step)
            break
    embedder.eval()
    return step
