"""0-d tensors (every α) keep their shape through the packed container."""

import numpy as np

from bipft_jax.infer.fileformat import load_packed, save_packed


def test_scalar_round_trip(tmp_path):
    alpha = np.asarray(0.37, np.float32)
    save_packed(tmp_path / "m", {"alpha": alpha, "w": np.eye(3, dtype=np.float32)}, {"preset": "t"})
    arrays, manifest = load_packed(tmp_path / "m")
    assert arrays["alpha"].shape == () and float(arrays["alpha"]) == np.float32(0.37)
    assert manifest["tensors"]["alpha"]["shape"] == []
