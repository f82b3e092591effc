"""A named device mesh ``(data, fsdp, tensor)`` built from a small config.

``-1`` in one axis means "fill with the devices the other axes leave over", as in MaxText's
``ici_*_parallelism``. Axis types are ``Auto`` (classic GSPMD propagation): ``jax.make_mesh``
defaults to ``Explicit`` since JAX 0.7, which the Linen logical-rules machinery does not expect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")


def resolve_mesh_shape(
    shape: Mapping[str, int] | Sequence[int], num_devices: int
) -> tuple[int, int, int]:
    """Sizes of ``(data, fsdp, tensor)`` with at most one ``-1`` filled in.

    ``shape`` is a mapping ``{"data": 2, "fsdp": -1}`` (missing axes default to 1; an
    ``ml_collections.ConfigDict`` works too) or a sequence of three ints. Raises ``ValueError``
    naming the axes when the sizes do not fit.
    """
    if hasattr(shape, "to_dict"):  # ConfigDict is not a collections.abc.Mapping
        shape = shape.to_dict()
    if isinstance(shape, Mapping):
        unknown = sorted(set(shape) - set(MESH_AXES))
        if unknown:
            raise ValueError(f"unknown mesh axes {unknown}; valid axes are {list(MESH_AXES)}")
        sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    else:
        sizes = [int(s) for s in shape]
        if len(sizes) != len(MESH_AXES):
            raise ValueError(f"mesh shape {tuple(sizes)} must have {len(MESH_AXES)} entries")
    desc = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes, strict=True))
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive or -1, got {desc}")
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {desc}")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % known:
            raise ValueError(
                f"mesh ({desc}): the fixed axes multiply to {known}, which does not divide "
                f"the {num_devices} available devices"
            )
        sizes[fill[0]] = num_devices // known
    elif known != num_devices:
        raise ValueError(
            f"mesh ({desc}) has {known} devices but {num_devices} are available; "
            "use -1 on one axis to fill the rest"
        )
    return sizes[0], sizes[1], sizes[2]


def make_mesh(
    shape: Mapping[str, int] | Sequence[int] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A ``Mesh`` over ``devices`` (default: all) with axes ``("data", "fsdp", "tensor")``.

    ``shape=None`` means pure data parallelism over every device.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape({"data": -1} if shape is None else shape, len(devices))
    if len(devices) == len(jax.devices()):
        # Let JAX pick a topology-aware device order (matters on TPU/GPU slices).
        return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
