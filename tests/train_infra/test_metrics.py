import json
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from bipft_jax.train import metrics as M


def read_events(path):
    """Minimal TFRecord reader: u64 length, u32 crc, payload, u32 crc."""
    data, events, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        payload = data[pos + 12 : pos + 12 + length]
        assert len(payload) == length, "truncated record"
        events.append(event_pb2.Event.FromString(payload))
        pos += 12 + length + 4
    return events


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"loss": float(rng.uniform(1, 5)), "lr": float(rng.uniform(0, 1e-3))} for _ in range(3)]
    with M.MetricWriter(tmp_path, enabled=True) as w:
        for step, row in enumerate(rows, start=1):
            w.write_scalars(step * 10, {"loss": jnp.float32(row["loss"]), "lr": row["lr"]})
        w.write_scalars(40, {"loss": float("nan"), "count": np.int32(7)})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [10, 20, 30, 40]
    for got, want in zip(lines, rows, strict=False):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
        assert got["lr"] == pytest.approx(want["lr"])
    assert lines[3] == {"step": 40, "loss": "nan", "count": 7}
    files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars = {}
    for ev in read_events(files[0]):
        for v in ev.summary.value:
            scalars.setdefault(v.tag, []).append((ev.step, v.simple_value))
    assert [s for s, _ in scalars["loss"]] == [10, 20, 30]  # nan skipped in TensorBoard
    np.testing.assert_allclose([v for _, v in scalars["loss"]], [r["loss"] for r in rows], 1e-6)
    assert scalars["count"] == [(40, 7.0)]
    with pytest.raises(ValueError, match=r"shape \(2,\) is not a scalar"):
        M.MetricWriter(tmp_path / "x", enabled=True, tensorboard=False).write_scalars(
            1, {"v": np.ones(2)}
        )


def test_disabled_writer_writes_nothing(tmp_path):
    w = M.MetricWriter(tmp_path / "off", enabled=False)
    w.write_scalars(1, {"loss": 1.0})
    w.close()
    assert not (tmp_path / "off").exists()


def test_peak_flops_table():
    assert M.peak_flops_per_device("TPU v4") == 275e12
    assert M.peak_flops_per_device("TPU v5 lite") == 197e12
    assert M.peak_flops_per_device("TPU v5p") == 459e12
    assert M.peak_flops_per_device("NVIDIA A100-SXM4-80GB") == 312e12
    assert M.peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
    assert M.peak_flops_per_device("NVIDIA H100 PCIe") == 756e12
    assert M.peak_flops_per_device("cpu") > 0
    assert M.peak_flops_per_device("Some NPU") is None


def test_progress_line_speed_mfu_eta():
    t = [100.0]
    log = M.ProgressLogger(
        total_steps=1000,
        tokens_per_step=4096,
        flops_per_token=6e6,
        device_kind="TPU v4",
        num_devices=4,
        clock=lambda: t[0],
    )
    log.start(0)
    t[0] += 20.0  # 100 steps in 20 s -> 0.2 s/step
    metrics = {
        "loss": 3.25,
        "mlm_loss": 3.0,
        "loss/kd": 0.25,
        "mlm_acc": jnp.float32(0.4125),
        "lr": 1e-4,
        "grad_norm": 1.5,
    }
    line = log.update(100, metrics)
    tok_s = 4096 / 0.2
    mfu = 100 * tok_s * 6e6 / (4 * 275e12)
    assert line == (
        "step 100/1000 | loss 3.2500 (mlm 3.0000 kd 0.2500) | mlm_acc 0.4125 | lr 1.00e-04 | "
        f"gnorm 1.5000 | {tok_s:,.0f} tok/s | 0.200 s/step | MFU {mfu:.1f}% | ETA 3m00s"
    )
    t[0] += 3600.0  # the next 10 steps were slow: 360 s/step
    assert log.update(110, {"loss": 2.0}).endswith("| 360.000 s/step | MFU 0.0% | ETA 89h00m")


def test_progress_without_speed_info_and_flops_helper():
    log = M.ProgressLogger(total_steps=10, device_kind="Unknown NPU", num_devices=1)
    assert log.update(1, {"loss": 2.5}) == "step 1/10 | loss 2.5000"
    assert "| mlm_acc 0.0077" in log.update(2, {"mlm_accuracy": 0.0077})
    assert "MFU" not in log.update(3, {"loss": 2.5})
    # 6N + 12 L S H for BERT-base at seq 128.
    assert M.train_flops_per_token(110_000_000, 12, 128, 768) == 6 * 110e6 + 12 * 12 * 128 * 768
    assert M.format_duration(59.6) == "1m00s" and M.format_duration(3 * 3600 + 65) == "3h01m"


def test_resumed_writer_drops_the_rows_it_writes_again(tmp_path):
    rows = [{"step": s, "train/loss": 0.5 * s} for s in range(1, 7)]
    rows.insert(3, {"step": 3, "eval/acc": 0.7})  # the evaluation after step 3
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "train/lo'  # a torn write
    (tmp_path / "metrics.jsonl").write_text(text)
    # Resuming from step 3 whose evaluation is redone: steps 4-7 and eval/ rows of step 3 go.
    with M.MetricWriter(tmp_path, enabled=True, tensorboard=False, resume_step=3,
                        redone=("eval/",)) as w:  # fmt: skip
        w.write_scalars(3, {"eval/acc": 0.75})
        w.write_scalars(4, {"train/loss": 9.0})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [*rows[:3], {"step": 3, "eval/acc": 0.75}, {"step": 4, "train/loss": 9.0}]
    # Without redone rows the step's own rows stay; a fresh start (step 0) keeps nothing after it.
    assert M.keep_rows_before_resume(tmp_path / "metrics.jsonl", 3) == 1
    assert [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").open())] == [1, 2, 3, 3]
    assert M.keep_rows_before_resume(tmp_path / "metrics.jsonl", 0) == 4
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert M.keep_rows_before_resume(tmp_path / "none.jsonl", 5) == 0
