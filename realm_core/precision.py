"""The reader's numeric precision: what ``model.json``'s ``precision`` (or the ``precision`` setting) names.

- ``fp32``: float32 on the CPU, the default and the one REALM parity is tested in.
- ``int8``: dynamic int8 quantisation of every ``nn.Linear`` of the reader (weights int8 per output channel,
  activations quantised to 8 bits per tensor at each call; embeddings, LayerNorms, attention's softmax and the
  span head's sums stay float32), CPU only, through ``torch.ao.quantization.quantize_dynamic`` with
  :class:`Int8Linear`. That API warns that it is deprecated in favour of torchao;
  torchao 0.18's ``Int8DynamicActivationInt8WeightConfig`` ran 25× slower than it on this project's CPU
  (no int8 CPU kernel for that path), so the eager API stays until torchao has one (see bench/README.md).
- ``fp16``, ``bf16``: the reader in half precision on the first CUDA device.

Only the reader changes: the query embedder stays float32 so that questions meet the index built in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd

from realm_core.reader import SpanReader


class PrecisionError(ValueError):
    """A precision that is unknown or that this machine cannot run."""


def _fp32(reader: SpanReader) -> SpanReader:
    return reader.float()


class Int8Linear(nnqd.Linear):  # type: ignore[misc]
    """``quantize_dynamic``'s int8 Linear with activations quantised to all 8 bits.

    torch's own module calls ``quantized::linear_dynamic`` with ``reduce_range=True`` (7-bit activations, a
    guard against int16 overflow in fbgemm's AVX2 kernels). On the bundled reader that costs most of int8's
    disagreement with fp32: of 200 held-out questions read with their gold paragraph, 7-bit activations chose
    fp32's span for 163, 8-bit ones for 187, int8 weights with float32 activations for 197 (bench/README.md).

    forward: x (..., in_features) float32 → (..., out_features) float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
        return y.to(x.dtype)  # type: ignore[no-any-return]


def _int8(reader: SpanReader) -> SpanReader:
    if not set(torch.backends.quantized.supported_engines) - {"none"}:
        raise PrecisionError("int8 needs a quantized CPU engine (fbgemm/x86/qnnpack), which this torch lacks")
    # per-output-channel weight scales: on the bundled reader they kept more fp32 answers than one scale per
    # tensor (164 vs 156 of 200 gold-paragraph questions, 7-bit activations; bench/README.md)
    spec = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
    q = torch.ao.quantization.quantize_dynamic(reader.float(), spec, dtype=torch.qint8,
                                               mapping={nn.Linear: Int8Linear})
    return q  # type: ignore[no-any-return]


def _cuda(dtype: torch.dtype) -> Callable[[SpanReader], SpanReader]:
    def to(reader: SpanReader) -> SpanReader:
        if not torch.cuda.is_available():
            raise PrecisionError(f"{dtype} needs a CUDA device and torch sees none")
        return reader.to(device="cuda", dtype=dtype)

    return to


# precision name → how a float32 reader becomes one (eval mode kept).
PRECISIONS: dict[str, Callable[[SpanReader], SpanReader]] = {
    "fp32": _fp32,
    "int8": _int8,
    "fp16": _cuda(torch.float16),
    "bf16": _cuda(torch.bfloat16),
}


def apply_precision(reader: SpanReader, precision: str) -> SpanReader:
    """The reader in ``precision`` (the module may be changed in place).

    Raises:
        PrecisionError: an unknown precision, or one this machine cannot run (int8 without a quantized engine,
            fp16/bf16 without CUDA).
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    return PRECISIONS[precision](reader).eval()
