"""Test-wide setup: 8 fake CPU devices (before JAX starts) and the shared-data location."""

import os

# Multi-device sharding logic is tested on fake CPU devices. Must precede any jax import.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from bipft_jax import paths  # noqa: E402


@pytest.fixture(scope="session")
def shared_data():
    """The shared data root; skips the test with a clear reason when it is absent."""
    try:
        root = paths.shared_data_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    if not (root / "glue_data").is_dir():
        pytest.skip(
            f"shared data not found at {root} (set ${paths.DATA_ENV_VAR} to the folder "
            "holding glue_data/, corpus/ and vocab/)"
        )
    return root


@pytest.fixture(scope="session")
def vocab_file(shared_data):
    return shared_data / "vocab" / "bert-base-uncased-vocab.txt"
