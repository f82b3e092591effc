"""`bipft demo`: train a small binarized MLP on CPU and show its loss falling.

The student's hidden layers use exactly the binarizers of the BERT presets (`BinaryDense` with
BiT/BiPFT's BWN weights + elastic `α·sign(x+β)` inputs, or BiBERT's); the task is to imitate a
random full-precision teacher network on Gaussian inputs.
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bipft_jax.errors import CommandParser
from bipft_jax.quant import ActQuant, BinaryDense, DenseQuant, WeightQuant

QUANT = {
    "fp": DenseQuant(),
    "bit": DenseQuant(WeightQuant("bwn"), ActQuant("elastic_signed", learnable_bias=True)),
    "bibert": DenseQuant(WeightQuant("bibert"), ActQuant("sign")),
}


class BinaryMLP(nn.Module):
    """FP input layer, binarized hidden layers, FP classifier (as the papers keep heads FP)."""

    hidden: int = 256
    depth: int = 3
    classes: int = 8
    quant: DenseQuant = DenseQuant()

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(nn.Dense(self.hidden)(x))
        for _ in range(self.depth):
            h = nn.LayerNorm()(h + BinaryDense(self.hidden, self.quant)(h))
        return nn.Dense(self.classes)(h)


def run(
    preset: str = "bit",
    steps: int = 300,
    batch: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    log_every: int = 50,
) -> list[float]:
    """Train and return the loss curve (one value per step)."""
    k_teacher, k_init, k_data = jax.random.split(jax.random.key(seed), 3)
    teacher = nn.Sequential([nn.Dense(128), nn.tanh, nn.Dense(8)])
    t_params = teacher.init(k_teacher, jnp.zeros((1, 32)))
    student = BinaryMLP(quant=QUANT[preset])
    x0 = jax.random.normal(k_data, (batch, 32))
    params = student.init(k_init, x0)["params"]  # elastic α initialised from this real batch
    tx = optax.adam(lr)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key):
        x = jax.random.normal(key, (batch, 32))
        labels = jnp.argmax(teacher.apply(t_params, x), -1)
        loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
            student.apply({"params": p}, x), labels
        ).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses, start = [], time.perf_counter()
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(k_data, i))
        losses.append(float(loss))
        if (i + 1) % log_every == 0 or i == 0:
            rate = (i + 1) * batch / (time.perf_counter() - start)
            print(
                f"[{preset}] step {i + 1:4d}/{steps}  loss {losses[-1]:.4f}  {rate:,.0f} ex/s",
                flush=True,
            )
    return losses


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="bipft demo", description=__doc__)
    parser.add_argument("--preset", choices=sorted(QUANT), default="bit")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"argument --steps: expected a positive number of steps, got {args.steps}")
    losses = run(args.preset, args.steps, seed=args.seed)
    n = min(10, len(losses))
    head, tail = sum(losses[:n]) / n, sum(losses[-n:]) / n
    print(f"[{args.preset}] mean loss of the first 10 steps {head:.4f} -> last 10 steps {tail:.4f}")
    return 0
