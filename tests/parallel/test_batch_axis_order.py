"""Guard for an XLA SPMD-partitioner bug on a (data, fsdp, tensor) mesh.

With the batch split over ``("data", "fsdp")``, params 2-D sharded over ``fsdp x tensor`` and a
per-row scaled cotangent (a masked loss), XLA (jaxlib 0.10.2, GSPMD and Shardy alike) swapped
batch shards between devices in the backward pass: the gradient of ``W`` below was ~95% wrong.
``BATCH_AXES = ("fsdp", "data")`` avoids it; this test pins that down on the bare pattern (the
MLM head: dense -> tanh -> tied decoder) against a one-device reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from bipft_jax.parallel import make_mesh
from bipft_jax.parallel.sharding import batch_sharding


def _masked_head_loss(w, table, h, g, mask):
    x = jnp.tanh(h @ w)
    logits = jnp.einsum("ble,ve->blv", x, table)
    return jnp.sum(logits * g * mask[..., None])


def test_masked_head_gradient_matches_one_device_on_3d_mesh():
    rng = np.random.default_rng(0)
    b, length, hidden, vocab = 8, 16, 128, 512
    w = (rng.standard_normal((hidden, hidden)) * 0.2).astype(np.float32)
    table = (rng.standard_normal((vocab, hidden)) * 0.3).astype(np.float32)
    h = rng.standard_normal((b, length, hidden)).astype(np.float32)
    g = rng.standard_normal((b, length, vocab)).astype(np.float32)
    mask = rng.random((b, length)) < 0.3
    grad = jax.grad(_masked_head_loss, argnums=(0, 1))
    ref = grad(w, table, h, g, mask)

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
    spec = lambda *axes: NamedSharding(mesh, PartitionSpec(*axes))
    rows = batch_sharding(mesh)
    args = (
        jax.device_put(w, spec("fsdp", "tensor")),
        jax.device_put(table, spec("tensor", "fsdp")),
        *(jax.device_put(x, rows) for x in (h, g, mask)),
    )
    with jax.set_mesh(mesh):
        out = jax.jit(grad)(*args)
    for got, want in zip(out, ref):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
