from dataclasses import dataclass

import pytest

from deployft.configfile import build_config, read_config_file
from deployft.errors import UsageError


@dataclass
class _Cfg:
    epochs: int = 3
    lr: float = 1e-3
    name: str = "x"


def test_defaults_then_file_then_flags(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("epochs: 5\nlr: 0.1\n")
    cfg = build_config(_Cfg, yaml_file, lr=0.5, name=None)
    assert (cfg.epochs, cfg.lr, cfg.name) == (5, 0.5, "x")


def test_toml_and_dashes(tmp_path):
    toml_file = tmp_path / "c.toml"
    toml_file.write_text('epochs = 2\nname = "y"\n')
    assert read_config_file(toml_file) == {"epochs": 2, "name": "y"}
    yaml_file = tmp_path / "d.yml"
    yaml_file.write_text("max-length: 7\n")
    assert read_config_file(yaml_file) == {"max_length": 7}


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("c.yaml", "epochs: [1, 2\n", "could not be parsed"),
        ("c.ini", "epochs=1", "use .yaml, .yml, .toml or .json"),
        ("c.yaml", "- 1\n- 2\n", "must hold a mapping"),
        ("c.yaml", "epoch: 1\n", "unknown option"),
    ],
)
def test_bad_config_files(tmp_path, name, body, message):
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(UsageError, match=message):
        build_config(_Cfg, path)


def test_missing_config_file(tmp_path):
    with pytest.raises(UsageError, match="not found; pass an existing file to --config"):
        build_config(_Cfg, tmp_path / "missing.yaml")
