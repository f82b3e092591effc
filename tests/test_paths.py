"""The data directory: `$BIPFT_DATA_DIR` or `bipft --data-dir`; `../shared/data` in a checkout."""

import pytest

from bipft_jax import cli, paths


def test_env_wins(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.DATA_ENV_VAR, str(tmp_path))
    assert paths.shared_data_dir() == tmp_path.resolve()
    assert paths.default_glue_dir() == tmp_path.resolve() / "glue_data"


def test_checkout_fallback_and_installed_error(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.DATA_ENV_VAR, raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setattr(paths, "_REPO_ROOT", repo)
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        paths.default_vocab_file()  # an installed package: no guessing
    (repo / "pyproject.toml").write_text("")
    assert paths.shared_data_dir() == tmp_path / "shared" / "data"


@pytest.mark.parametrize("form", (["--data-dir", "D"], ["--data-dir=D"]))
def test_cli_data_dir_flag(tmp_path, monkeypatch, capsys, form):
    monkeypatch.setenv(paths.DATA_ENV_VAR, "unset")
    argv = [a.replace("D", str(tmp_path)) for a in form]
    assert cli.main([*argv, "help"]) == 0
    assert paths.shared_data_dir() == tmp_path.resolve()
    assert cli.main(["--data-dir"]) == 2
    assert "--data-dir needs a directory" in capsys.readouterr().err
