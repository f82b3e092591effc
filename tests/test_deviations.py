"""docs/deviations.md is the truth about the parity configs: every switch value in its table is
checked in the configs it names (parity configs left of "/", our defaults right of it)."""

import ast
import re
from pathlib import Path

import pytest

from bipft_jax.train.config_io import load_config

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deviations.md"
PARITY = ["pretrain/bipft_base_reference.py", "glue/bipft_reference.py", "glue/bit_reference.py",
          "glue/bit_multi_reference.py", "glue/bibert_reference.py"]  # fmt: skip
SWITCH = re.compile(r"^`([\w.]+)`: `([^`]+)` → `([^`]+)`$")


def _rows():
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| id | topic |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


ROWS = _rows()


def _specs(cell):
    return re.findall(r"`([^`]+)`", cell)


def _value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_table_shape():
    ids = [r["id"] for r in ROWS]
    assert len(ids) == len(set(ids)) and len(ids) >= 30
    for r in ROWS:
        assert re.search(r"\.(py|sh)\b|\.(py|sh):|processors", r["reference (file:line)"]), r["id"]
        if r["switch: reference → ours"] == "none":
            assert r["checked in: parity / ours"] == "—", r["id"]
        else:
            assert SWITCH.match(r["switch: reference → ours"]), r["id"]
    named = {s.split(":")[0] for r in ROWS for s in _specs(r["checked in: parity / ours"])}
    assert set(PARITY) <= named, set(PARITY) - named


@pytest.mark.parametrize("row", [r for r in ROWS if r["switch: reference → ours"] != "none"],
                         ids=lambda r: r["id"])  # fmt: skip
def test_configs_match_the_table(row):
    key, ref, ours = SWITCH.match(row["switch: reference → ours"]).groups()
    parity, _, default = row["checked in: parity / ours"].partition(" / ")
    assert _specs(parity), row["id"]
    for specs, want in ((_specs(parity), ref), (_specs(default), ours)):
        for spec in specs:
            cfg = load_config(str(ROOT / "configs" / spec))
            got = _value(cfg, key)
            assert got == ast.literal_eval(want), (
                f"{row['id']}: {spec} {key} = {got!r}, table {want}"
            )
