"""`bipft convert`: import a reference PyTorch checkpoint (BiPFT, BiT or BiBERT) as our checkpoint.

    bipft convert --from bit path/to/run_dir --out /tmp/bit_sst2     # pytorch_model.bin + config
    bipft convert --from bipft bipft_b/model.safetensors --out /tmp/bipft_b --set num_heads=12

PATH is a directory (with `pytorch_model.bin` or `model.safetensors`, and usually the
reference's `config.json`) or the weights file itself. The model is the `--from` preset at the
checkpoint's sizes (from config.json, else from the tensor shapes; `--set` overrides any
`BertConfig` key) and the activation bits of config.json's `input_bits` (BiT's W1A2 stage =
preset `bit` with every activation binarizer, the pooler's included, at 2 bits). A state dict
with `classifier.*` becomes a `BertForSequenceClassification`, one with `cls.*` (BiPFT's
pretraining) a `BertForPreTraining`. Written: `OUT/checkpoints/0` (Orbax, `{"params": ...}`)
and `OUT/model_config.json`; `bipft finetune --config.init.kind=checkpoint
--config.init.path=OUT` and `bipft export --checkpoint OUT --preset ... --size base --set ...`
(the command is printed) read it, and `kd.teacher_path=OUT` uses it as a ready teacher.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bipft_jax.errors import CommandParser
from bipft_jax.model.reference_import import (
    REFERENCES,
    infer_sizes,
    strip_wrappers,
)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HF_KEYS = {"vocab_size": "vocab_size", "hidden_size": "hidden_size",
            "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
            "intermediate_size": "intermediate_size", "max_position": "max_position_embeddings",
            "type_vocab_size": "type_vocab_size", "layer_norm_eps": "layer_norm_eps"}  # fmt: skip


class ConvertError(ValueError):
    """A user error of `bipft convert`, reported as one message."""


def read_state(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(state dict as float32 arrays, the reference's config.json or {}) of a dir or file."""
    p = Path(path)
    if p.is_dir():
        found = [p / f for f in WEIGHT_FILES if (p / f).is_file()]
        if not found:
            raise FileNotFoundError(f"{p}: no {' or '.join(WEIGHT_FILES)}")
        weights, config_file = found[0], p / "config.json"
    elif p.is_file():
        weights, config_file = p, p.parent / "config.json"
    else:
        raise FileNotFoundError(f"reference checkpoint not found: {p}")
    try:
        hf_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    except json.JSONDecodeError as e:
        raise ConvertError(f"{config_file}:{e.lineno}: not valid JSON ({e.msg})") from e
    if weights.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            flat = load_file(str(weights))
        except Exception as e:  # safetensors' own error type: a damaged or foreign file
            raise ConvertError(f"cannot read {weights} as safetensors: {_first_words(e)}") from e
        return {k: np.asarray(v, np.float32) for k, v in flat.items()}, hf_config
    try:
        import torch
    except ImportError as e:
        raise ConvertError(
            f"{weights} is a PyTorch pickle; reading it needs torch (pip install torch)"
        ) from e
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of a file that is not a PyTorch checkpoint
        raise ConvertError(
            f"cannot read {weights} as a PyTorch checkpoint: {_first_words(e)}"
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {k: v.detach().float().numpy() for k, v in state.items()}, hf_config


def _first_words(e: Exception, limit: int = 160) -> str:
    """The first sentence of an exception, cut to ``limit`` characters (library messages run
    on)."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
    return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def model_overrides(kind: str, state: dict, hf_config: dict, sets: dict[str, Any]) -> dict:
    """`get_model_config(kind, "base", **overrides)` keys that describe this checkpoint."""
    from bipft_jax.model.presets import act_bits_overrides, get_model_config

    base = get_model_config(kind, "base")
    found: dict[str, Any] = {k: hf_config[h] for k, h in _HF_KEYS.items() if h in hf_config}
    sizes = {**infer_sizes(state), **found}
    sizes.setdefault("num_heads", max(sizes["hidden_size"] // 64, 1))  # BERT's head size 64
    out = {k: v for k, v in sizes.items() if getattr(base, k) != v}
    if hf_config.get("weight_bits", 1) != 1:
        raise ConvertError(f"config.json weight_bits={hf_config['weight_bits']}: only 1 bit")
    bits = int(hf_config.get("input_bits", 1))
    if bits != 1 and kind == "bibert":
        raise ConvertError(f"config.json input_bits={bits}: BiBERT checkpoints are W1A1 only")
    if bits != 1:
        out.update(act_bits_overrides(bits))
    act = hf_config.get("hidden_act")
    if kind != "bipft" and act in ("gelu", "relu") and act != base.hidden_act:
        out["hidden_act"] = act  # BiPFT hard-codes GELU whatever config.json says
    q_p = state.get("bert.encoder.layer.0.attention.self.q_p.weight")
    if kind == "bipft" and q_p is not None and q_p.shape[0] != 1:
        out["quant.estimators.rank"] = int(q_p.shape[0])  # binary_bert.py:181-185 lora_rank
    return {**out, **sets}


def _head(state: dict) -> tuple[str, int]:
    if "classifier.weight" in state:
        return "classification", int(np.shape(state["classifier.weight"])[0])
    if any(k.startswith("cls.") for k in state):
        return "pretraining", 0
    raise ConvertError("the state dict has no head: expected classifier.* or cls.* keys")


def convert(kind: str, path: str | Path, out: str | Path, sets: dict | None = None) -> dict:
    """Import, write `out/checkpoints/0` and `out/model_config.json`; returns the model card."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from bipft_jax.checkpoint import CheckpointManager
    from bipft_jax.checkpoint.model_card import write_model_card
    from bipft_jax.model.params import build_model
    from bipft_jax.model.presets import get_model_config
    from bipft_jax.model.reference_import import import_reference

    if kind not in REFERENCES:
        raise ConvertError(f"--from {kind!r}: choose one of {REFERENCES}")
    raw, hf_config = read_state(path)
    state = strip_wrappers(raw)
    overrides = model_overrides(kind, state, hf_config, dict(sets or {}))
    config = get_model_config(kind, "base", **overrides)
    head, num_labels = _head(state)
    model = build_model(config, head, max(num_labels, 1))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    variables, report = import_reference(kind, variables, state)
    params = jax.tree.map(np.asarray, nn.unbox(variables["params"]))
    flat = traverse_util.flatten_dict(params)
    alphas = [v for k, v in flat.items() if k[-1] == "alpha"]
    out = Path(out)
    sets_text = "".join(f" --set {k}={v}" for k, v in overrides.items())
    bits = int(hf_config.get("input_bits", 1))
    card = dict(
        preset=kind,
        stage=kind if bits == 1 else f"{kind}:a{bits}",
        size="base",
        overrides=overrides,
        head=head,
        source=str(Path(path).absolute()),
        dropped=report["dropped"],
        unset_alphas=int(sum(np.asarray(a) == 1.0 for a in alphas)),
        export=f"bipft export --checkpoint {out} --preset {kind} --size base{sets_text}",
    )
    with CheckpointManager(out, max_to_keep=1, async_save=False) as mngr:
        mngr.save(0, {"params": params}, {"converted_from": card["source"]}, force=True)
    write_model_card(out, config, num_labels, **card)
    return card


def main(argv: Sequence[str] | None = None) -> int:
    from bipft_jax.model.presets import parse_overrides

    p = CommandParser(prog="bipft convert", description=__doc__.split("\n")[0])
    p.add_argument("--from", dest="kind", required=True, choices=REFERENCES, help="reference code")
    p.add_argument("path", help="checkpoint directory or pytorch_model.bin / .safetensors file")
    p.add_argument("--out", required=True, help="output workdir (checkpoints/ + model card)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, e.g. --set num_heads=12")  # fmt: skip
    args = p.parse_args(list(argv or []))
    # User errors (ConvertError, ReferenceImportError, a missing file) propagate to the `bipft`
    # edge (bipft_jax/errors.py): one line, exit code 2.
    card = convert(args.kind, args.path, args.out, parse_overrides(args.set))
    print(f"bipft convert: wrote {card['head']} checkpoint to {args.out}")
    if card["unset_alphas"]:
        print(f"  note: {card['unset_alphas']} α equal 1.0 (never initialised by the reference)")
    print(f"  export:   {card['export']}")
    print(
        f"  finetune: --config.chain={card['stage']} --config.init.kind=checkpoint "
        f"--config.init.path={args.out}   (or --config.kd.teacher_path={args.out})"
    )
    return 0
