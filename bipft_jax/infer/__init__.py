"""Packed 1-bit inference: bit packing, XNOR/AND-popcount matmuls, packed-model files.

* :mod:`.packing` — ``pack_signs``/``unpack_signs``, ``PackedSigns`` (sign plane + optional
  nonzero-mask plane, so ``sign(0) = 0`` stays exact), ``pack_matrix``.
* :mod:`.xnor` — ``xnor_matmul``, ``and_matmul`` (pure XLA, chunked K).
* :mod:`.native` — ``jax.ffi`` C++ CPU kernels (XNOR/AND GEMMs, sign packing), built on first use.
* :mod:`.kernels` — the XLA / native choice: ``binary_linear``, ``signed_matmul``,
  ``unsigned_matmul`` (float operands packed in-graph).
* :mod:`.fileformat` — ``save_packed``/``load_packed``/``packed_size_bytes`` (optional lossless
  float codec).
* :mod:`.packed_model` — ``pack_model``/``save_packed_model``/``load_packed_model`` (a whole
  binary BERT as one packed file), ``packed_bytes_estimate``; :mod:`.packed_forward` —
  ``packed_forward`` (its logits equal the fake-quant forward). Import them from their modules.
"""

from bipft_jax.infer.fileformat import load_packed, packed_size_bytes, save_packed
from bipft_jax.infer.kernels import binary_linear
from bipft_jax.infer.packing import PackedSigns, pack_matrix, pack_signs, unpack_signs
from bipft_jax.infer.xnor import and_matmul, xnor_matmul

__all__ = [
    "PackedSigns",
    "and_matmul",
    "binary_linear",
    "load_packed",
    "pack_matrix",
    "pack_signs",
    "packed_size_bytes",
    "save_packed",
    "unpack_signs",
    "xnor_matmul",
]
