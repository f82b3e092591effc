"""The Hugging Face export is a complete model directory: AutoTokenizer and AutoModel load it,
tokenize real sentences as we do, and reproduce our hidden states and logits."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from bipft_jax import cli
from bipft_jax.data.tokenizer import BertTokenizer
from bipft_jax.export.hf_tokenizer import TOKENIZER_FILES
from tests.export.helpers import init_params, tiny_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _rte_pairs(shared, n=6):
    with open(shared / "glue_data/RTE/dev.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1 : n + 1]
    return [r[1] for r in rows], [r[2] for r in rows]


def test_export_loads_with_auto_classes_and_matches(tmp_path, shared_data):
    vocab = shared_data / "vocab/bert-base-uncased-vocab.txt"
    config = tiny_config("fp", vocab_size=30522, max_position=64)
    model, params = init_params(config, "classification", num_labels=2)
    out = tmp_path / "hf"
    from flax import traverse_util
    from safetensors.numpy import save_file

    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    save_file(flat, str(tmp_path / "p.safetensors"))
    argv = [
        "export",
        "--format",
        "hf",
        "--params",
        str(tmp_path / "p.safetensors"),
        "--preset",
        "fp",
        "--size",
        "tiny",
        "--vocab",
        str(vocab),
        "--out",
        str(out),
    ]
    argv += [
        x
        for k, v in dict(
            vocab_size=30522,
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            max_position=64,
        ).items()
        for x in ("--set", f"{k}={v}")
    ]
    assert cli.main(argv) == 0  # fmt: skip
    assert all((out / name).is_file() for name in TOKENIZER_FILES)
    umask = os.umask(0)
    os.umask(umask)  # the weights follow the umask like the other files (safetensors: 0600)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask

    a, b = _rte_pairs(shared_data)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert len(hf_tok) == 30522
    enc = hf_tok(a, b, truncation="longest_first", max_length=64, padding="max_length",
                 return_tensors="np")  # fmt: skip
    ours_enc = BertTokenizer.from_vocab(vocab).encode_batch(a, b, max_length=64)
    for k in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(enc[k], ours_enc[k], err_msg=k)

    inputs = [jnp.asarray(ours_enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
    ours = model.apply({"params": params}, *inputs)
    t_in = {k: torch.as_tensor(enc[k], dtype=torch.long) for k in enc}
    with torch.no_grad():
        base = transformers.AutoModel.from_pretrained(str(out)).eval()(**t_in)
        clf = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
        logits = clf(**t_in).logits.numpy()
    mask = ours_enc["attention_mask"][..., None].astype(bool)
    diff = np.abs(np.asarray(ours["last_hidden_state"]) - base.last_hidden_state.numpy())
    assert np.where(mask, diff, 0).max() <= 1e-4
    assert np.abs(np.asarray(ours["logits"]) - logits).max() <= 1e-4
    assert np.abs(logits).max() > 1e-3 and len(set(enc["input_ids"].ravel())) > 50


def test_export_without_a_vocabulary_is_refused(tmp_path):
    config = tiny_config("fp")
    _, params = init_params(config, "base")
    from flax import serialization

    f = tmp_path / "p.msgpack"
    f.write_bytes(serialization.msgpack_serialize(params))
    done = subprocess.run(
        [sys.executable, "-m", "bipft_jax.cli", "export", "--format", "hf", "--params", str(f),
         "--preset", "fp", "--size", "tiny", "--set", "vocab_size=97", "--set", "hidden_size=32",
         "--set", "num_layers=2", "--set", "num_heads=2", "--set", "intermediate_size=64",
         "--set", "max_position=16", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs the model's vocabulary (97 tokens)" in lines[0], lines
    assert not (tmp_path / "o").exists()
