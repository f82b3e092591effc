"""`bipft export`: write a checkpoint as a Hugging Face model, a binary-latent export for the
shipped PyTorch module, a packed 1-bit model (`bipft_jax.infer`), or a jax.export (StableHLO)
artifact.

    bipft export --format hf --checkpoint runs/fp --preset fp --size base --out out/hf
    bipft export --format binary --params params.msgpack --preset bipft --size tiny --out out/bin
    bipft export --format packed --params params.msgpack --preset bibert --size base --out out/p
    bipft export --format stablehlo --hf-dir minilm/ --seq-len 128 --out out/hlo

Sources: `--checkpoint WORKDIR` (an Orbax checkpoint from `bipft_jax.checkpoint`; its state
holds `params`), `--params FILE` (`.msgpack` from `flax.serialization` or `.safetensors` with
"/"-joined param paths) or `--hf-dir DIR` (a Hugging Face BERT directory). The model config is
`--preset/--size` (+ `--set key=value`), or the `model_config.json` that `bipft pretrain`,
`bipft finetune` and `bipft convert` write beside their checkpoints, or, for `--hf-dir`, its
`config.json`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bipft_jax.errors import CommandParser, UserError, one_line

FORMATS = ("hf", "binary", "packed", "stablehlo")
HF_MLM_ARCHS = ("BertForMaskedLM", "BertForPreTraining")


class CliError(UserError):
    """A user error reported as one line."""


def _parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="bipft export", description=__doc__.split("\n\n")[0])
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="training workdir with Orbax checkpoints/")
    src.add_argument("--params", help="params file (.msgpack or .safetensors)")
    src.add_argument("--hf-dir", help="Hugging Face BERT model directory")
    p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    p.add_argument("--preset", help="method preset: fp, bibert, bit, bipft")
    p.add_argument("--size", help="size preset: tiny, mini, small, base, large")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set vocab_size=1000 (JSON values)",
    )
    p.add_argument("--out", required=True, help="output directory (file for stablehlo)")
    p.add_argument("--vocab", help="vocab.txt to copy (hf)")
    p.add_argument("--max-shard-size", default="2GB", help="hf shard size (e.g. 2GB, 500MB)")
    p.add_argument("--seq-len", type=int, default=128, help="stablehlo sequence length")
    p.add_argument("--batch-size", type=int, help="stablehlo batch size (default: symbolic)")
    p.add_argument(
        "--container",
        choices=("jax", "bipft"),
        default="jax",
        help="stablehlo file: jax.export.serialize() + .sha256 (default) or bipft's container",
    )
    p.add_argument(
        "--params-as-argument",
        action="store_true",
        help="stablehlo: take params as the first argument instead of baking them in",
    )
    p.add_argument(
        "--float16",
        default=None,
        choices=("none", "pos_type", "fp"),
        help="packed: store position/token-type tables (pos_type) or every FP tensor (fp) as "
        "fp16 (default: pos_type if the model has quant.table_storage=float16, else none)",
    )
    p.add_argument(
        "--all-1bit",
        action="store_true",
        help="packed: also binarize the position/token-type tables (changes the model)",
    )
    p.add_argument(
        "--compress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="packed: store the float tensors losslessly compressed (byte shuffle + xz; "
        "default on; the sign words are random bits and stay raw)",
    )
    return p


def _preset_config(args: argparse.Namespace) -> Any:
    """The model config: `--preset/--size` (+ `--set`), else a `--checkpoint`'s model card."""
    from bipft_jax.model.presets import apply_overrides, get_model_config, parse_overrides

    if args.preset and args.size:
        return get_model_config(args.preset, args.size, **parse_overrides(args.set))
    if args.checkpoint:
        from bipft_jax.checkpoint.restore import CheckpointNotFoundError, run_dir

        try:
            run_dir(args.checkpoint)
        except CheckpointNotFoundError as e:
            raise CliError(f"--checkpoint: {e}") from None
    if args.checkpoint and not (args.preset or args.size):
        from bipft_jax.checkpoint.model_card import (
            ModelCardError,
            find_model_card,
            read_model_card,
        )

        try:
            config, _, card = read_model_card(find_model_card(args.checkpoint))
        except ModelCardError as e:
            raise CliError(f"{e}: pass --preset and --size") from None
        args.preset = card.get("preset") or card.get("stage")  # recorded in the manifest
        return apply_overrides(config, list(args.set)) if args.set else config
    raise CliError(
        "--preset and --size are required with --params (and with a --checkpoint without "
        "model_config.json)"
    )


def load_checkpoint_params(workdir: str, step: int | None = None) -> Any:
    """The params of a checkpoint written by `bipft_jax.checkpoint` (only they are read), as
    numpy arrays, so a checkpoint written on another topology loads in this process."""
    from bipft_jax.checkpoint import restore_params

    return restore_params(workdir, step)


def load_params_file(path: str) -> Any:
    """Params from `.msgpack` (flax.serialization) or `.safetensors` ("/"-joined paths)."""
    f = Path(path)
    if not f.is_file():
        raise CliError(f"params file not found: {f}")
    if f.suffix == ".msgpack":
        from flax import serialization

        try:
            tree = _unbox_state_dict(serialization.msgpack_restore(f.read_bytes()))
        except Exception as e:  # msgpack's errors of a damaged or foreign file
            raise CliError(f"cannot read params file {f} as msgpack: {one_line(e)}") from e
        return tree.get("params", tree) if isinstance(tree, Mapping) else tree
    if f.suffix == ".safetensors":
        from flax import traverse_util
        from safetensors.numpy import load_file

        try:
            flat = load_file(str(f))
        except Exception as e:  # safetensors' own error type
            raise CliError(f"cannot read params file {f} as safetensors: {one_line(e)}") from e
        tree = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
        return tree.get("params", tree)
    raise CliError(f"unsupported params file {f}: use .msgpack or .safetensors")


def _unbox_state_dict(tree: Any) -> Any:
    """Replace the ``{"value": array}`` nodes that ``flax.serialization.to_bytes`` writes for
    boxed params (``nn.Partitioned`` straight from ``model.init``) by the arrays themselves."""
    if not isinstance(tree, Mapping):
        return tree
    if set(tree) == {"value"} and not isinstance(tree["value"], Mapping):
        return tree["value"]
    return {k: _unbox_state_dict(v) for k, v in tree.items()}


def load_hf_dir(args: argparse.Namespace) -> tuple[Any, Any]:
    """(params, config) from a Hugging Face directory (FP, or a preset initialised from it)."""
    import jax
    import jax.numpy as jnp

    from bipft_jax.export.hf import binary_features
    from bipft_jax.model.hf_import import bert_config_from_hf, import_hf_weights, read_hf_checkpoint
    from bipft_jax.model.params import build_model

    try:
        hf_cfg, state = read_hf_checkpoint(args.hf_dir)
    except FileNotFoundError as e:
        raise CliError(str(e)) from e
    config = _preset_config(args) if args.preset else bert_config_from_hf(hf_cfg)
    if binary_features(config):
        raise CliError(
            f"--hf-dir gives FP weights only; preset {args.preset!r} needs calibrated α/β "
            "(initialise the student with `bipft pretrain`/`finetune`, then export its checkpoint)"
        )
    arch = (hf_cfg.get("architectures") or ["BertModel"])[0]
    keys = {k.removeprefix("bert.") for k in state}
    if "classifier.weight" in keys:
        head, num_labels = (
            "classification",
            int(state[_bert_key(state, "classifier.weight")].shape[0]),
        )
    elif arch in HF_MLM_ARCHS or "cls.predictions.bias" in keys:
        head, num_labels = "pretraining", 0
    else:
        head, num_labels = "base", 0
    model = build_model(config, head, max(num_labels, 1))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    missing = ("seq_relationship", "bert/pooler") if head == "pretraining" else ()
    variables, _ = import_hf_weights(variables, state, ignore_missing=missing)
    return variables["params"], config


def hf_vocab(args: argparse.Namespace, vocab_size: int) -> str:
    """The vocab.txt of an `--format hf` export: `--vocab`; else the `--hf-dir`'s own, or the one
    the `--checkpoint` run's config.json names ("" there: the default BERT vocab it used). Without
    one the model directory would tokenize with 5 tokens, so that is an error."""
    if args.vocab:
        return args.vocab
    src = Path(args.checkpoint or args.hf_dir or args.params)
    for d in [src, *src.parents][:3]:
        if args.hf_dir and (d / "vocab.txt").is_file():
            return str(d / "vocab.txt")
        if args.checkpoint and (d / "config.json").is_file():
            run = json.loads((d / "config.json").read_text())
            named = run.get("vocab_file", (run.get("data") or {}).get("vocab_file"))
            if named is not None:
                from bipft_jax import paths

                return named or str(paths.default_vocab_file())
    raise CliError(
        f"--format hf needs the model's vocabulary ({vocab_size} tokens): pass --vocab vocab.txt"
    )


def _bert_key(state: Mapping[str, Any], name: str) -> str:
    return name if name in state else f"bert.{name}"


def main(argv: list[str] | None = None) -> int:
    # User errors propagate to the `bipft` edge (bipft_jax/errors.py): one line, exit code 2.
    return _run(_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    if args.hf_dir:
        params, config = load_hf_dir(args)
    else:
        config = _preset_config(args)
        if args.checkpoint:
            params = load_checkpoint_params(args.checkpoint, args.step)
        else:
            params = load_params_file(args.params)
    out = Path(args.out)
    if args.format == "hf":
        from bipft_jax.export.hf import export_hf

        vocab = hf_vocab(args, config.vocab_size)
        written = export_hf(params, config, out, vocab, args.max_shard_size)
    elif args.format == "binary":
        from bipft_jax.export.binary import export_binary

        written = export_binary(params, config, out, preset=args.preset, size=args.size)
    elif args.format == "packed":
        from bipft_jax.infer.packed_model import pack_model, save_packed_model

        tensors, manifest = pack_model(
            params,
            config,
            preset=args.preset,
            size=args.size,
            float16=args.float16,
            all_1bit=args.all_1bit,
        )
        written = save_packed_model(out, tensors, manifest, compress=args.compress)
    else:
        from bipft_jax.export.stablehlo import export_inference, save_exported

        exp = export_inference(
            params, config, args.seq_len, args.batch_size, args.params_as_argument
        )
        written = save_exported(exp, out, args.container)
    print(f"bipft export: wrote {args.format} to {written}")
    return 0
