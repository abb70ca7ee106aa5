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


@dataclass
class _Typed:
    lr: float = 5e-5
    batch_size: int = 16
    max_samples: int | None = None
    lora: bool = False
    data: str | None = None
    sizes: tuple[int, ...] = (1, 8)


def _yaml(tmp_path, body: str):
    path = tmp_path / "c.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def test_file_values_take_their_fields_types(tmp_path):
    # YAML reads 5e-5 (no dot) as a string; a quoted "16" is one too
    cfg = build_config(_Typed, _yaml(tmp_path, 'lr: 5e-5\nbatch_size: "16"\nmax_samples: 100.0\nlora: "true"\n'
                                               "data: 2024\nsizes: [2, 4]\n"))
    assert (cfg.lr, cfg.batch_size, cfg.max_samples, cfg.lora, cfg.data) == (5e-5, 16, 100, True, "2024")
    assert type(cfg.batch_size) is int and cfg.sizes == [2, 4]  # a tuple field is left to the dataclass
    assert build_config(_Typed, _yaml(tmp_path, "max_samples: null\n")).max_samples is None


@pytest.mark.parametrize("body, message", [
    ("max_samples: 2.5\n", r"c.yaml: option max_samples must be a whole number or null, got 2.5 \(float\)"),
    ("batch_size: sixteen\n", r"option batch_size must be a whole number, got 'sixteen' \(str\); e.g. batch_size: 16"),
    ("lr: fast\n", r"option lr must be a number, got 'fast'"),
    ("lora: maybe\n", r"option lora must be true or false, got 'maybe'"),
    ("lora: 1\n", r"option lora must be true or false, got 1"),
    ("data: [a.csv]\n", r"option data must be text or null, got \['a.csv'\] \(list\)"),
    ("batch_size: true\n", r"option batch_size must be a whole number, got True"),
])
def test_file_values_of_the_wrong_type_name_key_and_file(tmp_path, body, message):
    with pytest.raises(UsageError, match=message):
        build_config(_Typed, _yaml(tmp_path, body))


def test_a_utf16_config_file_is_a_usage_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes("epochs: 3\n".encode("utf-16"))
    with pytest.raises(UsageError, match=r"config file .*c.yaml is not UTF-8 text .*save it as UTF-8"):
        build_config(_Cfg, path)


def test_finetune_config_file_values_are_converted_and_checked(tmp_path):
    from deployft.train import FinetuneConfig

    cfg = build_config(FinetuneConfig, _yaml(tmp_path, 'lr: 5e-5\nbatch_size: "16"\nepochs: 2\n'))
    assert (cfg.lr, cfg.batch_size, cfg.epochs) == (5e-5, 16, 2.0)
    with pytest.raises(UsageError, match="max_samples must be a whole number or null, got 2.5"):
        build_config(FinetuneConfig, _yaml(tmp_path, "max_samples: 2.5\n"))


def test_serve_config_keys_are_the_flags_names_and_the_fields_names_still_work(tmp_path):
    from deployft.serve.config import ServeConfig

    (tmp_path / "bundle").mkdir()
    flags = tmp_path / "flags.yaml"
    flags.write_text("request-timeout: 30\ngrace: 5\n")  # as --request-timeout and --grace name them
    config = build_config(ServeConfig, flags, bundle=tmp_path / "bundle")
    assert (config.request_timeout_s, config.grace_s) == (30.0, 5.0)
    fields = tmp_path / "fields.yaml"
    fields.write_text("request_timeout_s: 40\ngrace_s: 6\n")
    config = build_config(ServeConfig, fields, bundle=tmp_path / "bundle")
    assert (config.request_timeout_s, config.grace_s) == (40.0, 6.0)
    typo = tmp_path / "typo.yaml"
    typo.write_text("graces: 5\n")
    with pytest.raises(UsageError) as caught:
        build_config(ServeConfig, typo, bundle=tmp_path / "bundle")
    known = str(caught.value).split("known options: ")[1].split(", ")
    assert "grace" in known and "request_timeout" in known and "grace_s" not in known
