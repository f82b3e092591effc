"""The data directory: `$BIPFT_DATA_DIR` or `bipft --data-dir`; `../shared/data` in a checkout."""

from pathlib import Path

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


@pytest.mark.parametrize("url", ["gs://b/r", "s3://b/r", "gs:/b/r"])
def test_local_path_refuses_urls_in_one_line(url):
    with pytest.raises(paths.UnsupportedPathError) as e:
        paths.local_path(url, "--workdir")
    msg = str(e.value)
    assert msg.startswith(f"--workdir {url!r}: {url.split(':')[0]}:// paths are not supported")
    assert "\n" not in msg


def test_local_path_keeps_local_paths(tmp_path):
    for p in ("runs/a", "/abs/x:y", "./c:d", str(tmp_path), tmp_path):
        assert paths.local_path(p, "x") == Path(p)


def test_url_sinks_refuse_before_writing(tmp_path, monkeypatch):
    """Checkpoints, metrics and the saved config never create the local dir `./gs:/b/r`."""
    from bipft_jax.checkpoint import CheckpointManager
    from bipft_jax.train.config_io import save_config
    from bipft_jax.train.metrics import MetricWriter
    from bipft_jax.train.pretrain import default_config

    monkeypatch.chdir(tmp_path)
    for make in (
        lambda: CheckpointManager("gs://b/r"),
        lambda: MetricWriter("gs://b/r", enabled=True),
        lambda: save_config(default_config(), "gs://b/r"),
    ):
        with pytest.raises(paths.UnsupportedPathError, match="gs:// paths are not supported"):
            make()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "what"),
    [
        ("--workdir=gs://b/run", "--workdir"),
        ("--config.data.prepared_dir=gs://b/prep", "config data.prepared_dir"),
        ("--config.data.files=('gs://b/c.txt',)", "config data.files entry"),
        ("--config.teacher.path=gs://b/bert", "config teacher.path"),
    ],
)
def test_pretrain_refuses_urls_in_one_line(tmp_path, monkeypatch, capsys, flag, what):
    import signal

    from bipft_jax.paths import source_checkout

    repo = source_checkout()
    assert repo is not None
    monkeypatch.chdir(tmp_path)
    old = signal.getsignal(signal.SIGTERM)
    argv = ["pretrain", "--config", str(repo / "configs/pretrain/tiny.py"),
            "--config.data.max_docs=20", "--workdir", "w", flag]  # fmt: skip
    if "teacher" in flag:
        argv.append("--config.teacher.source=hf")
    try:
        assert cli.main(argv) == 2
    finally:
        signal.signal(signal.SIGTERM, old)
    err = capsys.readouterr().err
    assert f"{what} 'gs://b/" in err and "gs:// paths are not supported yet" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "gs:").exists()
