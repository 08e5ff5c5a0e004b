"""realm_core.precision: the reader's precision from model.json or the setting; int8 (dynamic, CPU) answers
against fp32 on a fixed question set; precisions this machine cannot run are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from index.home import Home
from realm_core import qa
from realm_core.evaluation import exact_match
from realm_core.model_dir import ModelDirError, QAModel, load_model_dir
from realm_core.model_spec import ModelSpec
from realm_core.precision import INT8_FP32_LAYERS, Int8Linear, PrecisionError, quantize_int8, stack_qkv
from tests.conftest import BUNDLED_MODEL, copy_model_with, held_out_questions, reader_inputs


def _answers(m: QAModel, items: list[tuple[str, str, list[str]]]) -> list[qa.SpanChoice]:
    tok = m.reader_tokenizer
    b = qa.read_beams(m.reader, tok, tok.pieces([q for q, _, _ in items]),
                      [[qa.BeamBlock(ctx, 0.0)] for _, ctx, _ in items], m.reader_seq_len)
    return [qa.answer(r, 0.0).best for r in b.readings]


def _agreement(f32: QAModel, i8: QAModel, items: list[tuple[str, str, list[str]]]) -> tuple[int, int, int]:
    """(questions where int8 picks fp32's span, fp32's EM, int8's EM) over ``items``."""
    a, b = _answers(f32, items), _answers(i8, items)
    same = sum((x.start_char, x.end_char) == (y.start_char, y.end_char) for x, y in zip(a, b, strict=True))
    em32 = sum(exact_match(x.text, refs) for x, (_, _, refs) in zip(a, items, strict=True))
    em8 = sum(exact_match(y.text, refs) for y, (_, _, refs) in zip(b, items, strict=True))
    return same, int(em32), int(em8)


AGREE_QUESTIONS = 100


def test_int8_agrees_with_fp32_on_held_out_questions() -> None:
    """100 held-out questions, each with its gold paragraph: int8 picks fp32's span for 90 of them and EM is 61
    against fp32's 63 (measured). Asserted: ≥ 88% and EM within 3 questions. The issue's ≥ 95% is not met:
    the int8 weights' scales that rule out int16 saturation (``int8_weight``) cost agreement (full-range
    weights, which saturate on this CPU, reached 93.5% on bench/README.md's 200 questions); see "int8" there."""
    f32 = load_model_dir(BUNDLED_MODEL, "minilm-squad", 1)
    i8 = load_model_dir(BUNDLED_MODEL, "minilm-squad", 1, precision="int8")
    assert (f32.precision, i8.precision) == ("fp32", "int8")
    float_linears = {n for n, m in i8.reader.named_modules() if type(m) is nn.Linear}
    assert float_linears == set(INT8_FP32_LAYERS)
    assert next(i8.query.embedder.parameters()).dtype == torch.float32  # the query embedder stays fp32
    items = held_out_questions(AGREE_QUESTIONS)
    same, em32, em8 = _agreement(f32, i8, items)
    print(f"int8 = fp32 on {same}/{len(items)} questions; EM fp32 {em32}, int8 {em8}")
    assert same >= 0.88 * len(items)
    assert em8 >= em32 - 3


def test_shipped_calibrated_int8_agrees_with_fp32_on_95_percent() -> None:
    """The bundled default's int8 reader (smoothed by its model.json's calibration, ``realmqa calibrate-int8``)
    picks fp32's span on ≥ 95 of the same 100 held-out questions (issue 9's bar; 97 measured on model versions 7
    and 6, whose int8 computes 2 outlier channels of each feed-forward output in float32; 96 on version 5, 97 on
    version 4), with EM within 2 questions."""
    home = Home(BUNDLED_MODEL.parents[2])
    name, version = home.resolve_model("minilm-squad")
    d = home.model_dir(name, version)
    assert ModelSpec.read(d).int8_smoothing is not None
    f32 = load_model_dir(d, name, version, precision="fp32")
    i8 = load_model_dir(d, name, version, precision="int8")
    items = held_out_questions(AGREE_QUESTIONS)
    same, em32, em8 = _agreement(f32, i8, items)
    print(f"{name}/{version}: calibrated int8 = fp32 on {same}/{len(items)} questions; EM fp32 {em32}, int8 {em8}")
    assert same >= 0.95 * len(items)
    assert em8 >= em32 - 2


def _exact(q: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """What ``quantized::linear_dynamic`` computes, in float64 with no int16 step: x quantised per tensor to
    uint8 (all 8 bits, torch's own parameters), times the int8 weights, rescaled, plus the bias."""
    w, b = torch.ops.quantized.linear_unpack(q._packed_params._packed_params)
    s, zp = torch._choose_qparams_per_tensor(x, False)
    a = (torch.round(x.double() / s) + zp).clamp(0, 255) - zp
    out = (a @ w.int_repr().double().T) * (s * w.q_per_channel_scales().double())[None]
    return out + (0 if b is None else b.double())


def test_int8_sums_are_exact_where_full_range_weights_saturate() -> None:
    """Every same-sign pair of int8 weights (input features 2i, 2i+1) sums to at most 128, so fbgemm's int16
    pair sums (AVX2 ``vpmaddubsw``) cannot saturate: on the worst inputs of every output channel (uint8 255
    wherever its weight is positive, 0 elsewhere; then the same for its negative weights) Int8Linear equals the
    exact integer product. Full-range weights (max|w| → 127) on the same inputs do not where the CPU lacks VNNI."""
    m = load_model_dir(BUNDLED_MODEL, "minilm-squad", 1)
    fc = m.reader.realm.encoder.layer[0].attention.output.dense
    q = Int8Linear.from_linear(fc)
    wi = torch.ops.quantized.linear_unpack(q._packed_params._packed_params)[0].int_repr().int()
    pos, neg = wi.clamp(min=0), (-wi).clamp(min=0)
    assert int((pos[:, 0::2] + pos[:, 1::2]).max()) <= 128 and int((neg[:, 0::2] + neg[:, 1::2]).max()) <= 128
    # values 0 and 1 only: zero point 0 and 1 ↦ 255 exactly, whatever rounding the kernel uses
    worst = torch.cat([(fc.weight > 0).float(), (fc.weight < 0).float()]).detach()  # (2·out, in)
    with torch.no_grad():
        y, exact = q(worst).double(), _exact(q, worst)
        assert float((y - exact).abs().max()) <= 1e-5 * float(exact.abs().max())
        fc.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig  # type: ignore[assignment]
        stock = Int8Linear.from_float(fc)  # torch's weights: max|w| per channel → ±127
        off = int(((stock(worst).double() - _exact(stock, worst)).abs() > 1e-3 * float(exact.abs().max())).sum())
    print(f"full-range weights: {off} of {worst.shape[0] * worst.shape[1]} worst-case outputs off the exact product")
    if torch.backends.quantized.engine in ("x86", "fbgemm") and not _has_vnni():
        assert off > 0  # the saturation the scales of int8_weight prevent


def _has_vnni() -> bool:
    """Whether the CPU multiplies uint8 by int8 into int32 directly (AVX-512 VNNI or AVX-VNNI; Linux only)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown: do not assert the saturation
    return "avx512_vnni" in flags or "avx_vnni" in flags


def test_stacked_query_key_value_equal_three_linear_layers() -> None:
    """quantize_int8 stacks query/key/value into one Linear before quantising; in float32 the stacked reader's
    span scores equal the original's (the stacking alone changes no sum beyond float rounding)."""
    m = load_model_dir(BUNDLED_MODEL, "minilm-squad", 1)
    qs = held_out_questions(3)
    args = reader_inputs(m, qs)
    with torch.no_grad():
        ref = m.reader.span_scores(*args)[0]
        stack_qkv(m.reader)
        attn = m.reader.realm.encoder.layer[0].attention.self
        assert isinstance(attn.qkv, nn.Linear) and not hasattr(attn, "query")
        torch.testing.assert_close(m.reader.span_scores(*args)[0], ref, rtol=1e-5, atol=1e-4)


def test_int8_fp32_layers_are_named_modules() -> None:
    m = load_model_dir(BUNDLED_MODEL, "minilm-squad", 1)
    keep = ("realm.encoder.layer.5.output.dense", "qa_outputs.dense_output")
    q = quantize_int8(m.reader, keep)
    assert {n for n, x in q.named_modules() if type(x) is nn.Linear} == set(keep)
    with pytest.raises(PrecisionError, match=r"int8_fp32_layers \['realm.nope'\] are not Linear layers"):
        quantize_int8(load_model_dir(BUNDLED_MODEL, "minilm-squad", 1).reader, ("realm.nope",))


def test_model_json_precision_and_the_setting_override(tmp_path: Path) -> None:
    d = copy_model_with(tmp_path, precision="int8")
    assert ModelSpec.read(d).precision == "int8"
    assert ModelSpec.from_dict(ModelSpec.read(d).to_dict()).precision == "int8"
    assert load_model_dir(d, "m", 1).precision == "int8"
    assert load_model_dir(d, "m", 1, precision="fp32").precision == "fp32"
    assert ModelSpec.read(BUNDLED_MODEL).precision == "fp32"  # the bundled default stays fp32


def test_bad_precisions_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="model.json precision: precision 'int4' is not one of"):
        load_model_dir(copy_model_with(tmp_path, precision="int4"), "m", 1)
    if not torch.cuda.is_available():
        with pytest.raises(ModelDirError, match="precision setting: torch.float16 needs a CUDA device"):
            load_model_dir(BUNDLED_MODEL, "m", 1, precision="fp16")
