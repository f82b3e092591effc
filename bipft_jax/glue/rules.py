"""Per-paper evaluation rules of GLUE fine-tuning: which dev number picks the best checkpoint,
when MNLI-mismatched is scored, and the BiBERT reference's student-dropout quirk.

    rules = eval_rules(cfg.eval.selection, cfg.eval.mnli_mm, task)
    score = rules.score(metrics)           # metrics: {dev split: task_metrics(...)}
    results["eval_rules"] = rules.record()

Selections (methods.md §5.2, §11):
  main    ours: the task's main metric of the first dev split (MRPC/QQP: (acc+F1)/2, STS-B:
          (Pearson+Spearman)/2), the GLUE-server convention.
  bit     BiT (`kd_learner_glue.py:293-303`, `utils_glue.py:606-613`): accuracy for every
          accuracy task incl. MRPC/QQP, (Pearson+Spearman)/2 for STS-B, MCC for CoLA.
  bibert  BiBERT (`quant_task_glue.py:304-306, 666-680`): the same rule as BiT.
  bipft   BiPFT (`run_glue_no_trainer_bnn_dist_direct.py:591-603`): the first key of the HF
          `glue` metric: accuracy (MRPC/QQP), Pearson (STS-B), Matthews correlation (CoLA).
MNLI-mm timing: `every` (ours: each evaluation scores both dev sets), `when_best` (BiT, BiBERT:
mm only when matched improves; the best checkpoint's mm equals `every`'s), `final` (BiPFT: mm
once, on the final model, `:649-667`; the best checkpoint has no mm number).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

Metrics = Mapping[str, Mapping[str, float]]  # dev split -> metric name -> value

SELECTIONS = ("main", "bit", "bibert", "bipft")
MNLI_MM = ("every", "when_best", "final")
STUDENT_DROPOUT = ("always", "bibert_quirk")
_MISMATCHED = "dev_mismatched"

# (metric key of `task_metrics`, description) per selection and task; "*" = any other task.
_RULES: dict[str, dict[str, tuple[str, str]]] = {
    "main": {"*": ("main", "the task's main metric (GLUE-server convention)")},
    "bit": {
        "stsb": ("combined", "(Pearson + Spearman) / 2"),
        "cola": ("mcc", "Matthews correlation"),
        "*": ("accuracy", "accuracy"),
    },
    "bipft": {
        "stsb": ("pearson", "Pearson"),
        "cola": ("mcc", "Matthews correlation"),
        "*": ("accuracy", "accuracy"),
    },
}
_RULES["bibert"] = _RULES["bit"]
_SOURCES = {
    "main": "bipft_jax default",
    "bit": "BiT kd_learner_glue.py:293-303, utils_glue.py:606-613",
    "bibert": "BiBERT quant_task_glue.py:304-306, 666-680",
    "bipft": "BiPFT run_glue_no_trainer_bnn_dist_direct.py:591-603",
}


@dataclasses.dataclass(frozen=True)
class EvalRules:
    """How one task is evaluated and which checkpoint counts as the best."""

    selection: str
    task: str
    metric: str  # key of `task_metrics` read from the first (matched) dev split
    description: str
    mnli_mm: str

    def score(self, metrics: Metrics) -> float:
        """The selection score of one evaluation: `metric` of the first dev split."""
        first = next(iter(metrics.values()))
        return float(first[self.metric])

    def splits(self, available: Sequence[str], *, final: bool = False) -> list[str]:
        """Dev splits to score at an evaluation before its score is known (`final`: the run's
        last evaluation). `when_best` scores MNLI-mm afterwards, see `splits_if_improved`."""
        if self.mnli_mm == "every" or (self.mnli_mm == "final" and final):
            return list(available)
        return [s for s in available if s != _MISMATCHED]

    def splits_if_improved(self, available: Sequence[str]) -> list[str]:
        """Dev splits to score in addition when the score improved (`when_best`: MNLI-mm)."""
        return [s for s in available if s == _MISMATCHED and self.mnli_mm == "when_best"]

    def record(self) -> dict[str, str]:
        """What results.json stores about the rules used."""
        return {
            "selection": self.selection,
            "selection_metric": f"{self.metric}: {self.description}",
            "selection_source": _SOURCES[self.selection],
            "mnli_mm": self.mnli_mm,
        }


def eval_rules(selection: str, mnli_mm: str, task: str) -> EvalRules:
    """The rules of config keys `eval.selection` and `eval.mnli_mm` for a GLUE task name."""
    if selection not in SELECTIONS:
        raise ValueError(
            f"config key 'eval.selection': unknown {selection!r}; choose one of {SELECTIONS}"
        )
    if mnli_mm not in MNLI_MM:
        raise ValueError(f"config key 'eval.mnli_mm': unknown {mnli_mm!r}; choose one of {MNLI_MM}")
    key = task.lower().replace("-", "")
    table = _RULES[selection]
    metric, description = table.get(key, table["*"])
    return EvalRules(selection, key, metric, description, mnli_mm)


def student_dropout_on(
    step: int, *, mode: str, steps_per_epoch: int, eval_every: int, total_steps: int
) -> bool:
    """Whether the student trains with dropout at update `step` (0-based, before the update).

    `always`: yes (ours). `bibert_quirk`: the BiBERT reference calls `student.train()` at the
    start of each epoch only and `student.eval()` at every evaluation (`quant_task_glue.py:500,
    612`), so dropout is off from the first evaluation of an epoch to the epoch's end. It
    evaluates after the update that brings the update count to a multiple of `eval_every`, or
    to `total_steps - 1`. Call it on the host each step and run the train step with
    `deterministic = not student_dropout_on(...)`.
    """
    if mode not in STUDENT_DROPOUT:
        raise ValueError(
            f"config key 'train.student_dropout': unknown {mode!r}; choose one of {STUDENT_DROPOUT}"
        )
    if mode == "always":
        return True
    if steps_per_epoch < 1 or eval_every < 1:
        raise ValueError("student_dropout_on: steps_per_epoch and eval_every must be >= 1")
    start = (step // steps_per_epoch) * steps_per_epoch
    # Update counts s in (start, step] after which an evaluation ran in this epoch.
    first_eval = -(-(start + 1) // eval_every) * eval_every
    if start < total_steps - 1 <= step:
        first_eval = min(first_eval, total_steps - 1)
    return step < first_eval
