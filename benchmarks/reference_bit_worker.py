"""One training run of the BiT reference code (facebookresearch/bit), for `reference_control.py`.

    python benchmarks/reference_bit_worker.py --bit-repo PATH --task rte --seed 1 \\
        --model TEACHER_DIR --out RUN_DIR --epochs 3 --batch-size 32 --lr 2e-4 --max-length 128

Runs the reference's own `quant_task_distill_glue.main()` (its model, KD losses, BertAdam and
training loop, unmodified, imported from the checkout at ``--bit-repo``) with three seams:
- the training sampler yields bipft_jax's batch order for the seed (`glue.data.epoch_batches`),
  so both sides see the same rows in the same order and drop the same partial batch;
- evaluation runs the reference model over the reference's dev loader and scores the logits with
  both the reference's `compute_metrics` (which drives its own model selection) and bipft_jax's
  `task_metrics` (recorded, so both sides are scored by one function), at every evaluation the
  reference makes and once more after the last step (the reference never evaluates its end);
- the S3 download helpers the reference imports (boto3, requests) are stubbed when absent;
- every training step's total loss (read where the loop calls ``backward``) and logit-KD term
  (``soft_cross_entropy``) are recorded, to set beside bipft_jax's per-step losses.
Writes ``RUN_DIR/curve.json``: every evaluation with its optimizer step, the per-step training
losses, and the share of training rows whose token ids equal bipft_jax's encoding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REF_TASK = {"rte": "rte", "stsb": "sts-b", "cola": "cola", "sst2": "sst-2", "mrpc": "mrpc"}
GLUE_DIR = {"rte": "RTE", "stsb": "STS-B", "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC"}


def _stub_download_modules() -> None:
    """The reference's `file_utils` imports boto3/botocore/requests for hub downloads it never
    makes on local directories; give it empty modules where they are not installed."""
    for name in ("boto3", "requests", "botocore", "botocore.exceptions"):
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            module.ClientError = Exception  # type: ignore[attr-defined]
            sys.modules[name] = module


def _our_rows(task: str, max_length: int, data_dir: Path) -> dict[str, np.ndarray]:
    from bipft_jax import paths
    from bipft_jax.data.tokenizer import BertTokenizer
    from bipft_jax.glue import data as glue_data

    tok = BertTokenizer.from_vocab(str(paths.default_vocab_file()))
    return glue_data.load_split(glue_data.resolve_task(task), "train", tok, max_length, data_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bit-repo", required=True, type=Path)
    p.add_argument("--task", required=True, choices=sorted(REF_TASK))
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--model", required=True, type=Path, help="teacher = student init directory")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--max-length", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=None, help="GLUE root (default: shared data)")
    p.add_argument("--max-train-rows", type=int, default=0, help="first N rows only (smoke runs)")
    a = p.parse_args(argv)

    from bipft_jax import paths
    from bipft_jax.data.glue_metrics import task_metrics
    from bipft_jax.glue.data import epoch_batches, steps_per_epoch

    glue_root = a.data_dir or paths.default_glue_dir()
    repo = a.bit_repo.resolve()
    if not (repo / "quant_task_distill_glue.py").is_file():
        raise SystemExit(f"--bit-repo {repo}: no quant_task_distill_glue.py (not a BiT checkout)")
    sys.path.insert(0, str(repo))
    _stub_download_modules()
    import torch

    torch.set_num_threads(a.threads)
    import kd_learner_glue
    import quant_task_distill_glue as ref
    import utils_glue

    records: list[dict] = []
    features: dict[str, list] = {}
    order_n = [0]

    class OurOrder(torch.utils.data.Sampler):
        """bipft_jax's epoch order for the seed (full batches only), one epoch per iteration."""

        def __init__(self, data):
            self.n, self.epoch = len(data), 0
            order_n[0] = self.n

        def __len__(self):
            return steps_per_epoch(self.n, a.batch_size) * a.batch_size

        def __iter__(self):
            rows = epoch_batches(np.zeros(self.n), a.batch_size, a.seed, self.epoch).reshape(-1)
            self.epoch += 1
            return iter(rows.tolist())

    convert = ref.convert_examples_to_features

    def convert_and_keep(examples, *args, **kw):
        out = convert(examples, *args, **kw)
        features.setdefault("train", out)  # the first call encodes the training rows
        return out

    def do_eval(self, model, task_name, eval_dataloader, output_mode, eval_labels, num_labels):
        step = sys._getframe(1).f_locals.get("global_step")
        logits = []
        with torch.no_grad():
            for input_ids, input_mask, segment_ids, _, _ in eval_dataloader:
                logits.append(model(input_ids, segment_ids, input_mask)[0].numpy())
        z, labels = np.concatenate(logits), eval_labels.numpy()
        preds = np.argmax(z, 1) if output_mode == "classification" else np.squeeze(z, 1)
        result = utils_glue.compute_metrics(task_name, preds, labels)
        who = "teacher" if model is self.teacher_model else "student"
        if who == "student" and step is None:  # the evaluation added after the last step
            step = self.num_train_optimization_steps
        records.append({"who": who, "step": step, "metrics": task_metrics(a.task, z, labels),
                        "reference_metrics": {k: float(v) for k, v in result.items()},
                        "seconds": round(time.time() - t0, 1)})  # fmt: skip
        shown = json.dumps(records[-1]["metrics"])
        print(f"[reference {a.task} s{a.seed}] {who} step {step} {shown}", flush=True)
        result["eval_loss"] = 0.0
        return result

    train = kd_learner_glue.KDLearner.train
    losses: dict[str, list[float]] = {"loss": [], "logit_kd": []}
    backward, soft_ce = torch.Tensor.backward, kd_learner_glue.soft_cross_entropy

    def record_backward(self, *args, **kw):  # only the training loop calls backward
        losses["loss"].append(float(self.detach()))
        return backward(self, *args, **kw)

    def record_soft_ce(*args, **kw):
        out = soft_ce(*args, **kw)
        losses["logit_kd"].append(float(out.detach()))
        return out

    def train_then_final_eval(self, train_examples, task_name, output_mode, eval_labels, num_labels,
                              train_dataloader, eval_dataloader, *rest, **kw):  # fmt: skip
        train(self, train_examples, task_name, output_mode, eval_labels, num_labels,
              train_dataloader, eval_dataloader, *rest, **kw)  # fmt: skip
        self.student_model.eval()
        self._do_eval(self.student_model, task_name, eval_dataloader, output_mode, eval_labels,
                      num_labels)  # fmt: skip

    if a.max_train_rows:
        for cls in utils_glue.processors.values():
            get = cls.get_train_examples
            cls.get_train_examples = lambda self, d, get=get: get(self, d)[: a.max_train_rows]
    ref.RandomSampler = OurOrder
    ref.convert_examples_to_features = convert_and_keep
    kd_learner_glue.KDLearner._do_eval = do_eval
    kd_learner_glue.KDLearner.train = train_then_final_eval
    torch.Tensor.backward = record_backward
    kd_learner_glue.soft_cross_entropy = record_soft_ce

    a.out.mkdir(parents=True, exist_ok=True)
    vocab_dir = a.model  # the directory carries vocab.txt
    args = [
        "--data_dir", str(glue_root / GLUE_DIR[a.task]), "--task_name", REF_TASK[a.task],
        "--teacher_model", str(a.model), "--student_model", str(a.model),
        "--vocab_dir", str(vocab_dir), "--output_dir", str(a.out / "reference"),
        "--job_id", f"s{a.seed}", "--seed", str(a.seed), "--no_cuda",
        "--num_train_epochs", str(a.epochs), "--batch_size", str(a.batch_size),
        "--learning_rate", str(a.lr), "--max_seq_length", str(a.max_length),
        # scripts/run_glue.sh's flags; eval_step = one epoch (the control's cadence)
        "--warmup_proportion", "0.1", "--ACT2FN", "relu", "--distill_rep",
        "--weight_bits", "1", "--weight_quant_method", "bwn", "--input_bits", "1",
        "--input_quant_method", "elastic", "--clip_lr", "1e-4", "--weight_decay", "0.01",
        "--learnable_scaling", "--eval_step", str(10**9),
    ]  # fmt: skip
    t0 = time.time()
    n_rows = len(utils_glue.processors[REF_TASK[a.task]]().get_train_examples(
        str(glue_root / GLUE_DIR[a.task])))  # fmt: skip
    per_epoch = steps_per_epoch(n_rows, a.batch_size)
    args[args.index("--eval_step") + 1] = str(per_epoch)
    sys.argv = ["quant_task_distill_glue.py", *args]
    ref.main()
    ours = _our_rows(a.task, a.max_length, glue_root)
    if a.max_train_rows:
        ours = {k: v[: a.max_train_rows] for k, v in ours.items()}
    theirs = np.array([f.input_ids for f in features["train"]])
    same = float(np.mean(np.all(theirs == ours["input_ids"], 1))) if theirs.shape == ours[
        "input_ids"].shape else 0.0  # fmt: skip
    curve = {
        "task": a.task, "seed": a.seed, "side": "reference", "epochs": a.epochs,
        "batch_size": a.batch_size, "lr": a.lr, "max_length": a.max_length,
        "steps_per_epoch": per_epoch, "train_rows": order_n[0], "token_ids_equal": same,
        "evals": records, "train_losses": losses, "seconds": round(time.time() - t0, 1),
        "bit_repo": str(repo),
        "torch": torch.__version__, "threads": a.threads,
    }  # fmt: skip
    (a.out / "curve.json").write_text(json.dumps(curve, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
