import json

import pytest

from bipft_jax.train import config_io
from bipft_jax.train.config_io import ConfigError

CONFIG = '''
import ml_collections


def get_config(arg=None):
    """Toy experiment; arg 'tiny' shrinks it."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.workdir_name = "run"
    c.use_scan = False
    c.init_from = None
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3
    c.optim.betas = (0.9, 0.999)
    c.optim.warmup_steps = 100
    c.model = ml_collections.ConfigDict({"hidden": 768, "layers": 12})
    if arg == "tiny":
        c.model.hidden, c.model.layers = 64, 2
    return c
'''


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(CONFIG)
    return path


def test_load_with_arg_and_typed_overrides(cfg_file):
    cfg = config_io.load_config(
        f"{cfg_file}:tiny",
        [
            "--config.optim.lr=1e-4",
            "--config.optim.warmup_steps=7",
            "config.use_scan=true",
            "--config.optim.betas=(0.8, 0.99)",
            "--config.init_from=/ckpt/dir",
            "--config.mesh.fsdp=-1",
        ],
    )
    assert cfg.model.hidden == 64 and cfg.model.layers == 2
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.warmup_steps == 7 and cfg.use_scan is True
    assert cfg.optim.betas == (0.8, 0.99)
    assert cfg.init_from == "/ckpt/dir" and cfg.mesh.fsdp == -1
    assert config_io.load_config(str(cfg_file)).model.hidden == 768


def test_unknown_key_names_key_and_close_matches(cfg_file):
    with pytest.raises(
        ConfigError, match=r"unknown config key 'optim\.lrr'; did you mean optim\.lr"
    ):
        config_io.load_config(str(cfg_file), ["--config.optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"'optm\.lr'; did you mean optim\.lr.*keys: .*optim"):
        config_io.load_config(str(cfg_file), ["--config.optm.lr=1"])
    with pytest.raises(ConfigError, match="'model' is a group"):
        config_io.load_config(str(cfg_file), ["--config.model=3"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=fast", r"'optim\.lr' expects float, got 'fast'"),
        ("optim.warmup_steps=1.5", r"'optim\.warmup_steps' expects int, got '1\.5'"),
        ("use_scan=maybe", r"'use_scan' expects bool \(true/false\), got 'maybe'"),
        ("optim.betas=0.9", r"'optim\.betas' expects tuple"),
        ("optim.lr", "must look like --config.some.key=value"),
    ],
)
def test_wrong_types_are_rejected(cfg_file, override, message):
    with pytest.raises(ConfigError, match=message):
        config_io.load_config(str(cfg_file), [override])


def test_config_from_argv_splits_argv(cfg_file):
    argv = [
        "--workdir",
        "/w",
        "--config",
        f"{cfg_file}:tiny",
        "--config.seed",
        "3",
        "--config.optim.lr=2e-5",
        "--distributed",
    ]
    cfg, rest = config_io.config_from_argv(argv)
    assert cfg.seed == 3 and cfg.optim.lr == pytest.approx(2e-5)
    assert rest == ["--workdir", "/w", "--distributed"]
    with pytest.raises(ConfigError, match="missing --config"):
        config_io.config_from_argv(["--config.seed=1"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.py does not exist"):
        config_io.load_config(str(tmp_path / "nope.py"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="empty.py defines no get_config"):
        config_io.load_config(str(tmp_path / "empty.py"))
    (tmp_path / "noarg.py").write_text(
        "import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict()\n"
    )
    with pytest.raises(ConfigError, match=r"takes no argument, got 'tiny'"):
        config_io.load_config(f"{tmp_path / 'noarg.py'}:tiny")


def test_save_hash_and_reload(cfg_file, tmp_path, capsys):
    cfg = config_io.load_config(str(cfg_file))
    h = config_io.config_hash(cfg)
    assert len(h) == 12 and int(h, 16) >= 0
    assert config_io.config_hash(config_io.load_config(str(cfg_file))) == h  # stable
    changed = config_io.load_config(str(cfg_file), ["--config.optim.lr=2e-3"])
    assert config_io.config_hash(changed) != h
    path = config_io.save_config(cfg, tmp_path / "work")
    data = json.loads(path.read_text())
    assert data["optim"]["lr"] == pytest.approx(1e-3) and data["optim"]["betas"] == [0.9, 0.999]
    assert (tmp_path / "work" / "config_hash.txt").read_text().strip() == h
    reloaded = config_io.load_saved_config(tmp_path / "work")
    assert config_io.config_hash(reloaded) == h
    with pytest.raises(AttributeError):
        reloaded.new_key = 1  # locked
    config_io.print_config(cfg)
    assert '"warmup_steps": 100' in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{\n oops")
    with pytest.raises(ConfigError, match=r"bad.json is not valid JSON \(line 2\)"):
        config_io.load_saved_config(tmp_path / "bad.json")
