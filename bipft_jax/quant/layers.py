"""Flax Linen building blocks: `LearnableBias`, `ActQuantizer`, `BinaryDense`, α calibration."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import meta, unfreeze

from bipft_jax.quant.config import ActQuant, DenseQuant
from bipft_jax.quant.elastic import elastic_quantized, init_alpha
from bipft_jax.quant.product import Quantized, scaled_product
from bipft_jax.quant.ste import bool_ste, sign_ste
from bipft_jax.quant.weights import binarize_weight

Initializer = Callable[..., jax.Array]
CALIBRATION = "calibration"  # collection written by `calibrate_alphas`


def logical_param(
    module: nn.Module, name: str, init: Initializer, axes: tuple[str | None, ...], *shape_dtype: Any
) -> jax.Array:
    """`module.param` with logical axis names attached; returns the unboxed array."""
    value = module.param(name, nn.with_logical_partitioning(init, axes), *shape_dtype)
    return cast(jax.Array, value)


class LearnableBias(nn.Module):
    """Per-channel learnable shift β (init 0) over the last axis: BiT's `move`."""

    axis_name: str | None = "embed"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bias = logical_param(
            self,
            "bias",
            nn.initializers.zeros_init(),
            (self.axis_name,),
            (x.shape[-1],),
            self.param_dtype,
        )
        return x + bias.astype(x.dtype)


class ActQuantizer(nn.Module):
    """Binarizes (or k-bit quantizes) an activation tensor as `cfg` says.

    Elastic methods own a scalar param `alpha`, initialised at `init` from the real batch
    (2·mean|x| signed, 4·mean|x| unsigned, over √Qp for k bits) and stored in the params so it
    survives checkpoints. When the `calibration` collection is mutable, α is recomputed from the
    current input and used at once (see `calibrate_alphas`). With `parts=True` it returns a
    `Quantized` (value, integer codes, α) for products that apply the scale last.
    """

    cfg: ActQuant
    bias_axis: str | None = "embed"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, parts: bool = False) -> Any:
        cfg = self.cfg
        if not cfg.enabled:
            return Quantized.plain(x) if parts else x
        if cfg.learnable_bias:
            x = LearnableBias(self.bias_axis, self.param_dtype, name="shift")(x)
        if cfg.method in ("sign", "bool"):
            binarize = sign_ste if cfg.method == "sign" else bool_ste
            y = binarize(x, cfg.ste, cfg.clip, cfg.clip_inclusive)
            return Quantized.plain(y) if parts else y
        signed = cfg.method == "elastic_signed"
        data_init = lambda _rng: init_alpha(x, cfg.bits, signed).astype(self.param_dtype)
        alpha = logical_param(self, "alpha", data_init, ())
        if self.is_mutable_collection(CALIBRATION) and not self.is_initializing():
            calibrated = self.variable(CALIBRATION, "alpha", data_init, None)
            calibrated.value = data_init(None)
            alpha = calibrated.value
        q = elastic_quantized(x, alpha, cfg.bits, signed, cfg.numel_multiplier, cfg.shift_min)
        return q if parts else q.value


class BinaryDense(nn.Module):
    """A dense layer whose weight and input binarizers are injected by `quant`.

    Written once: FP, BiBERT, BiT and BiPFT linears differ only in `quant`. The kernel is
    `[in, out]` with logical axes `kernel_axes`; binarization statistics are computed in the
    parameter dtype (fp32), the matmul in `dtype`. A binary kernel is multiplied as integer codes
    first, then `· m · α` (`quant/product.py`): exact, independent of the batch shape, and in the
    packed path's order; gradients are those of `x̂ · Ŵ`.
    """

    features: int
    quant: DenseQuant = DenseQuant()
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.normal(stddev=0.02)
    bias_init: Initializer = nn.initializers.zeros_init()
    kernel_axes: tuple[str | None, str | None] = ("embed", "mlp")
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = logical_param(
            self,
            "kernel",
            self.kernel_init,
            self.kernel_axes,
            (x.shape[-1], self.features),
            self.param_dtype,
        )
        xq = ActQuantizer(
            self.quant.input, self.kernel_axes[0], self.param_dtype, name="input_quant"
        )(x, parts=True)
        wq = binarize_weight(kernel, self.quant.weight, contract_axis=0)
        bias = None
        if self.use_bias:
            bias = logical_param(
                self,
                "bias",
                self.bias_init,
                (self.kernel_axes[1],),
                (self.features,),
                self.param_dtype,
            )
        x, kernel, bias = nn.dtypes.promote_dtype(xq.value, wq.value, bias, dtype=self.dtype)
        dims = (((x.ndim - 1,), (0,)), ((), ()))
        product = _dot_product(dims, self.precision)
        if wq.codes is None or wq.scale is None:
            y = product(x, kernel, None)
        else:
            scales = (wq.scale.reshape(wq.scale.shape[1:]),) + (
                () if xq.scale is None else (xq.scale,)
            )
            y = scaled_product(product, Quantized(x, xq.codes), Quantized(kernel, wq.codes), scales)
        if bias is not None:
            y = y + bias
        return y


@functools.cache
def _dot_product(dims, precision):
    """`dot_general` over `dims` as one function object (a static argument of the custom VJP)."""

    def product(x, y, preferred):
        return jax.lax.dot_general(
            x, y, dims, precision=precision, preferred_element_type=preferred
        )

    return product


def calibrate_alphas(model: nn.Module, variables: Any, *args: Any, **kwargs: Any) -> dict:
    """Recompute every elastic α from data, in forward order (the references' lazy init).

    Use it after loading FP weights into a binary student: each quantizer takes α from its own
    input, and later layers already see the recalibrated earlier layers. Returns new variables.
    Models that `nn.scan` over layers must list the `calibration` collection in `variable_axes`.
    """
    new = {k: v for k, v in unfreeze(variables).items() if k != CALIBRATION}
    _, updates = model.apply(new, *args, mutable=[CALIBRATION], **kwargs)
    calibrated = unfreeze(updates).get(CALIBRATION, {})

    def merge(params: dict, cal: dict, path: str) -> None:
        for key, value in cal.items():
            if key not in params:
                raise KeyError(f"calibration produced {path}/{key}, which is not in the params")
            if isinstance(value, dict):
                merge(params[key], value, f"{path}/{key}")
            else:
                old = params[key]
                if isinstance(old, meta.Partitioned):
                    params[key] = old.replace_boxed(jnp.asarray(value, old.value.dtype))
                else:
                    params[key] = jnp.asarray(value, jnp.asarray(old).dtype)

    merge(new["params"], calibrated, "params")
    return new
