"""The reader's numeric precision: what ``model.json``'s ``precision`` (or the ``precision`` setting) names.

- ``fp32``: float32 on the CPU, the default and the one REALM parity is tested in.
- ``int8``: dynamic int8 Linear layers on the CPU (:func:`quantize_int8`): each self-attention's query/key/value
  stacked into one Linear, then every Linear of the reader an :class:`Int8Linear` (weights int8 per output channel
  with scales that keep fbgemm's AVX2 int16 pair sums exact, :func:`int8_weight`; activations quantised to all 8
  bits per tensor at each call) except the layers an :class:`Int8Plan` keeps float32 (by default
  :data:`INT8_FP32_LAYERS`; model.json's ``int8_fp32_layers``, chosen by ``realmqa calibrate-int8`` as the layers
  whose int8 outputs stray furthest, :func:`int8_layer_errors`); embeddings, LayerNorms, attention's softmax and
  the span head's sums stay float32. With a calibration (:class:`Smoothing`, model.json's ``int8_smoothing``,
  written by ``realmqa calibrate-int8``) each Linear's input channels are first divided by SmoothQuant's
  per-channel factors and its weight's columns multiplied by them (Xiao et al. 2023, arXiv:2211.10438, §4), which
  moves activation outliers into the weights before the per-tensor activation step. With ``outlier_channels``
  (model.json ``int8_outlier_channels``) the few input channels of each feed-forward output whose smoothed
  calibration range is largest are computed in float32 beside the int8 product of the others (LLM.int8's
  decomposition, :class:`Int8Plan`). Activations are quantised either per call from the input's own min/max
  (``"dynamic"``, the default) or, with a calibration, on a fixed range per layer (``"static"``, model.json
  ``int8_activations``): each token is then quantised the same way whatever else is in the reader pass, so a
  question's int8 answer does not depend on the questions batched with it (with dynamic scales it changed on ~4%
  of questions between batch 1 and 32, bench/README.md "int8"). Built on ``torch.ao.nn.quantized.dynamic.Linear``,
  ``quantized::linear_dynamic`` and ``quantized::linear_with_input_q_dq_qweight_dq_output_fp32`` (fbgemm):
  ``torch.ao.quantization`` warns that it is deprecated in favour of torchao, but torchao 0.18's
  ``Int8DynamicActivationInt8WeightConfig`` ran 25× slower here (no int8 CPU kernel for that path), so the eager
  modules stay until torchao has one (see bench/README.md).
- ``fp16``, ``bf16``: the reader in half precision on the first CUDA device.

Only the reader changes: the query embedder stays float32 so that questions meet the index built in float32.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd

from realm_core.bert import BertSelfAttention
from realm_core.reader import SpanReader


class PrecisionError(ValueError):
    """A precision that is unknown or that this machine cannot run."""


def _fp32(reader: SpanReader) -> SpanReader:
    return reader.float()


# Linear layers the int8 reader keeps in float32 (module names in SpanReader): the span head's output
# (256 → 1, run once per span width) is a matrix-vector product, slower in int8 than in float32.
INT8_FP32_LAYERS: tuple[str, ...] = ("qa_outputs.dense_output",)


# the feed-forward output Linear of each encoder layer (BertLayer.output.dense): its input, the intermediate
# activation, is a fresh tensor read by nothing else (BertLayer.forward, BertModel.forward's last layer)
FFN_OUTPUT = re.compile(r"encoder\.layer\.\d+\.output\.dense$")


def int8_weight(weight: torch.Tensor) -> torch.Tensor:
    """A Linear weight in int8 per output channel, with scales that keep fbgemm's AVX2 sums exact.

    Without VNNI (AVX2, this project's CPU) fbgemm multiplies uint8 activations by int8 weights with
    ``vpmaddubsw``, which adds the products of input features 2i and 2i+1 in int16 *with saturation*; the int32
    sums come after. With activations on all 8 bits (0..255) a pair stays within int16 for every input when the
    same-sign weights of each pair add up to at most 128 (255 × 128 = 32,640 ≤ 32,767). Each output channel's
    scale is therefore (largest same-sign pair sum) / 127 rather than max|w| / 127 (rounding adds at most 1 to
    a pair): as fine as that guarantee allows, between 8-bit (pairs of one large weight) and 7-bit (two large
    weights side by side) steps. Symmetric (zero point 0), as ``torch.ao``'s per-channel weight observer.

    Args:
        weight: (out_features, in_features) float32.

    Returns:
        (out_features, in_features) ``torch.qint8`` quantised per channel (axis 0), every same-sign pair
        (2i, 2i+1) of a row within [−128, 128].
    """
    w = weight.detach().float()
    if w.shape[1] % 2:
        w = torch.nn.functional.pad(w, (0, 1))  # fbgemm pads the last pair with a zero weight too
    pos, neg = w.clamp(min=0), (-w).clamp(min=0)
    pair = torch.maximum(pos[:, 0::2] + pos[:, 1::2], neg[:, 0::2] + neg[:, 1::2]).amax(dim=1)  # ≥ max|w|
    scale = (pair / 127).clamp_min(torch.finfo(torch.float32).tiny).double()
    zero = torch.zeros(weight.shape[0], dtype=torch.long)
    return torch.quantize_per_channel(weight.detach().float(), scale, zero, 0, torch.qint8)


class Int8Linear(nnqd.Linear):  # type: ignore[misc]
    """A dynamic int8 Linear (``torch.ao.nn.quantized.dynamic.Linear``) with activations on all 8 bits.

    torch's own module calls ``quantized::linear_dynamic`` with ``reduce_range=True`` (7-bit activations, its
    guard against int16 saturation in fbgemm's AVX2 kernels). Here the guard is in the weights' scales
    (:func:`int8_weight`), which keeps more of fp32's spans on the bundled reader (bench/README.md, "int8").
    With ``smooth`` (SmoothQuant's factors s, :meth:`Smoothing.factors`) the layer computes
    (x / s) · (W diag(s))ᵀ + b: the same product in exact arithmetic, with flatter input channels to quantise.

    forward: x (..., in_features) float32 → (..., out_features) float32.
    """

    input_scale: torch.Tensor | None = None  # (in_features,) 1 / s, or None: no smoothing
    # static activations: the largest |value| of the (smoothed) input on the calibration questions; the input is
    # quantised on [−range, range] (uint8, zero point 128) at every call; None: dynamic (per call, all 8 bits)
    input_range: float | None = None
    # smooth the input in place: set (by quantize_int8) only where the input is a temporary that nothing else
    # reads (the feed-forward's intermediate activation), which saves a (tokens, 4C) copy per call
    smooth_in_place: bool = False
    # outlier input channels computed in float32 (LLM.int8's decomposition): (k,) int64 channel indices, None: none
    outliers: torch.Tensor | None = None
    outlier_weight: torch.Tensor | None = None  # (k, out_features) float32: the float weight's columns, transposed

    @classmethod
    def from_linear(cls, linear: nn.Linear, smooth: torch.Tensor | None = None,
                    outliers: torch.Tensor | None = None) -> Int8Linear:
        """Args: linear: the float layer; smooth: (in_features,) positive SmoothQuant factors s, or None;
        outliers: (k,) int64 input channels computed in float32 (their int8 weight columns are zero), or None.

        Raises:
            PrecisionError: ``outliers`` without ``smooth`` (only a smoothed layer zeroes them in its own copy of
                the input), or a channel outside the layer's inputs.
        """
        q = cls(linear.in_features, linear.out_features, bias_=linear.bias is not None)
        bias = None if linear.bias is None else linear.bias.detach().float()
        weight = linear.weight.detach().float()
        if outliers is not None:
            if smooth is None:
                raise PrecisionError("int8 outlier channels need a calibration (int8_smoothing)")
            if outliers.numel() and not (0 <= int(outliers.min()) and int(outliers.max()) < linear.in_features):
                raise PrecisionError(f"int8 outlier channels outside the layer's {linear.in_features} inputs")
            q.outliers = outliers.long()
            q.outlier_weight = weight[:, q.outliers].t().contiguous()
            weight = weight.index_fill(1, q.outliers, 0.0)
        if smooth is not None:
            weight = weight * smooth
            q.input_scale = (1.0 / smooth).float()
        q.set_weight_bias(int8_weight(weight), bias)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        O, xo = self.outliers, None
        if O is not None:
            xo = x.index_select(-1, O)  # before any in-place step
        if self.input_scale is not None:
            x = x.mul_(self.input_scale) if self.smooth_in_place else x * self.input_scale
        if self.input_range is not None:  # outlier channels are clipped to the range: their int8 weights are 0
            y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                x, 2 * self.input_range / 255, 128, self._packed_params._packed_params)
        else:
            if O is not None:  # (x is this layer's own copy, or a temporary: smoothing needs one)
                x = x.index_fill_(-1, O, 0.0)  # so that they do not set the dynamic range
            y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
        if xo is not None and self.outlier_weight is not None:
            y = y.add_(torch.matmul(xo, self.outlier_weight))
        return y  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Smoothing:
    """SmoothQuant's calibration of the int8 reader (Xiao et al. 2023, arXiv:2211.10438, §4, eq. 4).

    Attributes:
        input_amax: Linear name (as :func:`quantize_int8` names them, query/key/value stacked as
            ``….attention.self.qkv``) → (in_features,) float32, the largest |input| of each channel seen on the
            calibration questions (:func:`calibrate_int8`).
        alpha: migration strength in [0, 1]: 0 leaves the inputs alone, 1 moves all their range into the weights.
    """

    input_amax: Mapping[str, torch.Tensor]
    alpha: float

    def factors(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """s_j = amax(|X_j|)^α / amax(|W_:,j|)^(1−α) (eq. 4) for the Linear ``name`` of weight (out, in).

        Raises:
            PrecisionError: no calibration for ``name``, or one of another width.
        """
        if name not in self.input_amax:
            raise PrecisionError(f"int8 calibration has no entry for Linear {name!r}")
        a = self.input_amax[name].float()
        if a.shape != (weight.shape[1],):
            raise PrecisionError(f"int8 calibration of {name!r} has shape {tuple(a.shape)}, the layer "
                                 f"{weight.shape[1]} inputs")
        w = weight.detach().float().abs().amax(dim=0)
        eps = 1e-5  # a channel never seen non-zero (or a zero weight column) keeps s near 1 instead of 0 or ∞
        return (a.clamp_min(eps) ** self.alpha / w.clamp_min(eps) ** (1 - self.alpha)).clamp(eps, 1 / eps)

    def smoothed_range(self, name: str, weight: torch.Tensor, factors: torch.Tensor | None = None) -> torch.Tensor:
        """(in_features,) float32 amax_j / s_j: each input channel's largest |value| after smoothing
        (``factors``: :meth:`factors` of the same layer, if already computed).

        Raises:
            PrecisionError: as :meth:`factors`.
        """
        return self.input_amax[name].float() / (self.factors(name, weight) if factors is None else factors)


def largest_channels(channel_range: torch.Tensor, k: int) -> torch.Tensor:
    """(k,) int64: the ``k`` channels of largest ``channel_range`` ((in_features,)), ascending (ties: the lower).

    Raises:
        PrecisionError: ``k`` not in [0, in_features).
    """
    if not 0 <= k < len(channel_range):
        raise PrecisionError(f"int8_outlier_channels must be in [0, {len(channel_range)}), not {k}")
    return torch.sort(-channel_range, stable=True).indices[:k].sort().values


# how int8 quantises a Linear's input (model.json ``int8_activations``)
INT8_ACTIVATIONS = ("dynamic", "static")


@dataclass(frozen=True)
class Int8Plan:
    """How a reader runs in int8 (model.json ``int8_fp32_layers``, ``int8_smoothing``, ``int8_activations``).

    Attributes:
        fp32_layers: Linear module names kept float32 (a stacked projection is
            ``realm.encoder.layer.N.attention.self.qkv``).
        smoothing: SmoothQuant's calibration (and, for static activations, the input ranges), or None: inputs
            quantised as they are.
        activations: ``"dynamic"`` (each call's own min/max) or ``"static"`` (each layer's calibrated range:
            :attr:`Int8Linear.input_range`).
        outlier_channels: per int8 feed-forward output Linear, the k input channels with the largest smoothed
            calibration range computed in float32 (model.json ``int8_outlier_channels``; 0: none; needs a
            smoothing). LLM.int8's decomposition (Dettmers et al. 2022, arXiv:2208.07339, §3.2) with the outlier
            set fixed by the calibration: y = int8(x_rest) W_restᵀ + x_O W_Oᵀ, the int8 part on a range without
            the outliers. On the bundled reader one or two of the 1,536 GELU channels of layers 0–3 reach ~3× the
            others' range (bench/README.md, "Outlier channels").
    """

    fp32_layers: tuple[str, ...] = INT8_FP32_LAYERS
    smoothing: Smoothing | None = None
    activations: str = "dynamic"  # a key of INT8_ACTIVATIONS; "static" needs a smoothing (its input ranges)
    outlier_channels: int = 0  # per feed-forward output layer; > 0 needs a smoothing


@torch.no_grad()
def calibrate_int8(reader: SpanReader, run: Callable[[SpanReader], object],
                   fp32_layers: Sequence[str] = INT8_FP32_LAYERS) -> dict[str, torch.Tensor]:
    """Per input channel, the largest |input| of every Linear that :func:`quantize_int8` makes int8.

    Args:
        reader: a float32 reader (not changed: a copy is stacked as :func:`quantize_int8` stacks it, and run).
        run: reads the calibration questions with the reader it is given, as serving reads them (e.g. through
            ``realm_core.qa.read_beams``).
        fp32_layers: layers that stay float32 (not calibrated).

    Returns:
        Linear name → (in_features,) float32, for :class:`Smoothing`.

    Raises:
        PrecisionError: ``run`` never called a layer to be calibrated.
    """
    reader = copy.deepcopy(reader).float().eval()
    stack_qkv(reader)
    amax: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def record(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().float().abs().reshape(-1, args[0].shape[-1]).amax(dim=0)
            amax[name] = x if name not in amax else torch.maximum(amax[name], x)
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in reader.named_modules()
               if type(m) is nn.Linear and n not in fp32_layers]
    try:
        run(reader)
    finally:
        for h in handles:
            h.remove()
    missed = len(handles) - len(amax)
    if missed:
        raise PrecisionError(f"calibration never ran {missed} of the reader's Linear layers")
    return amax


@torch.no_grad()
def int8_layer_errors(reader: SpanReader, run: Callable[[SpanReader], object], plan: Int8Plan) -> dict[str, float]:
    """How far each int8 Linear's output strays from float32 on the inputs it meets: the mean over its calls of
    ‖y_int8 − y_fp32‖ / ‖y_fp32‖ (Frobenius norms over the call's tokens × outputs), where y_fp32 is the float
    layer on the very input the int8 one received (so errors of earlier layers do not count again).

    Args:
        reader: a float32 reader (not changed: a copy is quantised by ``plan`` and run).
        run: reads the calibration questions with the reader it is given (as for :func:`calibrate_int8`).
        plan: the int8 layout measured.

    Returns:
        int8 Linear name → relative error (unitless, ≥ 0), largest first.

    Raises:
        PrecisionError: as :func:`quantize_int8`, or ``run`` never called an int8 layer.
    """
    floats = copy.deepcopy(reader).float().eval()
    stack_qkv(floats)
    linears = {n: m for n, m in floats.named_modules() if type(m) is nn.Linear}
    q = quantize_int8(copy.deepcopy(reader), plan.fp32_layers, plan.smoothing, plan.activations,
                      plan.outlier_channels).eval()
    sums: dict[str, list[float]] = {}
    inputs: dict[str, torch.Tensor] = {}

    def before(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def keep(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inputs[name] = args[0].clone()  # an in-place smoothing layer overwrites its input
        return keep

    def after(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def measure(_: nn.Module, __: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            ref = linears[name](inputs.pop(name))
            sums.setdefault(name, []).append(((out - ref).norm() / ref.norm().clamp_min(1e-12)).item())
        return measure

    handles = []
    for name, m in q.named_modules():
        if isinstance(m, Int8Linear):
            handles += [m.register_forward_pre_hook(before(name)), m.register_forward_hook(after(name))]
    try:
        run(q)
    finally:
        for h in handles:
            h.remove()
    if not sums:
        raise PrecisionError("the calibration run never called an int8 layer")
    errors = {n: sum(v) / len(v) for n, v in sums.items()}
    return dict(sorted(errors.items(), key=lambda kv: -kv[1]))


def stack_qkv(reader: SpanReader) -> None:
    """Each self-attention's query, key and value Linear → one Linear of 3C outputs (``BertSelfAttention.qkv``),
    so that int8 quantises a layer's input once instead of three times."""
    for m in reader.modules():
        if isinstance(m, BertSelfAttention) and m.qkv is None:
            parts = (m.query, m.key, m.value)
            qkv = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts))
            with torch.no_grad():
                qkv.weight.copy_(torch.cat([p.weight for p in parts]))
                qkv.bias.copy_(torch.cat([p.bias for p in parts]))
            m.qkv = qkv
            del m.query, m.key, m.value


def quantize_int8(reader: SpanReader, fp32_layers: Sequence[str] = INT8_FP32_LAYERS,
                  smoothing: Smoothing | None = None, activations: str = "dynamic",
                  outlier_channels: int = 0) -> SpanReader:
    """The reader (changed in place) with query/key/value stacked and every Linear layer an :class:`Int8Linear`
    except those named in ``fp32_layers`` (module names, e.g. ``qa_outputs.dense_output``; a stacked
    projection is ``realm.encoder.layer.N.attention.self.qkv``), which stay float32; with ``smoothing``, each
    int8 layer smoothed by its SmoothQuant factors; with ``outlier_channels`` k > 0, each int8 feed-forward
    output's k input channels of largest smoothed range computed in float32 (:class:`Int8Plan`); with
    ``activations="static"``, each int8 layer's input quantised on its calibrated range, the largest smoothed
    |input| of the calibration over its int8 channels (max_j amax_j / s_j, j not an outlier).

    Raises:
        PrecisionError: no quantized CPU engine, a name in ``fp32_layers`` that is not a Linear of the reader,
            a ``smoothing`` that lacks a layer, has one of another width or names layers the reader lacks, an
            unknown ``activations``, ``"static"`` or ``outlier_channels`` > 0 without a ``smoothing``, or
            ``outlier_channels`` not below a layer's width.
    """
    if not set(torch.backends.quantized.supported_engines) - {"none"}:
        raise PrecisionError("int8 needs a quantized CPU engine (fbgemm/x86/qnnpack), which this torch lacks")
    if activations not in INT8_ACTIVATIONS:
        raise PrecisionError(f"int8_activations {activations!r} is not one of {list(INT8_ACTIVATIONS)}")
    if activations == "static" and smoothing is None:
        raise PrecisionError("int8_activations 'static' needs a calibration (int8_smoothing): its input ranges")
    if outlier_channels and smoothing is None:
        raise PrecisionError("int8_outlier_channels needs a calibration (int8_smoothing): its input ranges")
    reader = reader.float()
    stack_qkv(reader)
    linears = {n: m for n, m in reader.named_modules() if type(m) is nn.Linear}
    unknown = sorted(set(fp32_layers) - set(linears))
    if unknown:
        raise PrecisionError(f"int8_fp32_layers {unknown} are not Linear layers of the reader")
    if smoothing is not None and (extra := sorted(set(smoothing.input_amax) - set(linears))):
        raise PrecisionError(f"int8 calibration names layers the reader lacks: {extra[:3]}")
    for name, linear in linears.items():
        if name not in fp32_layers:
            smooth = None if smoothing is None else smoothing.factors(name, linear.weight)
            ffn_out = FFN_OUTPUT.search(name) is not None  # its input is BertIntermediate's output
            split = bool(outlier_channels) and ffn_out
            r = outliers = None
            if smoothing is not None and (split or activations == "static"):
                r = smoothing.smoothed_range(name, linear.weight, smooth)
                if split:
                    outliers = largest_channels(r, outlier_channels)
                    r = r.index_fill(0, outliers, 0.0)  # the int8 part's range leaves them out
            parent, _, child = name.rpartition(".")
            q = Int8Linear.from_linear(linear, smooth, outliers)
            q.smooth_in_place = ffn_out
            if r is not None and activations == "static":
                q.input_range = float(r.max())
            setattr(reader.get_submodule(parent), child, q)
    return reader


def _cuda(dtype: torch.dtype) -> Callable[[SpanReader], SpanReader]:
    def to(reader: SpanReader) -> SpanReader:
        if not torch.cuda.is_available():
            raise PrecisionError(f"{dtype} needs a CUDA device and torch sees none")
        return reader.to(device="cuda", dtype=dtype)

    return to


# precision name → how a float32 reader becomes one (eval mode kept); int8 is laid out by an Int8Plan
PRECISIONS: dict[str, Callable[[SpanReader], SpanReader]] = {
    "fp32": _fp32,
    "int8": quantize_int8,
    "fp16": _cuda(torch.float16),
    "bf16": _cuda(torch.bfloat16),
}


def apply_precision(reader: SpanReader, precision: str, int8: Int8Plan | None = None) -> SpanReader:
    """The reader in ``precision`` (the module may be changed in place); ``int8``: the int8 layout (None: the
    default plan, :data:`INT8_FP32_LAYERS` float32 and no smoothing), ignored by the other precisions.

    Raises:
        PrecisionError: an unknown precision, or one this machine cannot run (int8 without a quantized engine,
            fp16/bf16 without CUDA), or an ``int8`` plan that does not fit the reader (:func:`quantize_int8`).
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    if precision == "int8":
        plan = int8 or Int8Plan()
        return quantize_int8(reader, plan.fp32_layers, plan.smoothing, plan.activations,
                             plan.outlier_channels).eval()
    return PRECISIONS[precision](reader).eval()
