"""Metric sinks (JSON lines + TensorBoard) and a one-line progress report with MFU and ETA."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bipft_jax.paths import local_path

# Peak dense bf16 FLOP/s per JAX device, from vendor spec sheets. Matched in order against
# the lower-cased ``device.device_kind``; more specific patterns come first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("v5 lite", 197e12),  # TPU v5e
    ("v5e", 197e12),
    ("v5p", 459e12),
    ("tpu v5", 459e12),  # v5p reports "TPU v5"
    ("v6 lite", 918e12),  # Trillium (v6e)
    ("v6e", 918e12),
    ("tpu v4", 275e12),
    ("a100", 312e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),  # SXM / HBM3
    ("h200", 989e12),
)
# CPU fallback: 117 GFLOP/s per core, an FP32 FMA loop measured on the AMD EPYC dev machines
# (shared docs/performance.md; 32 FLOP/cycle at ~3.66 GHz). Rough by design: other CPUs differ.
CPU_FLOPS_PER_CORE = 117e9


def peak_flops_per_device(device_kind: str) -> float | None:
    """Peak bf16 FLOP/s of one device of ``device_kind``; for ``cpu`` the whole host's estimate.

    Returns ``None`` for unknown accelerators (MFU is then not reported).
    """
    kind = device_kind.lower()
    if kind == "cpu":
        return CPU_FLOPS_PER_CORE * (os.cpu_count() or 1)
    for pattern, flops in PEAK_BF16_FLOPS:
        if pattern in kind:
            return flops
    return None


def train_flops_per_token(n_params: int, n_layers: int, seq_len: int, hidden: int) -> float:
    """Approximate training FLOPs per token of a transformer encoder: ``6N + 12 L S H``.

    ``6N`` covers the forward+backward matmuls with the weights, ``12 L S H`` the attention
    scores and weighted sums (Kaplan et al. 2020; PaLM appendix B).
    """
    return 6.0 * n_params + 12.0 * n_layers * seq_len * hidden


def bert_flops_per_token(
    hidden: int,
    intermediate: int,
    num_layers: int,
    vocab_size: int,
    seq_len: int,
    predictions_per_seq: float = 0.0,
    teacher_forward: bool = False,
) -> float:
    """Model FLOPs per token of one BERT training step (MFU convention: matmuls only).

    Encoder linears ``6·L·(4H² + 2HI)``, attention products ``12·L·S·H`` (forward + backward),
    the MLM head on ``predictions_per_seq`` gathered positions per row (``6·(H² + HV)`` each);
    embedding lookups are not matmuls. ``teacher_forward`` adds a frozen teacher's forward
    (one third of the encoder + attention terms). At BERT-base, S=128, 20 predictions this is
    ~545 MFLOP/token without the teacher (performance.md's figure).
    """
    encoder = 6.0 * num_layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = 12.0 * num_layers * seq_len * hidden
    head = 6.0 * (hidden * hidden + hidden * vocab_size) * predictions_per_seq / seq_len
    teacher = (encoder + attention) / 3.0 if teacher_forward else 0.0
    return encoder + attention + head + teacher


def _scalar(v: Any) -> float | int | str:
    x = np.asarray(v)
    if x.size != 1:
        raise ValueError(f"metric value of shape {x.shape} is not a scalar")
    x = x.reshape(()).item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # "nan" / "inf": keeps metrics.jsonl strict JSON
    return x


def keep_rows_before_resume(path: Path, step: int, redone: tuple[str, ...] = ()) -> int:
    """Rewrite the metrics file ``path`` for a run resuming from ``step``: keep the rows of
    earlier steps and those of ``step`` itself, except rows of ``step`` holding a key that
    starts with one of ``redone`` (the resumed run writes them again). Rows past ``step`` (the
    work the resume repeats) and a torn last line go. Returns how many rows were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            at = int(row["step"])
        except (ValueError, KeyError, TypeError):
            dropped += 1  # a write cut short by a kill
            continue
        again = at == step and any(k.startswith(redone) for k in row if k != "step")
        if at > step or again:
            dropped += 1
        else:
            kept.append(line + "\n")
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


class MetricWriter:
    """Appends ``{"step": s, **scalars}`` to ``workdir/metrics.jsonl`` and TensorBoard events.

    Only process 0 writes (``enabled`` defaults to that) so multi-host runs do not race. A run
    that starts at ``resume_step`` (0 for a fresh one) first drops the rows it will write again
    (``keep_rows_before_resume``; ``redone``: key prefixes of the rows at ``resume_step`` itself
    that it repeats), so a resumed run's file has each step once; TensorBoard purges the same.
    """

    def __init__(
        self,
        workdir: str | Path,
        enabled: bool | None = None,
        tensorboard: bool = True,
        resume_step: int | None = None,
        redone: tuple[str, ...] = (),
    ):
        if enabled is None:
            import jax

            enabled = jax.process_index() == 0
        self.enabled = enabled
        self.workdir = local_path(workdir, "metrics workdir")
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "metrics.jsonl"
        if resume_step is not None:
            keep_rows_before_resume(path, resume_step, redone)
        self._jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge = None if resume_step is None else resume_step + (0 if redone else 1)
            self._tb = SummaryWriter(logdir=str(self.workdir / "tensorboard"), purge_step=purge)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Record one step's scalars (jax/numpy 0-d arrays or Python numbers)."""
        if not self.enabled:
            return
        row: dict[str, float | int | str] = {"step": int(step)}
        row.update({k: _scalar(v) for k, v in scalars.items()})
        assert self._jsonl is not None, "write_scalars after close()"
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, global_step=int(step))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _fmt(v: float) -> str:
    return f"{v:.2e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.4f}"


_LOSS_FIRST = ("loss",)
_ACC_KEYS = ("mlm_acc", "mlm_accuracy")
_LR_KEYS = ("lr", "learning_rate")
_GNORM_KEYS = ("grad_norm", "gnorm")


class ProgressLogger:
    """Builds lines like ``step 120/1000 | loss 3.41 (mlm 3.10 nsp 0.31) | mlm_acc 0.412 |
    lr 1.00e-04 | gnorm 1.23 | 12,345 tok/s | 0.512 s/step | MFU 31.2% | ETA 7m30s``.

    Call ``update(step, metrics)`` after a step has finished (block on a metric first); speed
    is averaged over the steps since the previous call and kept in ``speed`` (``tokens_per_s``,
    ``mfu`` as a fraction) for the metric sinks. ``tokens_per_step`` is the global
    batch's tokens; MFU needs ``flops_per_token`` and a known device kind.
    """

    def __init__(
        self,
        total_steps: int,
        tokens_per_step: int | None = None,
        flops_per_token: float | None = None,
        device_kind: str | None = None,
        num_devices: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.total_steps = total_steps
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        if device_kind is None or num_devices is None:
            import jax

            device_kind = device_kind or jax.devices()[0].device_kind
            if num_devices is None:  # CPU peak is per host; accelerator peak per device
                cpu = device_kind.lower() == "cpu"
                num_devices = jax.process_count() if cpu else jax.device_count()
        peak = peak_flops_per_device(device_kind)
        self.peak_flops = None if peak is None else peak * num_devices
        self._clock = clock
        self._last: tuple[int, float] | None = None
        self.speed: dict[str, float] = {}  # the last update's tokens_per_s / mfu, for the sinks

    def start(self, step: int) -> None:
        """Mark the time origin (e.g. after compilation) at ``step``."""
        self._last = (step, self._clock())

    def update(self, step: int, metrics: Mapping[str, Any]) -> str:
        now = self._clock()
        parts = [f"step {step}/{self.total_steps}"]
        scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
        sub = [k for k in scalars if k != "loss" and ("loss" in k)]
        if "loss" in scalars:
            detail = " ".join(f"{_short(k)} {_fmt(scalars[k])}" for k in sub)
            parts.append(f"loss {_fmt(scalars['loss'])}" + (f" ({detail})" if detail else ""))
        else:
            parts += [f"{k} {_fmt(scalars[k])}" for k in sub]
        for keys, label in ((_ACC_KEYS, "mlm_acc"), (_LR_KEYS, "lr"), (_GNORM_KEYS, "gnorm")):
            key = next((k for k in keys if k in scalars), None)
            if key is not None:
                val = scalars[key]
                text = {"lr": f"{val:.2e}", "mlm_acc": f"{val:.4f}"}.get(label, _fmt(val))
                parts.append(f"{label} {text}")
        self.speed = {}
        if self._last is not None and step > self._last[0] and now > self._last[1]:
            step_time = (now - self._last[1]) / (step - self._last[0])
            tok_s = self.tokens_per_step / step_time if self.tokens_per_step else None
            if tok_s is not None:
                parts.append(f"{tok_s:,.0f} tok/s")
                self.speed["tokens_per_s"] = tok_s
            parts.append(f"{step_time:.3f} s/step")
            if tok_s is not None and self.flops_per_token and self.peak_flops:
                self.speed["mfu"] = tok_s * self.flops_per_token / self.peak_flops
                parts.append(f"MFU {100.0 * self.speed['mfu']:.1f}%")
            parts.append(f"ETA {format_duration(max(self.total_steps - step, 0) * step_time)}")
        self._last = (step, now)
        return " | ".join(parts)


def _short(key: str) -> str:
    for affix in ("loss/", "loss_", "_loss", "/loss"):
        key = key.replace(affix, "")
    return key or "loss"
