"""`deployft serve`: flags and a config file fill one ServeConfig; bad input is one Error line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from deployft.cli import main
from deployft.serve.config import ServeConfig


@pytest.fixture
def captured(monkeypatch):
    import deployft.serve.server as server

    seen: list[ServeConfig] = []
    monkeypatch.setattr(server, "serve", seen.append)
    return seen


def test_flags_and_config_file_layer_into_one_config(tmp_path, captured, monkeypatch):
    monkeypatch.delenv("DEPLOYFT_API_KEY", raising=False)
    config = tmp_path / "serve.yaml"
    config.write_text("max_queue: 3\nmax-wait-ms: 20\nport: 9000\n")
    result = CliRunner().invoke(main, ["serve", str(tmp_path), "--config", str(config), "--port", "9100",
                                       "--max-batch-size", "1"])
    assert result.exit_code == 0, result.output
    (got,) = captured
    assert (got.max_queue, got.max_wait_ms, got.port, got.max_batch_size) == (3, 20, 9100, 1)
    assert got.host == "127.0.0.1" and got.api_key is None


def test_api_key_from_the_environment(tmp_path, captured, monkeypatch):
    monkeypatch.setenv("DEPLOYFT_API_KEY", "from-the-env")
    assert CliRunner().invoke(main, ["serve", str(tmp_path)]).exit_code == 0
    assert captured[0].api_key == "from-the-env"
    assert CliRunner().invoke(main, ["serve", str(tmp_path), "--api-key", "given-flag"]).exit_code == 0
    assert captured[1].api_key == "given-flag"


@pytest.mark.parametrize("flags,words", [
    (["--max-batch-size", "0"], "--max-batch-size"),
    (["--max-queue", "-1"], "--max-queue"),
    (["--port", "70000"], "--port 8000"),
    (["--max-wait-ms", "-5"], "--max-wait-ms"),
    (["--prefix-cache-mb", "-1"], "--prefix-cache-mb 128 (0 turns it off)"),
    (["--request-timeout", "0"], "--request-timeout"),
    (["--max-wait-ms", "inf"], "max_wait_ms must be a finite number >= 0, got inf; pass --max-wait-ms 5"),
    (["--request-timeout", "nan"], "--request-timeout"),
    (["--grace", "inf"], "--grace"),
    (["--api-key", "short"], "at least 8 characters"),
])
def test_bad_flags_are_one_error_line(tmp_path, captured, flags, words):
    result = CliRunner().invoke(main, ["serve", str(tmp_path), *flags])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and words in result.output
    assert result.output.count("\n") == 1 and captured == []


def test_unknown_config_option(tmp_path, captured):
    config = tmp_path / "serve.toml"
    config.write_text("max_batch = 4\n")
    result = CliRunner().invoke(main, ["serve", str(tmp_path), "--config", str(config)])
    assert result.exit_code == 1 and "unknown option(s) max_batch" in result.output


def test_a_folder_that_is_not_a_bundle(tmp_path):
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "missing")])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "missing" in result.output
    assert "Traceback" not in result.output


def test_a_public_key_refuses_an_unsigned_bundle_before_serving(runtime_bundle, tmp_path):
    from deployft.signing import generate_keys

    _, public = generate_keys(tmp_path / "key.pem", tmp_path / "key.pub.pem")
    bundle = runtime_bundle("gpt2")
    result = CliRunner().invoke(main, ["serve", str(bundle), "--public-key", str(public), "--port", "0"])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "deployft.json.sig" in result.output and "Traceback" not in result.output


def test_a_port_in_use_is_one_error_line_before_the_model_loads(runtime_bundle, monkeypatch):
    import socket

    import deployft.serve.app as app

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the port was taken")

    monkeypatch.setattr(app, "create_app", never)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", str(runtime_bundle("bert")), "--port", str(port)])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output == (f"Error: --port {port} on 127.0.0.1 is in use (another program listens there); pass "
                             "another --port, or stop that program\n")
