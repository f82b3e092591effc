"""Small building blocks shared by the BERT modules: activations, LayerNorm, dense, embedding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bipft_jax.model.config import BertConfig
from bipft_jax.quant import BinaryDense, DenseQuant, WeightQuant, quantize_weight

_SQRT_HALF = 0.7071067811865476


def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU written as Hugging Face / PyTorch write it: ``x/2 · (1 + erf(x/√2))``.

    Same function as ``nn.gelu(approximate=False)`` (which uses ``erfc``), but XLA:CPU lowers
    ``erf`` to a rational polynomial while ``erfc`` needs ``exp``: ~10% of a MiniLM training
    step (measured, ``benchmarks/train_vs_torch.py``).
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype)))


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """ "gelu" is the exact erf GELU (as Hugging Face BERT); "gelu_tanh" the tanh approximation."""
    if name == "gelu":
        return gelu_erf
    if name == "gelu_tanh":
        return lambda x: nn.gelu(x, approximate=True)
    if name == "relu":
        return nn.relu
    raise ValueError(f"unknown activation {name!r}; expected 'gelu', 'gelu_tanh' or 'relu'")


def round_to_storage(x: jax.Array, storage: str) -> jax.Array:
    """``x`` rounded to the ``storage`` dtype and back, with an identity (straight-through)
    gradient. ``x + (r - x)`` equals ``r`` exactly: ``r - x`` is exact (Sterbenz), so is the sum."""
    if storage == "float32":
        return x
    rounded = x.astype(jnp.dtype(storage)).astype(x.dtype)
    return x + jax.lax.stop_gradient(rounded - x)


class Dropout(nn.Module):
    """Inverted dropout drawing 16-bit uniforms, two per 32-bit random word.

    ``flax.linen.Dropout`` draws one 32-bit threefry word per element; on a 2-core CPU the
    attention-probability masks alone were ~15% of a MiniLM training step. Two 16-bit halves per
    word halve that work. The drop probability is ``round(rate·2¹⁶)/2¹⁶`` (0.1 → 0.100006) and
    kept values are scaled by the exact keep probability, so the layer stays unbiased. Leading
    dimensions keep their shape, so the mask is generated sharded like ``x``.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        threshold = round(self.rate * 65536)
        keep_prob = 1.0 - threshold / 65536
        last = x.shape[-1]
        words = jax.random.bits(self.make_rng("dropout"), (*x.shape[:-1], (last + 1) // 2))
        halves = jax.lax.bitcast_convert_type(words, jnp.uint16)  # [..., words, 2]
        u16 = halves.reshape(*x.shape[:-1], -1)[..., :last]
        keep = u16 >= jnp.uint16(threshold)
        return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))


class LayerNorm(nn.Module):
    """LayerNorm over the last axis (params `scale`, `bias`, as `flax.linen.LayerNorm`), whose
    every row is independent of the batch shape.

    `nn.LayerNorm` rounds differently with the batch shape on XLA:CPU (measured: 26% of rows of
    `rsqrt(σ² + ε)` change in their last bits between a [64, 32] and a [128, 128] batch, and
    the mean changes where XLA fuses it with what follows). A binary model amplifies one
    flipped sign into whole points of accuracy. Here the mean and `sqrt(σ² + ε)` sit behind
    optimization barriers, and the normalisation is an IEEE division that XLA cannot rewrite
    into `rsqrt`. The packed inference path uses the same function (`normalize`). Measured on
    the GLUE study's trained models: outputs identical across batch shapes and to the packed
    path's (tests/quant/test_product.py checks the shapes on random models).
    """

    epsilon: float = 1e-12
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Callable[..., Any] = nn.initializers.ones
    bias_init: Callable[..., Any] = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        y = normalize(x, jnp.asarray(scale), jnp.asarray(bias), self.epsilon)
        return y.astype(self.dtype or x.dtype)


def normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """`(x - μ) / sqrt(σ² + ε) · scale + bias` over the last axis, in float32 (see `LayerNorm`)."""
    xf = x.astype(jnp.float32)
    mean = jax.lax.optimization_barrier(jnp.mean(xf, axis=-1, keepdims=True))
    centred = xf - mean
    var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    std = jax.lax.optimization_barrier(jnp.sqrt(var + epsilon))
    return centred / std * scale.astype(jnp.float32) + bias.astype(jnp.float32)


def layer_norm(config: BertConfig, name: str, axis: str = "embed") -> LayerNorm:
    """Post-LN LayerNorm with logical axis names; statistics are computed in float32."""
    return LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis,)),
        name=name,
    )


def dense(
    config: BertConfig,
    features: int,
    quant: DenseQuant,
    kernel_axes: tuple[str, str],
    name: str,
    use_bias: bool = True,
) -> BinaryDense:
    """A (possibly binary) linear; with `DenseQuant()` it is a plain FP dense layer."""
    return BinaryDense(
        features=features,
        quant=quant,
        use_bias=use_bias,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=nn.initializers.normal(config.initializer_range),
        kernel_axes=kernel_axes,
        name=name,
    )


class QuantEmbed(nn.Module):
    """Embedding table `[num_embeddings, features]` with an optional weight binarizer.

    `__call__` looks ids up in the binarized table; `attend` uses the *latent* FP table (the MLM
    decoder of BiPFT is tied to it, methods.md §1.1).
    """

    num_embeddings: int
    features: int
    quant: WeightQuant = WeightQuant(channel_axis=0)
    axes: tuple[str, str] = ("vocab", "embed")
    init_std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    storage: str = "float32"  # lookups see the table rounded to this dtype (straight-through)

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(self.init_std), self.axes),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        table = round_to_storage(quantize_weight(self.embedding, self.quant), self.storage)
        return jnp.take(table, ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        table = jnp.asarray(self.embedding, self.dtype)
        return jnp.einsum("...e,ve->...v", x.astype(self.dtype), table)


class DenseResidualNorm(nn.Module):
    """Output block: dense (quant `config.quant.<quant_field>`), dropout, residual, LayerNorm.

    Serves both `attention.output` (input over heads) and the FFN `output` (input over mlp).
    """

    config: BertConfig
    quant_field: str
    in_axis: str
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array) -> jax.Array:
        cfg = self.config
        quant = getattr(cfg.quant, self.quant_field)
        x = dense(cfg, cfg.hidden_size, quant, (self.in_axis, "embed"), "dense")(x)
        x = Dropout(cfg.hidden_dropout)(x, deterministic=self.deterministic)
        return layer_norm(cfg, "LayerNorm")(x + residual)
