"""`bipft stats`: parameters, sizes and FLOPs of a model config, counted from its parameter tree.

Conventions (methods.md §7, performance.md §4):
- sizes in MiB (2**20 bytes); "packed" = the preset's binarized matrices at 1 bit per entry,
  every other parameter (position/type embeddings, LayerNorm, biases, α, β, estimators) FP32
  (position/type tables 16-bit under ``quant.table_storage``);
  "all matrices 1-bit" also packs position/type embeddings; "floor" packs every parameter.
  Per-channel/per-tensor scales are derived from the latent weights and listed separately.
- FLOPs = 2·MAC of every matmul (linears, QKᵀ, P·V, estimators), batch 1, sequence `seq`.
  Under the papers' convention a binary (W1A1 / 1-bit × 1-bit) matmul costs 1/64, and the FP
  leftovers are counted per element: LayerNorm 5, softmax 3, activation 1, bias/residual add 1,
  embedding sum 2. "Binary MACs" are the real XNOR/AND-popcount bit-pair operations.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax.numpy as jnp
from flax import traverse_util

from bipft_jax.errors import CommandParser
from bipft_jax.model.config import BertConfig, QuantSpec
from bipft_jax.model.params import (
    abstract_params,
    dense_quant,
    num_scales,
    param_kind,
    weight_quant,
)
from bipft_jax.model.presets import METHODS, SIZES, get_model_config, parse_overrides

MIB = 2**20


def param_shapes(config: BertConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {path: shape} of `BertModel(config)` (no heads), via `jax.eval_shape` (no memory)."""
    flat = traverse_util.flatten_dict(abstract_params(config, "base"))
    return {path: tuple(v.shape) for path, v in flat.items()}


def size_report(config: BertConfig) -> dict[str, Any]:
    """Parameter counts and byte sizes (see module docstring)."""
    shapes = param_shapes(config)
    counts: dict[str, int] = {}
    binary_bits = fp_params = scales = 0
    for path, shape in shapes.items():
        kind, n, wq = param_kind(path), math.prod(shape), weight_quant(path, config)
        counts[kind] = counts.get(kind, 0) + n
        if wq is not None:
            binary_bits += n
            scales += num_scales(wq, shape)
        else:
            fp_params += n
    total = sum(counts.values())
    student_only = counts.get("estimator", 0) + counts.get("quantizer", 0)
    matrices = (
        counts.get("word_embedding", 0)
        + counts.get("pos_type_embedding", 0)
        + counts.get("encoder_kernel", 0)
        + counts.get("pooler_kernel", 0)
    )
    # 16-bit table storage (quant.table_storage) saves 2 of the 4 bytes per pos/type entry.
    table_saving = 2 * counts.get("pos_type_embedding", 0)
    packed = binary_bits / 8 + fp_params * 4
    if config.quant.table_storage != "float32":
        packed -= table_saving
    all_matrices = matrices / 8 + (total - matrices) * 4
    fp32 = total * 4
    return {
        "params": total,
        "params_backbone": total - student_only,
        "params_by_kind": counts,
        "fp32_mib": fp32 / MIB,
        "packed_mib": packed / MIB,
        "packed_ratio": fp32 / packed,
        "scales": scales,
        "packed_with_scales_mib": (packed + 4 * scales) / MIB,
        "all_matrices_1bit_mib": all_matrices / MIB,
        "all_matrices_1bit_ratio": fp32 / all_matrices,
        "floor_1bit_mib": total / 8 / MIB,
    }


def flops_report(config: BertConfig, seq: int = 128) -> dict[str, Any]:
    """FP and binary-convention FLOPs of one sequence of length `seq` (batch 1)."""
    spec, h = config.quant, config.hidden_size
    bin_mac = fp_mac = 0
    for path, shape in param_shapes(config).items():
        kind = param_kind(path)
        if path[-1] != "kernel":
            continue
        tokens = 1 if kind == "pooler_kernel" else seq
        mac = tokens * math.prod(shape)
        if kind == "estimator":
            fp_mac += mac
            continue
        q = dense_quant(path, config)
        if q.weight.enabled and q.input.enabled:
            bin_mac += mac
        else:
            fp_mac += mac
    layers, heads = config.num_layers, config.num_heads
    attn_mac = layers * seq * seq * h  # QKᵀ (and the same again for P·V)
    qk_binary = spec.qkv.enabled
    pv_binary = spec.qkv.enabled and spec.probs.enabled
    bin_mac += attn_mac * (qk_binary + pv_binary)
    fp_mac += attn_mac * ((not qk_binary) + (not pv_binary))
    est = spec.estimators
    if est.enabled:  # 3 outer products of rank r per group, and P·r_v per head
        groups = heads if est.per_head else 1
        fp_mac += layers * (3 * seq * seq * est.rank * groups + seq * seq * heads)
    # FP elementwise leftovers (per element): LayerNorm 5, softmax 3, activation 1, adds 1.
    tok = seq * h
    per_layer = 2 * 5 * tok + seq * (4 * h + 2 * config.intermediate_size)
    per_layer += 2 * tok + seq * config.intermediate_size
    if spec.attention == "softmax":
        per_layer += 3 * heads * seq * seq
    leftovers = layers * per_layer + (2 + 5) * tok
    fp_flops = 2 * (bin_mac + fp_mac)
    convention = 2 * bin_mac / 64 + 2 * fp_mac + leftovers
    if spec == QuantSpec():
        reference = fp_flops + leftovers
    else:  # ratio against the FP model of the same size (no estimators, softmax attention)
        fp_model = flops_report(dataclasses.replace(config, quant=QuantSpec()), seq)
        reference = fp_model["flops_binary_convention"]
    return {
        "seq": seq,
        "flops_fp": fp_flops,
        "binary_macs": bin_mac,
        "fp_macs": fp_mac,
        "fp_leftover_flops": leftovers,
        "flops_binary_convention": convention,
        "convention_ratio": reference / convention,
    }


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="bipft stats", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bipft", choices=METHODS)
    parser.add_argument("--size", default="base", choices=SIZES)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set quant.estimators.rank=4 --set num_layers=6",
    )
    args = parser.parse_args(argv)
    if args.seq < 1:
        parser.error(f"argument --seq: expected a positive sequence length, got {args.seq}")
    try:
        config = get_model_config(args.preset, args.size, **parse_overrides(args.set))
    except ValueError as e:
        parser.error(str(e))
    result = {
        "preset": args.preset,
        "size": args.size,
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "quant"}
        | {
            "dtype": str(jnp.dtype(config.dtype)),
            "param_dtype": str(jnp.dtype(config.param_dtype)),
        },
        **size_report(config),
        **flops_report(config, args.seq),
    }
    if args.json:
        print(json.dumps(result, indent=1, default=str))
        return 0
    r = result
    print(f"{args.preset} @ {args.size} (seq {args.seq}, batch 1)")
    print(
        f"  parameters            {r['params']:,} "
        f"(without α, β, estimators: {r['params_backbone']:,})"
    )
    print(f"  FP32 size             {r['fp32_mib']:.2f} MiB")
    print(
        f"  packed (keep-in-FP)   {r['packed_mib']:.2f} MiB ({r['packed_ratio']:.1f}x); "
        f"+ {r['scales']:,} FP32 scales = {r['packed_with_scales_mib']:.2f} MiB"
    )
    print(
        f"  all matrices 1-bit    {r['all_matrices_1bit_mib']:.2f} MiB "
        f"({r['all_matrices_1bit_ratio']:.1f}x); floor {r['floor_1bit_mib']:.2f} MiB"
    )
    print(f"  FLOPs FP              {r['flops_fp'] / 1e9:.2f} G")
    conv, left = r["flops_binary_convention"] / 1e9, r["fp_leftover_flops"] / 1e9
    print(
        f"  FLOPs (binary = 1/64) {conv:.3f} G "
        f"({r['convention_ratio']:.1f}x; FP leftovers {left:.3f} G)"
    )
    print(
        f"  binary MACs           {r['binary_macs'] / 1e9:.2f} G; "
        f"FP MACs {r['fp_macs'] / 1e9:.3f} G"
    )
    return 0
