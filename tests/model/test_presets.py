"""Presets ship inside the package; `apply_overrides` validates every key against the config."""

import dataclasses

import ml_collections
import pytest

from bipft_jax.model.config import BertConfig
from bipft_jax.model.presets import (
    CONFIG_DIR_ENV,
    METHODS,
    SIZES,
    apply_overrides,
    get_model_config,
)

BERT_SIZES = {  # (layers, hidden, heads, ffn) of the published BERT / TinyBERT-style sizes
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


@pytest.mark.parametrize("size", SIZES)
def test_sizes(size):
    c = get_model_config("fp", size)
    assert (c.num_layers, c.hidden_size, c.num_heads, c.intermediate_size) == BERT_SIZES[size]
    assert (c.vocab_size, c.max_position, c.type_vocab_size) == (30522, 512, 2)


def test_methods_differ_only_in_flags():
    configs = {m: get_model_config(m, "tiny") for m in METHODS}
    assert configs["fp"].quant == BertConfig().quant
    assert len({c.quant for c in configs.values()}) == len(METHODS)
    assert configs["bipft"].quant.estimators.enabled and configs["bibert"].quant.attention == "bool"


def test_config_dir_env_replaces_one_preset(tmp_path, monkeypatch):
    (tmp_path / "tiny.py").write_text(
        "import ml_collections\n"
        "def get_config():\n"
        "    return ml_collections.ConfigDict(dict(hidden_size=64, num_layers=1, num_heads=2,"
        " intermediate_size=96))\n"
    )
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    c = get_model_config("bit", "tiny")
    assert (c.hidden_size, c.num_layers, c.vocab_size) == (64, 1, 30522)
    assert get_model_config("bit", "base").hidden_size == 768  # not in the dir: packaged


def test_apply_overrides_forms_agree_with_a_hand_built_config():
    base = get_model_config("bipft", "tiny")
    q = base.quant
    want = dataclasses.replace(
        base,
        num_layers=3,
        hidden_dropout=0.0,
        quant=dataclasses.replace(
            q,
            attention="bool",
            estimators=dataclasses.replace(q.estimators, rank=2),
            linear_weight=dataclasses.replace(q.linear_weight, scale="channel"),
        ),
    )
    cd = ml_collections.ConfigDict(
        {"num_layers": 3, "hidden_dropout": 0, "quant": {"attention": "bool"}}
    )
    cd.quant.estimators = {"rank": 2}
    cd.quant.linear_weight = {"scale": "channel"}
    assert apply_overrides(base, cd) == want
    mixed = {"num_layers": 3, "hidden_dropout": 0.0, "quant": {"attention": "bool"},
             "quant.estimators.rank": 2, "quant.linear_weight": {"scale": "channel"}}  # fmt: skip
    assert apply_overrides(base, mixed) == want
    strings = ("num_layers=3", "hidden_dropout=0.0", "quant.attention=bool",
               "quant.estimators={'rank': 2}", "quant.linear_weight.scale=channel")  # fmt: skip
    assert apply_overrides(base, strings) == want
    assert apply_overrides(base, ()) is base
    assert apply_overrides(base, {"dtype": "bfloat16"}).dtype != base.dtype


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"quant.estimators.rnk": 2}, r"in 'quant.estimators': \['rnk'\]; did you mean "
         r"quant.estimators.rank"),
        ({"num_layer": 2}, "did you mean num_layers"),
        ({"quant.estimators": 2}, "'quant.estimators' is a group"),
        ({"num_layers.x": 2}, "'num_layers' is a value, not a group"),
        ({"num_layers": "two"}, "'num_layers' expects int, got 'two'"),
        ({"quant.qkv.learnable_bias": 1}, "expects bool"),
        ({"quant.attention": "linear"}, "quant.attention must be one of"),
        ("num_layers=2", "KEY=VALUE strings or a mapping"),
    ],
)  # fmt: skip
def test_apply_overrides_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(get_model_config("bipft", "tiny"), overrides)
