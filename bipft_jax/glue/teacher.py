"""A ready fine-tuned KD teacher, used as is (classifier included), and how it is run.

BiT and BiBERT distil from a task checkpoint that is already fine-tuned (BiT: textattack
`bert-base-uncased-<task>`, `run_glue.sh:10-11`; BiBERT: DynaBERT task models) and never
re-train it. `load_teacher(path, num_labels)` accepts:
  - a Hugging Face `BertForSequenceClassification` directory (config.json + safetensors or
    pytorch_model.bin): an FP teacher with its pooler and classifier;
  - a directory with Orbax `checkpoints/` and a `model_config.json` (`write_model_card`; e.g.
    the output of `bipft convert`, a reference binary checkpoint);
  - a `bipft finetune` stage directory `<workdir>/<i>_<stage>` or its `best/` / `final/`
    (the model config comes from the stage name and `<workdir>/config.json`).
The label order must be the task's order in `bipft_jax.data.glue` (TinyBERT/BiT's); a teacher
trained with another order gives meaningless soft labels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bipft_jax.checkpoint import ParamsMismatchError, restore_params, transfer_params
from bipft_jax.checkpoint.model_card import MODEL_CARD, ModelCardError, read_model_card
from bipft_jax.glue.init import InitError, parse_stage, stage_model_config
from bipft_jax.model.bert import BertForSequenceClassification
from bipft_jax.model.config import BertConfig
from bipft_jax.model.hf_import import bert_config_from_hf, import_hf_weights, read_hf_checkpoint

_STAGE_SUBDIRS = ("best", "final")


@dataclasses.dataclass
class Teacher:
    model: BertForSequenceClassification
    params: dict
    description: str


def _stage_config(stage_dir: Path) -> BertConfig:
    """The model config of a `bipft finetune` stage directory `<workdir>/<i>_<stage>`."""
    from bipft_jax.train.config_io import load_saved_config

    index, sep, name = stage_dir.name.partition("_")
    if not (sep and index.isdigit()):
        raise InitError(f"teacher {stage_dir}: not a `bipft finetune` stage dir (<i>_<stage>)")
    method, _, bits = name.rpartition("_a")
    spec = f"{method}:a{bits}" if method and bits.isdigit() else name
    run = load_saved_config(stage_dir.parent / "config.json")
    return stage_model_config(run, parse_stage(spec))


def _checkpoint_source(root: Path) -> tuple[Path, BertConfig, int | None]:
    """(dir holding `checkpoints/`, its model config, num_labels if the card says)."""
    if (root / "checkpoints").is_dir() and (root / MODEL_CARD).is_file():
        try:
            config, num_labels, _ = read_model_card(root)
        except ModelCardError as e:
            raise InitError(f"teacher {root}: {e}") from None
        return root, config, num_labels
    if (root / "checkpoints").is_dir() and root.name in _STAGE_SUBDIRS:
        return root, _stage_config(root.parent), None
    if (root / "best" / "checkpoints").is_dir():
        return _checkpoint_source(root / "best")
    raise InitError(
        f"teacher {root}: neither a Hugging Face directory (config.json) nor a checkpoint "
        f"directory (checkpoints/ with {MODEL_CARD}, or a `bipft finetune` stage dir)"
    )


def _init(model: BertForSequenceClassification) -> dict:
    ids = jnp.zeros((1, 8), jnp.int32)
    return jax.tree.map(np.asarray, nn.unbox(model.init(jax.random.PRNGKey(0), ids)["params"]))


def load_teacher(path: str | Path, num_labels: int) -> Teacher:
    """The ready teacher at `path` (see the module docstring), checked against `num_labels`."""
    root = Path(path)
    if not root.is_dir():
        raise InitError(f"config key 'kd.teacher_path': directory not found: {root}")
    if (root / "config.json").is_file() and not (root / "checkpoints").is_dir():
        hf_cfg, state = read_hf_checkpoint(root)
        if hf_cfg.get("weight_bits", 32) < 32 or hf_cfg.get("input_bits", 32) < 32:
            raise InitError(
                f"teacher {root} is a quantized reference checkpoint; import it with "
                "`bipft convert --from bit|bipft|bibert` and pass the converted directory"
            )
        model = BertForSequenceClassification(bert_config_from_hf(hf_cfg), num_labels=num_labels)
        try:
            variables, _ = import_hf_weights(
                {"params": _init(model)}, state, ignore_unexpected=("cls.",)
            )
        except ValueError as e:
            raise InitError(f"teacher {root}: {e}") from None
        return Teacher(model, variables["params"], f"hf:{root}")
    ckpt_dir, config, card_labels = _checkpoint_source(root)
    if card_labels is not None and card_labels != num_labels:
        raise InitError(f"teacher {root} has {card_labels} labels; the task has {num_labels}")
    model = BertForSequenceClassification(config, num_labels=num_labels)
    try:  # exactly the model's params, nothing missing or left over
        params, _ = transfer_params(_init(model), restore_params(ckpt_dir),
                                    what=f"teacher checkpoint {ckpt_dir}", strict=True,
                                    names=("model config", "checkpoint"))  # fmt: skip
    except ParamsMismatchError as e:
        raise InitError(str(e)) from None
    return Teacher(model, params, f"checkpoint:{ckpt_dir}")


def apply_teacher(
    model: BertForSequenceClassification,
    params: Any,
    batch: dict,
    *,
    dropout: bool,
    rng: jax.Array | None = None,
    return_intermediates: bool = False,
) -> dict:
    """The teacher's outputs on a batch, in train mode (`dropout`, config key
    `kd.teacher_dropout`; BiT runs its teacher so, `kd_learner_glue.py:157`) or in eval mode
    (BiBERT, `quant_task_glue.py:405`)."""
    rngs: dict[str, jax.Array] = {}
    if dropout:
        if rng is None:
            raise ValueError("apply_teacher: dropout=True needs an rng")
        rngs["dropout"] = rng
    out = model.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        deterministic=not dropout,
        return_intermediates=return_intermediates,
        rngs=rngs,
    )
    return cast(dict, out)
