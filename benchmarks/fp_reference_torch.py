"""The GLUE study's FP anchor, measured in PyTorch over several seeds.

    python benchmarks/fp_reference_torch.py [--tasks rte,cola] [--seeds 1,2,3]

`environment.md` gives one PyTorch measurement (one seed) of MiniLM-L6-H384 fine-tuned on GLUE;
the study's FP row must land "within seed noise" of it. This measures that noise: Hugging Face
`BertForSequenceClassification` + PyTorch, 2 threads, with the study's recipe
(`configs/glue/study_minilm.py`: AdamW lr 5e-5, batch 32, HF's linear schedule with 10% warm-up,
weight decay 0.01 except biases and LayerNorm, clipping 1.0, dropout on, the task's epochs, max
length and training rows, the last partial batch of an epoch dropped, last-epoch dev score).
Each (task, seed) run is written as it finishes to `benchmarks/results/fp_reference_torch.{json,md}`
and skipped when rerun, so an interrupted measurement resumes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STUDY_CONFIG = ROOT / "configs" / "glue" / "study_minilm.py"


def study_tasks() -> dict[str, tuple[int, float, int]]:
    """task -> (max_length, epochs, training rows, 0 = all), read from the study's config."""
    spec = importlib.util.spec_from_file_location("study_minilm", STUDY_CONFIG)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module._TASK)


def finetune_torch(
    minilm: str | Path,
    task: str,
    seed: int,
    epochs: float,
    max_length: int,
    train_rows: int = 0,
    lr: float = 5e-5,
    batch_size: int = 32,
    progress: bool = False,
) -> dict:
    """Fine-tune HF MiniLM on one GLUE task (tokenizing per batch, padded to the batch's longest
    row) and score dev after the last epoch; returns the dev metrics and the wall seconds of the
    whole run (model load to dev metrics)."""
    import torch
    from transformers import BertForSequenceClassification, BertTokenizer
    from transformers.optimization import get_linear_schedule_with_warmup

    from bipft_jax import paths
    from bipft_jax.data.glue import get_task, load_glue
    from bipft_jax.data.glue_metrics import task_metrics

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    spec = get_task(task)
    tok = BertTokenizer.from_pretrained(str(minilm))
    model = BertForSequenceClassification.from_pretrained(str(minilm), num_labels=spec.num_labels)
    glue = paths.default_glue_dir()
    train, dev = load_glue(task, "train", glue), load_glue(task, "dev", glue)
    train = train[:train_rows] if train_rows else train

    def encode(rows):
        enc = tok(
            [r.text_a for r in rows],
            [r.text_b for r in rows] if rows[0].text_b is not None else None,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        dtype = torch.float32 if spec.is_regression else torch.long
        return enc, torch.tensor([r.label for r in rows], dtype=dtype)

    def loss_of(logits, y):
        if spec.is_regression:
            return torch.nn.functional.mse_loss(logits[:, 0], y)
        return torch.nn.functional.cross_entropy(logits, y)

    per_epoch = len(train) // batch_size
    total = int(per_epoch * epochs)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)]},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]  # fmt: skip
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(0.1 * total), total)
    rng = np.random.default_rng(seed)
    model.train()
    order: np.ndarray = np.array([], np.int64)
    for step in range(total):
        if step % per_epoch == 0:
            order = rng.permutation(len(train))
        i = step % per_epoch
        enc, y = encode([train[j] for j in order[i * batch_size : (i + 1) * batch_size]])
        loss_of(model(**enc).logits, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if progress and (step + 1) % 25 == 0:
            done = time.perf_counter() - t0
            print(f"{task} seed {seed}: step {step + 1}/{total}, {done:.0f} s, "
                  f"ETA {done / (step + 1) * (total - step - 1):.0f} s", flush=True)  # fmt: skip
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(dev), 128):
            enc, _ = encode(dev[i : i + 128])
            preds.append(model(**enc).logits.numpy())
    metrics = task_metrics(task, np.concatenate(preds), np.array([r.label for r in dev]))
    return {"metrics": metrics, "steps": total, "wall_s": time.perf_counter() - t0}


def write(res: dict, results: Path = RESULTS) -> None:
    from bipft_jax.glue.study_table import FP_REFERENCE

    results.mkdir(parents=True, exist_ok=True)
    (results / "fp_reference_torch.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# The FP anchor in PyTorch, over seeds",
        "",
        "HF transformers + PyTorch fine-tuning of MiniLM-L6-H384 with the GLUE study's recipe "
        "(`benchmarks/fp_reference_torch.py`), last-epoch dev score ×100. `environment.md`'s "
        "single reference measurement is in the last column; the study's FP row (bipft_jax, "
        "seeds 1-3) is in `glue_study.md`.",
        "",
        f"Machine: {res['machine']}; torch {res['torch']}, transformers {res['transformers']}, "
        "2 threads.",
        "",
        "| task | metric | seeds | per seed | median [min, max] | environment.md (1 seed) "
        "| wall per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in sorted({r["task"] for r in res["runs"]}):
        runs = sorted((r for r in res["runs"] if r["task"] == task), key=lambda r: r["seed"])
        refs = FP_REFERENCE.get(task, {})  # environment.md's one-seed measurement
        shown = [k for k in runs[0]["metrics"] if k in refs] or ["main"]
        for metric in shown:
            vals = [100 * r["metrics"][metric] for r in runs]
            ref = refs.get(metric)
            lines.append(
                f"| {task} | {metric} | {','.join(str(r['seed']) for r in runs)} | "
                f"{', '.join(f'{v:.1f}' for v in vals)} | {statistics.median(vals):.1f} "
                f"[{min(vals):.1f}, {max(vals):.1f}] | {'—' if ref is None else ref} | "
                f"{statistics.median(r['wall_s'] for r in runs):.0f} s |"
            )
    (results / "fp_reference_torch.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="rte,cola,stsb,sst2")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--results", default=str(RESULTS))
    a = ap.parse_args()
    import torch
    import transformers
    from binary_linear import cpu_info

    from bipft_jax.paths import resolve_model_dir

    torch.set_num_threads(2)
    out = Path(a.results) / "fp_reference_torch.json"
    res = json.loads(out.read_text()) if out.exists() else {"runs": []}
    res.update(machine=cpu_info()["model_name"], torch=torch.__version__,
               transformers=transformers.__version__)  # fmt: skip
    tasks, minilm = study_tasks(), resolve_model_dir("minilm")
    for task in a.tasks.split(","):
        max_length, epochs, rows = tasks[task]
        for seed in (int(s) for s in a.seeds.split(",")):
            if any(r["task"] == task and r["seed"] == seed for r in res["runs"]):
                continue
            run = finetune_torch(minilm, task, seed, epochs, max_length, rows, progress=True)
            res["runs"].append({"task": task, "seed": seed, **run})
            print(json.dumps(res["runs"][-1]), flush=True)
            write(res, Path(a.results))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
