"""`bipft stats` reproduces the papers' BERT-base accounting (methods.md §7, performance.md §4)."""

import json

import pytest

from bipft_jax.model import stats
from bipft_jax.model.presets import get_model_config


@pytest.fixture(scope="module")
def base_reports():
    out = {}
    for preset in ("fp", "bibert", "bipft"):
        cfg = get_model_config(preset, "base")
        out[preset] = {**stats.size_report(cfg), **stats.flops_report(cfg, seq=128)}
    return out


def test_fp_bert_base_params_size_flops(base_reports):
    r = base_reports["fp"]
    assert r["params"] == 109_482_240
    assert r["params_by_kind"]["word_embedding"] == 30522 * 768
    assert round(r["fp32_mib"], 1) == 417.6
    assert round(r["packed_mib"], 1) == 417.6  # nothing binarized
    assert round(r["all_matrices_1bit_mib"], 2) == 13.50  # "≈31x" (30.9x)
    assert 30.5 < r["all_matrices_1bit_ratio"] < 31.3
    assert round(r["flops_fp"] / 1e9, 2) == 22.35
    assert r["binary_macs"] == 0


def test_bibert_keep_in_fp_size_and_convention_flops(base_reports):
    r = base_reports["bibert"]
    assert r["params"] == 109_482_240  # sign/bool binarizers have no parameters
    assert round(r["packed_mib"], 2) == 14.96
    assert round(r["packed_ratio"], 1) == 27.9
    assert r["binary_macs"] == 11_174_215_680  # every linear (incl. pooler, 1 token), QKᵀ, P·V
    assert r["fp_macs"] == 0
    assert 0.35e9 < r["flops_binary_convention"] < 0.42e9  # "≈0.4 G"
    assert 53 < r["convention_ratio"] < 60  # "≈56x"


def test_bipft_extras_are_estimators_and_quantizer_params(base_reports):
    r, ref = base_reports["bipft"], base_reports["bibert"]
    assert r["params_by_kind"]["estimator"] == 46_140  # 5 x 769 x 12 (methods.md §3.3)
    extra = r["params"] - ref["params"]
    assert extra == r["params_by_kind"]["estimator"] + r["params_by_kind"]["quantizer"] + 1536
    assert r["packed_mib"] - ref["packed_mib"] == pytest.approx(extra * 4 / 2**20)
    assert 0.38e9 < r["flops_binary_convention"] < 0.43e9
    assert 52 < r["convention_ratio"] < 58  # the paper's "56x"


def test_cli_main_text_and_json(capsys):
    assert stats.main(["--preset", "bit", "--size", "tiny", "--seq", "32"]) == 0
    assert "packed (keep-in-FP)" in capsys.readouterr().out
    assert stats.main(["--preset", "fp", "--size", "tiny", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == data["params_backbone"] and data["seq"] == 128
    with pytest.raises(SystemExit):
        stats.main(["--preset", "nope"])
    args = ["--preset", "bipft", "--size", "tiny", "--json", "--set", "quant.estimators.rank=3"]
    assert stats.main([*args, "--set", "num_layers=1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params_by_kind"]["estimator"] == 1 * (4 * (128 * 3 + 3) + 129)
    with pytest.raises(SystemExit):  # unknown key -> argparse error naming it
        stats.main(["--size", "tiny", "--set", "quant.estimators.rnk=3"])
    assert "rnk" in capsys.readouterr().err


def test_parse_overrides_one_syntax_for_every_cli():
    from bipft_jax.model.presets import parse_overrides

    got = parse_overrides(
        ["num_layers=3", "layer_norm_eps=1e-5", "a=True", "b=true", "c=null", "d=(1, 2)", "e=relu"]
    )
    assert got == dict(
        num_layers=3, layer_norm_eps=1e-5, a=True, b=True, c=None, d=(1, 2), e="relu"
    )
    with pytest.raises(ValueError, match="--set expects KEY=VALUE, got 'num_layers'"):
        parse_overrides(["num_layers"])
