"""llama.cpp peers (deployft/bench/llama_cpp.py, LlamaCppBackend): llama.cpp's converter fetched once from the
release's source archive, a RUN converted and quantized by llama.cpp itself, and run through llama-cpp-python.

No test asserts a speed: the machines are shared and noisy.
"""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from deployft.bench import llama_cpp, peers
from deployft.errors import MissingDependencyError, StageError

HAS_LLAMA_CPP = all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "sentencepiece"))


def _archive(path: Path, names: list[str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            data = f"# {name}\n".encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_the_converter_is_unpacked_once_from_the_source_archive(tmp_path, monkeypatch):
    top = "llama_cpp_python-9.9.9/vendor/llama.cpp/"
    archive = _archive(tmp_path / "llama_cpp_python-9.9.9.tar.gz", [
        top + "convert_hf_to_gguf.py", top + "conversion/__init__.py", top + "gguf-py/gguf/__init__.py",
        top + "ggml/src/ggml.c", top + "convert_lora_to_gguf.py", "llama_cpp_python-9.9.9/setup.py"])
    downloads = []

    def download(version, into, root):
        downloads.append(version)
        return archive

    monkeypatch.setattr(llama_cpp, "_download_source", download)
    root = tmp_path / "converter"
    script = llama_cpp.converter("9.9.9", root)
    assert script == root / "convert_hf_to_gguf.py" and script.read_text() == f"# {top}convert_hf_to_gguf.py\n"
    unpacked = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert unpacked == ["conversion/__init__.py", "convert_hf_to_gguf.py", "deployft-converter.txt",
                        "gguf-py/gguf/__init__.py"]
    assert llama_cpp.converter("9.9.9", root) == script
    assert downloads == ["9.9.9"]


def test_an_archive_without_the_converter_is_refused(tmp_path, monkeypatch):
    archive = _archive(tmp_path / "llama_cpp_python-1.0.tar.gz", ["llama_cpp_python-1.0/setup.py"])
    monkeypatch.setattr(llama_cpp, "_download_source", lambda version, into, root: archive)
    with pytest.raises(StageError, match="holds no vendor/llama.cpp/convert_hf_to_gguf.py"):
        llama_cpp.converter("1.0", tmp_path / "converter")
    assert not (tmp_path / "converter").exists()


def test_a_half_unpacked_converter_is_replaced_whole(tmp_path, monkeypatch):
    top = "llama_cpp_python-2.0/vendor/llama.cpp/"
    archive = _archive(tmp_path / "llama_cpp_python-2.0.tar.gz", [top + "convert_hf_to_gguf.py"])
    monkeypatch.setattr(llama_cpp, "_download_source", lambda version, into, root: archive)
    root = tmp_path / "converter"
    (root / "conversion").mkdir(parents=True)
    (root / "convert_hf_to_gguf.py").write_text("trunc")  # an earlier run stopped before its marker
    assert llama_cpp.converter("2.0", root).read_text() == f"# {top}convert_hf_to_gguf.py\n"
    assert sorted(p.name for p in root.iterdir()) == ["convert_hf_to_gguf.py", "deployft-converter.txt"]
    assert [p.name for p in root.parent.iterdir() if p.name != archive.name] == ["converter"]


def test_a_missing_llama_cpp_names_the_extra_to_install(monkeypatch):
    real = importlib.util.find_spec
    hidden = {"llama_cpp", "sentencepiece"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    with pytest.raises(MissingDependencyError,
                       match=r'not installed: llama_cpp, sentencepiece; pip install "deployft\[llama-cpp\]"'):
        llama_cpp.require()


def test_an_offline_source_download_names_the_manual_fix(tmp_path, monkeypatch):
    def offline(command, what, env=None, timeout=None, fix=""):
        raise StageError(f"{what} failed (exit 1): ERROR: No matching distribution found" + (f"; {fix}" if fix else ""))

    monkeypatch.setattr(llama_cpp, "run_child", offline)
    with pytest.raises(StageError, match=r"No matching distribution found; it needs the package index once; or "
                                         r"unpack convert_hf_to_gguf.py, conversion/ and gguf-py/ .* into "):
        llama_cpp.converter("9.9.9", tmp_path / "converter")
    assert not (tmp_path / "converter").exists()


def _tiny_run(root: Path) -> Path:
    """A tiny llama with the default generator's tokenizer (one llama.cpp's converter recognizes)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from deployft.data.defaults import default_model

    source = default_model("generate")
    run = root / "run"
    run.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, run / name)
    tokenizer = AutoTokenizer.from_pretrained(run)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # logits that stand out from noise, so quantization error is small beside them
        model.model.embed_tokens.weight.mul_(20)
    model.save_pretrained(run)
    return run


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LLAMA_CPP, reason=f"llama-cpp-python not installed ({llama_cpp.INSTALL})")
def test_llama_cpp_peers_convert_the_run_and_match_its_logits(tmp_path):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from deployft.bench.peer_backends import make_peer_backend

    run = _tiny_run(tmp_path)
    built = peers.build_peers(["llama.cpp-q8_0", "llama.cpp-q4_0"], run, tmp_path / "peers", 1)
    ids = np.random.default_rng(0).integers(10, 2000, (2, 12))
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # a shorter second row, its padding on the left
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(run).eval()
        expected = [reference(torch.tensor(row[m.astype(bool)][None])).logits[0].numpy() for row, m in zip(ids, mask)]
    for name, file_type, closeness in (("llama.cpp-q8_0", 7, 0.999), ("llama.cpp-q4_0", 2, 0.95)):
        assert "error" not in built[name], built[name]
        folder = Path(built[name]["path"])
        reader = gguf.GGUFReader(folder / llama_cpp.GGUF)
        assert int(reader.fields["general.file_type"].parts[-1][0]) == file_type
        backend = make_peer_backend(name, built[name], 1)
        backend.load()
        logits = backend.forward(ids, mask)
        for row, (want, m) in enumerate(zip(expected, mask)):
            got = logits[row, m.astype(bool)]
            assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > closeness, name
            assert np.all(logits[row, ~m.astype(bool)] == 0)
        prompt = ids[0].tolist()
        tokens, times = backend.generate(prompt, 6)
        assert len(tokens) == len(times) == 6 and times == sorted(times)
        evaluated, real_eval = [], backend.model.eval
        backend.model.eval = lambda batch: (evaluated.append(len(batch)), real_eval(batch))[1]
        again, _ = backend.generate(prompt, 6)
        assert again == tokens and evaluated[0] == len(prompt)  # the whole prompt again: no cache reused
        long = np.random.default_rng(1).integers(10, 2000, (1, 530))
        for width in (520, 530):  # llama.cpp rounds a context of 520 up to 768; its logits buffer stays 520
            assert backend.forward(long[:, :width], np.ones((1, width), dtype=np.int64)).shape[1] == width
        assert backend.details()["file_type"] == {"llama.cpp-q8_0": "Q8_0", "llama.cpp-q4_0": "Q4_0"}[name]
        # the tiny RUN ties its LM head to the embedding, so every tensor is read per token
        assert backend.weight_bytes_per_token() == sum(int(t.n_bytes) for t in reader.tensors) > 0
    q8 = make_peer_backend("llama.cpp-q8_0", built["llama.cpp-q8_0"], 1)
    q8.load()
    greedy = [int(np.argmax(expected[0][-1]))]
    assert q8.generate(ids[0].tolist(), 1)[0] == greedy


def test_a_failed_quantization_leaves_no_f32_gguf_behind(tmp_path, monkeypatch):
    calls = []

    def run(command, what):
        calls.append(what)
        if "convert_hf_to_gguf" in what:
            Path(command[command.index("--outfile") + 1]).write_bytes(b"GGUF" * 1000)
        else:
            raise StageError(f"{what} failed (exit 1): llama_model_quantize could not write model.gguf")

    monkeypatch.setattr(llama_cpp, "require", lambda: "9.9.9")
    monkeypatch.setattr(llama_cpp, "converter", lambda version: tmp_path / "convert_hf_to_gguf.py")
    monkeypatch.setattr(llama_cpp, "_run", run)
    with pytest.raises(StageError, match=r"quantizer \(Q4_0\) for llama.cpp-q4_0 failed"):
        llama_cpp.build("llama.cpp-q4_0", "int4", tmp_path / "run", tmp_path / "peer", 1)
    assert len(calls) == 2 and list((tmp_path / "peer").iterdir()) == []
