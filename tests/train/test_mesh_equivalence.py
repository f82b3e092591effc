"""A few BiPFT-objective train steps give the same losses under dp, fsdp and tp meshes (8 fake
devices) as on one device, for the FP and the BiPFT presets."""

import jax
import numpy as np
import pytest

from bipft_jax.parallel import get_rules, make_mesh, shard_host_batch
from bipft_jax.train.loop import init_train_state, jit_step, make_train_step
from bipft_jax.train.optim import make_optimizer
from bipft_jax.train.pretrain import (
    build_teacher,
    default_config,
    init_from_teacher,
    make_pretrain_loss,
)
from tests.train.tiny import random_batch, tiny_model

MESHES = {
    "one": ({"data": 1}, "dp", 1),
    "dp": ({"data": 8}, "dp", 8),
    "fsdp": ({"data": 2, "fsdp": 4}, "fsdp", 8),
    "tp": ({"data": 4, "tensor": 2}, "tp", 8),
    "fsdp_x_tp": ({"data": 2, "fsdp": 2, "tensor": 2}, "tp", 8),
}
STEPS = 3


def _losses(method: str, mesh_name: str) -> list[float]:
    shape, rules_name, n = MESHES[mesh_name]
    mesh, rules = make_mesh(shape, jax.devices()[:n]), get_rules(rules_name)
    c = default_config()
    student = tiny_model(method)
    batch0 = random_batch(0, seq=16)
    ids = batch0["input_ids"][:1]
    teacher, t_params, t_sh, _ = build_teacher(c, student.config, mesh, rules, ids)

    def init(rng, tp):
        return init_from_teacher(student.init(rng, ids)["params"], tp)

    tx = make_optimizer({"lr": 1e-3, "schedule": "constant", "clip_norm": 1.0})
    state, sh = init_train_state(init, tx, mesh, rules, jax.random.PRNGKey(0), t_params)
    step = jit_step(make_train_step(make_pretrain_loss(c, student, teacher), tx), mesh, rules,
                    sh, const_shardings=(t_sh,))  # fmt: skip
    out = []
    for _ in range(STEPS):
        state, m = step(state, shard_host_batch(batch0, mesh), t_params)  # same batch: overfit
        out.append(float(m["loss"]))
    return out


@pytest.mark.parametrize("method", ["fp", "bipft"])
def test_losses_match_single_device(method):
    """Tolerance on the total loss of each of 3 steps: FP rtol 1e-5 (float32 reduction order is
    the only difference; no dropout). BiPFT rtol 5e-3: per-device matmuls of another batch size
    round differently, and a rounding-level change of a pre-sign activation flips its sign
    (measured: up to 2.5e-3 relative between 1 and 8 devices under dp).

    ``fsdp_x_tp`` (data=2 x fsdp=2 x tensor=2, 2-D sharded params) guards the batch-axis order
    workaround in ``parallel/rules.py`` (``BATCH_AXES``): with the batch split ``("data", "fsdp")``
    XLA's SPMD partitioner returned wrong gradients on this mesh (docs/architecture.md)."""
    ref = _losses(method, "one")
    assert ref[-1] < ref[0]  # it is training
    for name in ("dp", "fsdp", "tp", "fsdp_x_tp"):
        rtol = 1e-5 if method == "fp" else 5e-3
        np.testing.assert_allclose(_losses(method, name), ref, rtol=rtol, err_msg=name)
