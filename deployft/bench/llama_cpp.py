"""llama.cpp peers: the RUN converted to GGUF by llama.cpp's own converter and quantized by its own quantizer.

llama-cpp-python ships llama.cpp's library but not its converter (`convert_hf_to_gguf.py` with its `conversion`
and `gguf-py` packages). Those come from the same release's source archive on the package index, fetched once
with `pip download` into a cache folder (`$DEPLOYFT_CACHE/peers/llama.cpp-<version>`, by default under
`~/.cache/deployft`), so the converter and the runtime are the same llama.cpp commit. A peer is the
RUN converted to an f32 GGUF, then quantized with `llama_model_quantize` and llama.cpp's default choices for that
file type (as `llama-quantize model-f32.gguf model.gguf Q8_0` would), in a child process that keeps llama.cpp's
log out of the bench's.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from ..errors import MissingDependencyError, StageError
from .child import run_child

INSTALL = ('pip install "deployft[llama-cpp]" (llama-cpp-python has no wheel on the package index and compiles '
           "from source, which takes many minutes on 2 cores; `make llama-cpp` does it once)")
FTYPES = {"int8": ("Q8_0", 7), "int4": ("Q4_0", 2)}
"""Peer precision -> (llama.cpp file type name, its `llama_ftype` value: LLAMA_FTYPE_MOSTLY_Q8_0 / _Q4_0)."""
GGUF = "model.gguf"
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
"""What the converter needs from the archive's vendor/llama.cpp folder."""


def require() -> str:
    """The installed llama-cpp-python version, or a MissingDependencyError naming the install."""
    missing = [m for m in ("llama_cpp", "sentencepiece") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(f"not installed: {', '.join(missing)}; {INSTALL}")
    return importlib.metadata.version("llama-cpp-python")


def converter_root(version: str) -> Path:
    from ..data.defaults import cache_dir

    return cache_dir() / "peers" / f"llama.cpp-{version}"


def converter(version: str, root: Path | None = None) -> Path:
    """llama.cpp's `convert_hf_to_gguf.py` of llama-cpp-python `version`, fetched and unpacked once."""
    root = root or converter_root(version)
    script = root / "convert_hf_to_gguf.py"
    if script.is_file() and (root / "deployft-converter.txt").is_file():
        return script
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as scratch:
        unpacked = Path(scratch) / "converter"
        _unpack_converter(_download_source(version, Path(scratch), root), unpacked)
        (unpacked / "deployft-converter.txt").write_text(f"llama-cpp-python {version}\n", encoding="utf-8")
        if root.exists() and not (root / "deployft-converter.txt").is_file():
            shutil.rmtree(root)  # a half-unpacked copy that no run finished
        try:
            unpacked.rename(root)  # whole or not at all, also for another bench unpacking the same version
        except OSError:
            if not (root / "deployft-converter.txt").is_file():
                raise
    return script


def _download_source(version: str, into: Path, root: Path) -> Path:
    fix = (f"it needs the package index once; or unpack convert_hf_to_gguf.py, conversion/ and gguf-py/ from "
           f"vendor/llama.cpp of llama-cpp-python {version}'s source archive into {root} with an empty "
           "deployft-converter.txt")
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
          f"llama-cpp-python=={version}", "-d", str(into)], f"pip download of llama-cpp-python {version}'s source",
         fix)
    archives = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        raise StageError(f"pip download of llama-cpp-python {version} left no source archive in {into}")
    return archives[0]


def _unpack_converter(archive: Path, root: Path) -> None:
    """The converter's files from the archive's `*/vendor/llama.cpp/` into `root` (nothing else)."""
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            parts = member.name.split("/vendor/llama.cpp/", 1)
            if len(parts) == 2 and parts[1].startswith(_CONVERTER_PARTS) and (member.isfile() or member.isdir()):
                member.name = parts[1]
                members.append(member)
        if not any(m.name == "convert_hf_to_gguf.py" for m in members):
            raise StageError(f"{archive.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py")
        root.mkdir(parents=True, exist_ok=True)
        if hasattr(tarfile, "data_filter"):  # Python 3.10.12 / 3.11.4 and later
            tar.extractall(root, members=members, filter="data")
            return
        for member in members:
            if member.name.startswith("/") or ".." in Path(member.name).parts:
                raise StageError(f"{archive.name} holds {member.name!r}, a path outside its own folder")
        tar.extractall(root, members=members)


def build(name: str, precision: str, run: Path, target: Path, threads: int) -> None:
    """The RUN as `target/model.gguf`: llama.cpp's converter to f32, then its quantizer to `precision`."""
    script = converter(require())
    target.mkdir(parents=True, exist_ok=True)
    full = target / "model-f32.gguf"  # as large as the fp32 model: never left behind, built or not
    try:
        _run([sys.executable, str(script), str(run), "--outtype", "f32", "--outfile", str(full)],
             f"llama.cpp's convert_hf_to_gguf.py for {name}")
        entry = "import sys; from deployft.bench.llama_cpp import quantize; quantize(*sys.argv[1:])"
        _run([sys.executable, "-c", entry, str(full), str(target / GGUF), precision, str(threads)],
             f"llama.cpp's quantizer ({FTYPES[precision][0]}) for {name}")
    except BaseException:
        (target / GGUF).unlink(missing_ok=True)  # a quantizer stopped half-way may have begun it
        raise
    finally:
        full.unlink(missing_ok=True)


def quantize(source: str, target: str, precision: str, threads: str) -> None:
    """The child's side of `build`: `llama_model_quantize` with llama.cpp's defaults for the file type."""
    import ctypes

    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = FTYPES[precision][1], int(threads)
    if llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize could not write {target}")


def _run(command: list[str], what: str, fix: str = "") -> None:
    run_child(command, what, {"HF_HUB_OFFLINE": "1"}, fix=fix)
