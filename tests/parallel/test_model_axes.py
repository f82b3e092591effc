"""Every model preset's params use only the logical axes of the rules table, and use all of them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from bipft_jax.model.params import HEADS, build_model
from bipft_jax.model.presets import METHODS, get_model_config
from bipft_jax.parallel import PRESETS, check_logical_names
from bipft_jax.parallel.rules import LOGICAL_AXES


def _boxed(method, scan, head):
    config = get_model_config(method, "tiny", vocab_size=64, num_layers=2, scan_layers=scan)
    model = build_model(config, head, 3)
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    return jax.eval_shape(lambda i: model.init(jax.random.key(0), i), ids)["params"]


def test_every_preset_head_and_layout_checks_against_every_rules_table():
    used = set()
    for method in METHODS:
        for scan in (False, True):
            for head in HEADS:
                tree = _boxed(method, scan, head)
                for rules in PRESETS.values():
                    check_logical_names(tree, rules)
                specs = jax.tree.leaves(
                    nn.get_partition_spec(tree),
                    is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
                )
                used |= {n for spec in specs for n in spec if n is not None}
    assert used == set(LOGICAL_AXES), f"unused: {set(LOGICAL_AXES) - used}"


def test_a_misnamed_axis_is_caught():
    tree = _boxed("bipft", False, "base")
    kernel = tree["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
    tree["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"] = kernel.replace_boxed(
        kernel.value
    ).replace(names=("embed", "mpl"))
    with pytest.raises(ValueError, match=r"'mpl'.*did you mean \['mlp'\]"):
        check_logical_names(tree, PRESETS["tp"])
