"""GLUE tasks: a spec table, local TSV / TFDS readers, encoding, and submission files.

Local files follow the standard `glue_data/<TASK>/<split>.tsv` layout written by the usual GLUE
download script. Label ids are the position in `TaskSpec.labels`, identical for both sources.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bipft_jax import paths


@dataclasses.dataclass(frozen=True)
class Columns:
    """Where a split's fields live (0-based; label -1 = last column; None = absent)."""

    file: str
    header: bool
    text_a: int
    text_b: int | None
    label: int | None
    n_columns: int | None = None  # exact count when there is no header to compare with


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    dir: str
    splits: dict[str, Columns]
    labels: tuple[str, ...]  # empty for regression
    metrics: tuple[str, ...]
    main_metric: str
    submission_files: dict[str, str]  # test split -> submission file name
    tfds_name: str
    tfds_splits: dict[str, str]  # our split -> TFDS split
    tfds_text: tuple[str, str | None]
    # TFDS ClassLabel names in TFDS id order, each with the label string it means in our files.
    tfds_labels: tuple[tuple[str, str], ...] = ()

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.labels)

    def tfds_label_map(self) -> np.ndarray:
        """TFDS label id -> our label id."""
        return np.array([self.labels.index(ours) for _, ours in self.tfds_labels], np.int32)


_NLI3 = ("contradiction", "entailment", "neutral")
_NLI2 = ("entailment", "not_entailment")
_BIN = ("0", "1")
_TFDS_NLI3 = tuple((n, n) for n in ("entailment", "neutral", "contradiction"))
_TFDS_NLI2 = tuple((n, n) for n in _NLI2)
_STD = {"train": "train", "dev": "validation", "test": "test"}


def _bin(name0: str, name1: str) -> tuple[tuple[str, str], ...]:
    return ((name0, "0"), (name1, "1"))


def _pair(label: int | None = -1, a: int = 1, b: int | None = 2, file: str = "") -> Columns:
    return Columns(file, True, a, b, label)


def _std_splits(train_dev: Columns, test: Columns) -> dict[str, Columns]:
    return {
        "train": dataclasses.replace(train_dev, file="train.tsv"),
        "dev": dataclasses.replace(train_dev, file="dev.tsv"),
        "test": dataclasses.replace(test, file="test.tsv"),
    }


_MNLI_SPLITS = {
    "train": Columns("train.tsv", True, 8, 9, -1),
    "dev_matched": Columns("dev_matched.tsv", True, 8, 9, -1),
    "dev_mismatched": Columns("dev_mismatched.tsv", True, 8, 9, -1),
    "test_matched": Columns("test_matched.tsv", True, 8, 9, None),
    "test_mismatched": Columns("test_mismatched.tsv", True, 8, 9, None),
}

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            "cola", "CoLA",
            _std_splits(Columns("", False, 3, None, 1, n_columns=4), _pair(None, 1, None)),
            _BIN, ("mcc", "accuracy"), "mcc", {"test": "CoLA.tsv"},
            "glue/cola", _STD, ("sentence", None), _bin("unacceptable", "acceptable"),
        ),
        TaskSpec(
            "sst2", "SST-2", _std_splits(_pair(1, 0, None), _pair(None, 1, None)),
            _BIN, ("accuracy",), "accuracy", {"test": "SST-2.tsv"},
            "glue/sst2", _STD, ("sentence", None), _bin("negative", "positive"),
        ),
        TaskSpec(
            "mrpc", "MRPC", _std_splits(_pair(0, 3, 4), _pair(None, 3, 4)),
            _BIN, ("f1", "accuracy", "combined"), "combined", {"test": "MRPC.tsv"},
            "glue/mrpc", _STD, ("sentence1", "sentence2"), _bin("not_equivalent", "equivalent"),
        ),
        TaskSpec(
            "stsb", "STS-B", _std_splits(_pair(-1, 7, 8), _pair(None, 7, 8)),
            (), ("pearson", "spearman", "combined"), "combined", {"test": "STS-B.tsv"},
            "glue/stsb", _STD, ("sentence1", "sentence2"),
        ),
        TaskSpec(
            "qqp", "QQP", _std_splits(_pair(5, 3, 4), _pair(None, 1, 2)),
            _BIN, ("f1", "accuracy", "combined"), "combined", {"test": "QQP.tsv"},
            "glue/qqp", _STD, ("question1", "question2"), _bin("not_duplicate", "duplicate"),
        ),
        TaskSpec(
            "mnli", "MNLI", _MNLI_SPLITS, _NLI3, ("accuracy",), "accuracy",
            {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
            "glue/mnli",
            {"train": "train", "dev_matched": "validation_matched",
             "dev_mismatched": "validation_mismatched", "test_matched": "test_matched",
             "test_mismatched": "test_mismatched"},
            ("premise", "hypothesis"), _TFDS_NLI3,
        ),
        TaskSpec(
            "qnli", "QNLI", _std_splits(_pair(), _pair(None)),
            _NLI2, ("accuracy",), "accuracy", {"test": "QNLI.tsv"},
            "glue/qnli", _STD, ("question", "sentence"), _TFDS_NLI2,
        ),
        TaskSpec(
            "rte", "RTE", _std_splits(_pair(), _pair(None)),
            _NLI2, ("accuracy",), "accuracy", {"test": "RTE.tsv"},
            "glue/rte", _STD, ("sentence1", "sentence2"), _TFDS_NLI2,
        ),
        TaskSpec(
            "wnli", "WNLI", _std_splits(_pair(), _pair(None)),
            _BIN, ("accuracy",), "accuracy", {"test": "WNLI.tsv"},
            "glue/wnli", _STD, ("sentence1", "sentence2"), _bin("not_entailment", "entailment"),
        ),
        TaskSpec(
            "ax", "diagnostic", {"test": _pair(None, file="diagnostic.tsv")},
            _NLI3, ("accuracy",), "accuracy", {"test": "AX.tsv"},
            "glue/ax", {"test": "test"}, ("premise", "hypothesis"),
            _TFDS_NLI3,
        ),
    ]
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Example:
    guid: str
    text_a: str
    text_b: str | None
    label: int | float | None  # class id, float score (STS-B), or None (test)


class GlueDataError(ValueError):
    """A GLUE file or directory that cannot be read; the message names the file and line."""


def get_task(task: str) -> TaskSpec:
    key = task.lower().replace("-", "")
    if key not in TASKS:
        raise KeyError(f"unknown GLUE task {task!r}; known: {', '.join(TASKS)}")
    return TASKS[key]


def _label_to_id(spec: TaskSpec, value: str, where: str) -> int | float:
    if spec.is_regression:
        try:
            score = float(value)
        except ValueError:
            raise GlueDataError(f"{where}: label {value!r} is not a number") from None
        if not math.isfinite(score):
            raise GlueDataError(f"{where}: label {value!r} is not finite")
        return score
    if value not in spec.labels:
        raise GlueDataError(f"{where}: unknown label {value!r} (expected one of {spec.labels})")
    return spec.labels.index(value)


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise GlueDataError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None
            line = line.rstrip("\r\n")
            if line:
                rows.append((lineno, line.split("\t")))
    if not rows:
        raise GlueDataError(f"{path}: file is empty")
    return rows


def load_glue_local(
    task: str, split: str, data_dir: str | Path | None = None, skip_bad_rows: bool = False
) -> list[Example]:
    """Read `<data_dir>/<TASK>/<split file>`; bad rows raise, or are skipped (count printed)."""
    spec = get_task(task)
    if split not in spec.splits:
        raise KeyError(f"GLUE task {spec.name!r} has no split {split!r}; has {list(spec.splits)}")
    cols = spec.splits[split]
    root = Path(data_dir) if data_dir is not None else paths.default_glue_dir()
    task_dir = root / spec.dir
    if not task_dir.is_dir():
        raise GlueDataError(f"GLUE directory for {spec.name} not found: {task_dir}")
    path = task_dir / cols.file
    if not path.is_file():
        raise GlueDataError(f"GLUE {spec.name} split {split!r}: file not found: {path}")
    rows = _read_rows(path)
    n_expected = cols.n_columns
    if cols.header:
        n_expected = len(rows[0][1])
        rows = rows[1:]
    needed = max(c for c in (cols.text_a, cols.text_b, cols.label or 0) if c is not None) + 1
    examples: list[Example] = []
    skipped = 0
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        try:
            if (n_expected is not None and len(row) != n_expected) or len(row) < needed:
                raise GlueDataError(
                    f"{where}: expected {n_expected or needed} tab-separated columns, "
                    f"got {len(row)}"
                )
            label = None if cols.label is None else _label_to_id(spec, row[cols.label], where)
        except GlueDataError:
            if not skip_bad_rows:
                raise
            skipped += 1
            continue
        text_b = row[cols.text_b] if cols.text_b is not None else None
        examples.append(Example(f"{split}-{len(examples)}", row[cols.text_a], text_b, label))
    if skipped:
        print(f"glue: skipped {skipped} bad row(s) of {len(rows)} in {path}")
    if not examples:
        raise GlueDataError(f"{path}: no usable rows")
    return examples


def load_glue_tfds(task: str, split: str, tfds_data_dir: str | None = None) -> list[Example]:
    """Read a prepared TFDS `glue/<task>` dataset (array_record format) without TensorFlow."""
    spec = get_task(task)
    if split not in spec.tfds_splits:
        raise KeyError(
            f"GLUE task {spec.name!r} has no split {split!r}; has {list(spec.tfds_splits)}"
        )
    import tensorflow_datasets as tfds
    import tensorflow_datasets.text.glue  # noqa: F401  (registers the builders without TF)

    try:
        builder = tfds.builder(spec.tfds_name, data_dir=tfds_data_dir)
        source = builder.as_data_source(split=spec.tfds_splits[split])
    except Exception as e:  # TFDS raises assorted errors for missing / unprepared data
        raise GlueDataError(
            f"TFDS dataset {spec.tfds_name!r} (split {spec.tfds_splits[split]!r}) is not "
            f"available in data_dir={tfds_data_dir!r}: {type(e).__name__}: {e}. Prepare it with "
            "TensorFlow installed, or use source='local'."
        ) from e
    return [tfds_record_to_example(spec, split, i, r) for i, r in enumerate(source)]


def tfds_record_to_example(spec: TaskSpec, split: str, index: int, record: dict) -> Example:
    """Map one TFDS GLUE record (bytes or str fields) to an `Example` with our label ids."""

    def text(key: str | None) -> str | None:
        if key is None:
            return None
        v = record[key]
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)

    raw = record.get("label", -1)
    if spec.is_regression:
        label: int | float | None = None
        if split != "test":
            label = _label_to_id(spec, str(float(raw)), f"TFDS {spec.name} {split} record {index}")
    else:
        label = None if int(raw) < 0 else int(spec.tfds_label_map()[int(raw)])
    return Example(
        f"{split}-{index}", text(spec.tfds_text[0]) or "", text(spec.tfds_text[1]), label
    )


def load_glue(
    task: str,
    split: str,
    data_dir: str | Path | None = None,
    source: str = "local",
    tfds_data_dir: str | None = None,
    skip_bad_rows: bool = False,
) -> list[Example]:
    """Examples of one GLUE task split from local TSVs (`source="local"`) or TFDS."""
    if source == "local":
        return load_glue_local(task, split, data_dir, skip_bad_rows=skip_bad_rows)
    if source == "tfds":
        return load_glue_tfds(task, split, tfds_data_dir)
    raise ValueError(f"unknown GLUE source {source!r}; use 'local' or 'tfds'")


def encode_glue(
    examples: Sequence[Example], tokenizer, max_length: int = 128, regression: bool | None = None
) -> dict[str, np.ndarray]:
    """Padded int32 token arrays plus `labels` (int32 ids, or float32 for regression)."""
    has_b = any(e.text_b is not None for e in examples)
    out = tokenizer.encode_batch(
        [e.text_a for e in examples],
        [e.text_b for e in examples] if has_b else None,
        max_length=max_length,
    )
    if regression is None:
        regression = any(isinstance(e.label, float) for e in examples)
    if regression:
        out["labels"] = np.array(
            [np.nan if e.label is None else e.label for e in examples], np.float32
        )
    else:
        out["labels"] = np.array([-1 if e.label is None else e.label for e in examples], np.int32)
    return out


def write_submission(
    task: str, predictions: Sequence[int | float], out_dir: str | Path, split: str | None = None
) -> Path:
    """Write `<TASK>.tsv` (`index<TAB>prediction`) in the GLUE server format; returns its path.

    Classification predictions are label ids (written as label strings); STS-B gets floats.
    MNLI needs `split` = "test_matched" (MNLI-m.tsv) or "test_mismatched" (MNLI-mm.tsv).
    """
    spec = get_task(task)
    if split is None:
        if len(spec.submission_files) != 1:
            raise ValueError(
                f"task {spec.name!r} needs split= one of {list(spec.submission_files)}"
            )
        split = next(iter(spec.submission_files))
    if split not in spec.submission_files:
        raise ValueError(f"no submission file for {spec.name!r} split {split!r}")
    out = Path(out_dir) / spec.submission_files[split]
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["index\tprediction"]
    for i, p in enumerate(predictions):
        if spec.is_regression:
            lines.append(f"{i}\t{float(p):.3f}")
        else:
            if not 0 <= int(p) < len(spec.labels):
                raise ValueError(f"{spec.name} prediction {i}: label id {p} out of range")
            lines.append(f"{i}\t{spec.labels[int(p)]}")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
