"""`model_config.json` beside a checkpoint: the model config, so the model can be rebuilt
without the run's config (pretraining workdirs, fine-tuning `best/` and `final/`, conversions)."""

from __future__ import annotations

import json
from pathlib import Path

from bipft_jax.model.config import BertConfig, from_config_dict, to_dict

MODEL_CARD = "model_config.json"


class ModelCardError(ValueError):
    """A missing or unreadable model card."""


def write_model_card(directory: str | Path, config: BertConfig, num_labels: int, **info) -> Path:
    """`<directory>/model_config.json` (`info`: extra JSON-able fields, e.g. the preset)."""
    path = Path(directory) / MODEL_CARD
    path.parent.mkdir(parents=True, exist_ok=True)
    card = {"model": to_dict(config), "num_labels": num_labels, **info}
    path.write_text(json.dumps(card, indent=2, sort_keys=True))
    return path


def read_model_card(directory: str | Path) -> tuple[BertConfig, int, dict]:
    """(config, num_labels, the whole card) of `write_model_card`."""
    path = Path(directory) / MODEL_CARD
    try:
        card = json.loads(path.read_text())
        return from_config_dict(card["model"]), int(card["num_labels"]), card
    except (OSError, KeyError, ValueError) as e:
        raise ModelCardError(f"model card {path} is missing or unreadable: {e}") from None


def find_model_card(path: str | Path) -> Path:
    """The directory holding the card of a checkpoint path (the path itself or its parent)."""
    for d in (Path(path), Path(path).parent):
        if (d / MODEL_CARD).is_file():
            return d
    raise ModelCardError(f"no {MODEL_CARD} in {path} or its parent")
