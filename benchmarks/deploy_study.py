"""Deployment of the GLUE study's real binary models: packed 1-bit export, the dev metric through
`packed_forward` against the fake-quant model, and file sizes next to FP32 (trained values).

    python benchmarks/deploy_study.py --study workdir/study [--rows bipft_b,bibert]

For each row, the best run of the study (highest final dev score over seeds) on every task it
finished is exported with the real command, `bipft export --format packed --checkpoint
<run>/0_<stage>/final` (lossless float codec on by default; once more with `--no-compress`),
loaded back, and its whole dev split predicted with `packed_forward` (native kernels where they
build, else XLA) and with the fake-quant Flax model, both in batches of 64 padded to multiples of
32; the fake-quant model once more in the study's own evaluation shapes (batches of 128 padded to
the maximum length), which measures what float32 rounding alone does to it. Reported: the task
metrics, the largest logit differences, whether every prediction agrees, and the bytes on disk
next to the FP32 params of the same model. Writes `benchmarks/results/deploy_study.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def best_runs(records: list[dict], row: str) -> dict[str, dict]:
    """task -> the record of `row` (full pretraining) with the highest final main score."""
    best: dict[str, dict] = {}
    for r in records:
        if r["row"] != row or r.get("pretrain_fraction") not in (None, 1.0):
            continue
        score = next(iter(r["final"]["metrics"].values()))["main"]
        if r["task"] not in best or score > best[r["task"]]["score"]:
            best[r["task"]] = {**r, "score": score}
    return best


def zero_signs(packed_dir: Path) -> dict[str, int]:
    """Tensors with sign-0 entries (a weight exactly equal to its centre μ) -> how many; stored
    as a `.zeros` position list, or as a `.mask` plane (one bit per entry) where that is smaller
    or the file predates format 3."""
    from safetensors.numpy import load_file

    from bipft_jax.infer.fileformat import zero_positions

    manifest = json.loads((packed_dir / "manifest.json").read_text())["tensors"]
    out = {}
    for name, words in load_file(str(packed_dir / "tensors.safetensors")).items():
        if name.endswith(".zeros"):
            out[name.removesuffix(".zeros")] = int(words.size)
        elif name.endswith(".mask"):
            out[name.removesuffix(".mask")] = len(zero_positions(words, manifest[name]["k"]))
    return out


def _export(final: Path, out: Path, compress: bool) -> None:
    """`bipft export --format packed` exactly as a user types it (in this process)."""
    from bipft_jax import cli

    argv = ["export", "--format", "packed", "--checkpoint", str(final), "--out", str(out)]
    argv += [] if compress else ["--no-compress"]
    if cli.main(argv):  # user errors are one line on stderr and a non-zero code
        raise RuntimeError(f"bipft {' '.join(argv)} failed (see the line above)")


def _dev_logits(fn, dev: dict, batch_size: int = 64, pad_multiple: int = 32) -> np.ndarray:
    from bipft_jax.glue import data as glue_data

    out = None
    for batch, rows in glue_data.eval_batches(dev, batch_size, pad_multiple):
        logits = np.asarray(fn({k: jnp.asarray(v) for k, v in batch.items()}))
        if out is None:
            out = np.zeros((len(dev["labels"]), logits.shape[-1]), np.float32)
        out[rows] = logits[: len(rows)]
    return out


def deploy(final: Path, task: str, out: Path, max_length: int = 128) -> dict:
    """Export one run's final model and compare packed and fake-quant dev predictions."""
    from bipft_jax.checkpoint import restore_params
    from bipft_jax.checkpoint.model_card import read_model_card
    from bipft_jax.data.glue_metrics import task_metrics
    from bipft_jax.data.tokenizer import BertTokenizer
    from bipft_jax.glue import data as glue_data
    from bipft_jax.infer.packed_forward import packed_forward
    from bipft_jax.infer.packed_model import load_packed_model
    from bipft_jax.model.bert import BertForSequenceClassification
    from bipft_jax.paths import default_vocab_file

    config, num_labels, _ = read_model_card(final)
    params = restore_params(final)
    packed_dir, raw_dir = out / "packed", out / "packed_uncompressed"
    _export(final, packed_dir, True)
    _export(final, raw_dir, False)
    packed = load_packed_model(packed_dir)
    spec = glue_data.resolve_task(task)
    dev = glue_data.load_split(
        spec, "dev", BertTokenizer.from_vocab(str(default_vocab_file())), max_length
    )
    model = BertForSequenceClassification(config, num_labels=num_labels)
    apply = jax.jit(
        lambda p, b: model.apply(
            {"params": p}, b["input_ids"], b["attention_mask"], b["token_type_ids"]
        )["logits"]
    )
    fake = lambda b: apply(params, b)  # noqa: E731
    real = jax.jit(
        lambda b: packed_forward(packed, b["input_ids"], b["attention_mask"], b["token_type_ids"])[
            "logits"
        ]
    )
    logits = {"fake_quant": _dev_logits(fake, dev), "packed": _dev_logits(real, dev),
              # the study's own evaluation shapes: batches of 128 padded to max_length
              "fake_quant_b128": _dev_logits(fake, dev, 128, 0)}  # fmt: skip
    metrics = {k: task_metrics(task, v, dev["labels"]) for k, v in logits.items()}
    fp32 = sum(int(np.prod(np.shape(x))) * 4 for x in jax.tree.leaves(params))
    packed_bytes = _dir_bytes(packed_dir)
    agree = None
    if not spec.is_regression:
        agree = bool((logits["packed"].argmax(-1) == logits["fake_quant"].argmax(-1)).all())
    return {
        "metrics": metrics,
        "zero_signs": zero_signs(packed_dir),
        "max_abs_logit_diff": float(np.abs(logits["packed"] - logits["fake_quant"]).max()),
        # the fake-quant model against itself at other batch shapes (float32 rounding only)
        "fake_quant_shape_diff": float(
            np.abs(logits["fake_quant_b128"] - logits["fake_quant"]).max()
        ),
        "same_predictions": agree,
        "bytes": {
            "packed": packed_bytes,
            "packed_uncompressed": _dir_bytes(raw_dir),
            "fp32_params": fp32,
        },
        "fp32_over_packed": fp32 / packed_bytes,
    }


def _pct(score: float | None) -> str:
    return "—" if score is None else f"{100 * score:.2f}"


def write(res: dict, results: Path = RESULTS) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "deploy_study.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# Deploying the GLUE study's binary models as packed 1-bit files",
        "",
        "The best run (final dev score over seeds) of each row and task, exported with "
        "`bipft export --format packed` from its `final/` checkpoint; dev predicted through "
        "`packed_forward` and through the fake-quant model. Sizes are bytes on disk of "
        "trained values (MiniLM-L6-H384 with its 30,522-token vocabulary).",
        "",
        'Both are evaluated in batches of 64 padded to multiples of 32; "fake-quant, other '
        "shapes\" is the same fake-quant model in the study's own evaluation shapes (batches of "
        "128 padded to the maximum length): a binary model turns any rounding difference into "
        "flipped signs, so a difference there would be float32 rounding alone.",
        "",
        '"In the study" is the score its results file records: the study ran from a frozen tree '
        "whose binary products still summed `±m` terms (float32 rounding that depends on the "
        "batch shape, fixed since: docs/architecture.md), so the same weights can score "
        "differently under today's exact arithmetic, which both other columns use.",
        "",
        "| row | task (seed) | in the study | metric fake-quant | metric packed | max logit diff | "
        "same predictions | fake-quant, other shapes (max logit diff) | packed (codec) | "
        "packed (raw) | FP32 params | FP32 / packed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        if "error" in r:
            lines.append(f"| {r['row']} | {r['task']} | error: {r['error'][:80]} |")
            continue
        m = r["metrics"]
        fq, pk, other = (m[k]["main"] for k in ("fake_quant", "packed", "fake_quant_b128"))
        b = r["bytes"]
        lines.append(
            f"| {r['row']} | {r['task']} ({r['seed']}) | {_pct(r.get('study_score'))} | "
            f"{100 * fq:.2f} | {100 * pk:.2f} | "
            f"{r['max_abs_logit_diff']:.1e} | {r['same_predictions']} | {100 * other:.2f} "
            f"({r['fake_quant_shape_diff']:.1e}) | {b['packed']:,} | "
            f"{b['packed_uncompressed']:,} | {b['fp32_params']:,} | {r['fp32_over_packed']:.1f}x |"
        )
    zeros = [(r, name, n) for r in res["runs"] for name, n in r.get("zero_signs", {}).items()]
    if zeros:
        lines += ["", "Tensors with sign-0 entries (exactly equal to their centre μ; sign 0 as in "
                  "the reference). Files written before format 3 store them as a mask plane "
                  "(one bit per entry of the tensor), format 3 as a list of positions:",
                  ""]  # fmt: skip
        lines += [f"- {r['row']} {r['task']}: `{name}`, {n} sign-0 entries" for r, name, n in zeros]
    (results / "deploy_study.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", required=True, help="the `bipft study` workdir")
    ap.add_argument("--records", default=str(RESULTS / "glue_study"), help="run records folder")
    ap.add_argument("--rows", default="bipft_b,bibert")
    ap.add_argument("--out", default="/tmp/deploy_study")
    ap.add_argument("--results", default=str(RESULTS), help="where deploy_study.{json,md} go")
    a = ap.parse_args()
    records = [json.loads(p.read_text()) for p in sorted(Path(a.records).glob("*.json"))]
    res: dict = {"runs": []}
    for row in a.rows.split(","):
        for task, rec in sorted(best_runs(records, row).items()):
            stage = Path(a.study) / "runs" / rec["run"]
            final = next(stage.glob("0_*/final"))
            max_length = json.loads((stage / "config.json").read_text())["train"]["max_length"]
            entry = {"row": row, "task": task, "seed": rec["seed"], "run": rec["run"]}
            entry["study_score"] = rec["score"]  # as the study scored it, with its own tree
            try:
                entry.update(deploy(final, task, Path(a.out) / rec["run"], max_length))
            except Exception as e:  # a benchmark: report and go on with the others
                entry["error"] = f"{type(e).__name__}: {e}"
            res["runs"].append(entry)
            print(json.dumps(entry), flush=True)
            write(res, Path(a.results))


if __name__ == "__main__":
    main()
