"""`bipft demo`: the binarized MLP's loss falls on CPU."""

import pytest

from bipft_jax import cli, demo


@pytest.mark.parametrize("preset", ["bit", "bibert"])
def test_demo_loss_falls(preset):
    losses = demo.run(preset, steps=80, batch=128, log_every=1000)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)


def test_cli_dispatches_demo(capsys):
    assert cli.main(["demo", "--steps", "3"]) == 0
    assert "mean loss" in capsys.readouterr().out
    assert cli.main(["no-such-command"]) == 2
