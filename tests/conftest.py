"""Shared fixtures: tiny models built from configs and tokenizers trained on the spot.

Built once per session, copied per test, so a test may change its copy freely.
Everything is written under pytest's tmp paths; nothing touches the working directory.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from the Ray tests
os.environ.setdefault("WANDB_DISABLED", "true")
sys.path.insert(0, str(Path(__file__).parent / "bench"))  # bench_pairs' fixtures, for tests/cli run on its own too

GOOD = ["great", "wonderful", "brilliant", "moving", "funny", "superb", "charming", "delightful"]
BAD = ["awful", "boring", "dull", "terrible", "clumsy", "tedious", "bland", "painful"]
FILLER = ["the film", "this movie", "the plot", "the cast", "the story", "the ending", "every scene", "the script"]
QA = [
    ("what is the capital of france", "paris is the capital of france"),
    ("what color is the sky", "the sky is blue"),
    ("how many legs does a cat have", "a cat has four legs"),
    ("what do bees make", "bees make honey"),
    ("what is two plus two", "two plus two is four"),
    ("where do fish live", "fish live in water"),
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def sentiment_rows(n: int, seed: int = 0, labels: tuple[str, ...] = ("negative", "positive")) -> list[dict]:
    """Synthetic reviews whose label is carried by a sentiment word: learnable by a tiny model."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = GOOD if label == "positive" else BAD if label == "negative" else ["average", "okay", "fine"]
        length = rng.randint(0, 6)
        tail = " ".join(rng.choice(FILLER) for _ in range(length))
        rows.append({"text": f"{rng.choice(FILLER)} was {rng.choice(words)} {tail}".strip(), "label": label})
    return rows


def qa_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [dict(zip(("prompt", "response"), rng.choice(QA))) for _ in range(n)]


def _corpus() -> list[str]:
    lines = [r["text"] for r in sentiment_rows(400, labels=("negative", "positive", "neutral"))]
    lines += [f"{q} {a}" for q, a in QA] * 20
    lines += ["<|user|> <|assistant|> <|system|> hello world question answer"] * 5
    return lines


def _wordpiece_tokenizer(model_input_names: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=64,
        model_input_names=model_input_names,
    )


def _bpe_tokenizer(chat_template: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=128,
        model_input_names=["input_ids", "attention_mask"],
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def _tiny_config(arch: str, tokenizer, num_labels: int):
    from transformers import BertConfig, DistilBertConfig, GPT2Config, LlamaConfig, RobertaConfig

    vocab = len(tokenizer)
    common = {"vocab_size": vocab, "pad_token_id": tokenizer.pad_token_id, "num_labels": num_labels}
    if arch == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=128, **common)
    if arch == "distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128, **common)
    if arch == "roberta":
        return RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=130, type_vocab_size=1, **common)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, **special, **common)
    if arch == "llama":
        # heads of 16: ONNX Runtime's GroupQueryAttention rotates q and k itself only for multiples of 16
        return LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=128, max_position_embeddings=128, tie_word_embeddings=True,
                           **special, **common)
    gqa = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, max_position_embeddings=128)
    if arch == "qwen2":  # q/k/v projections with bias; heads of 16, rotated inside the fused attention
        from transformers import Qwen2Config

        return Qwen2Config(**{**gqa, "hidden_size": 64, "intermediate_size": 128}, **special, **common)
    if arch == "mistral":  # a sliding window shorter than the test sequences; heads of 8: RotaryEmbedding nodes
        from transformers import MistralConfig

        return MistralConfig(**gqa, sliding_window=4, **special, **common)
    raise ValueError(arch)


ENCODERS = ("bert", "distilbert", "roberta")
DECODERS = ("gpt2", "llama")
"""The decoders every stage is tested on; "qwen2" and "mistral" also build, for the attention-fusion tests."""


def build_tiny_model(arch: str, folder: Path, num_labels: int = 2) -> Path:
    """Save a randomly initialised tiny `arch` model and its tokenizer to `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    if arch in ENCODERS:
        # as their real tokenizers do: distilbert and roberta take no token_type_ids
        names = ["input_ids", "token_type_ids", "attention_mask"] if arch == "bert" else ["input_ids", "attention_mask"]
        tokenizer = _wordpiece_tokenizer(names)
        model = AutoModelForSequenceClassification.from_config(_tiny_config(arch, tokenizer, num_labels))
    else:
        tokenizer = _bpe_tokenizer(CHAT_TEMPLATE if arch == "llama" else None)
        model = AutoModelForCausalLM.from_config(_tiny_config(arch, tokenizer, num_labels))
        with torch.no_grad():  # transformers zeroes biases at init; a test of bias handling needs real ones
            for name, param in model.named_parameters():
                if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                    param.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def _tiny_model_cache(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = build_tiny_model(arch, tmp_path_factory.mktemp(f"tiny-{arch}"))
        return cache[arch]

    return get


@pytest.fixture
def tiny_model(_tiny_model_cache, tmp_path):
    """`tiny_model("bert")` -> a fresh copy of a tiny model folder (bert, distilbert, roberta, gpt2, llama)."""

    def copy(arch: str) -> Path:
        target = tmp_path / f"model-{arch}"
        shutil.copytree(_tiny_model_cache(arch), target)
        return target

    return copy


FAST_TRAINING = {"max_steps": 2, "batch_size": 8, "max_length": 32}
"""finetune settings of a tiny run that only has to produce its folder."""


def run_manifest(run: Path) -> dict:
    """A run or bundle folder's deployft.json."""
    return json.loads((run / "deployft.json").read_text(encoding="utf-8"))


def sibling_names(path: Path) -> list[str]:
    """The names beside `path` (to show a failed stage left nothing behind)."""
    return sorted(p.name for p in path.parent.iterdir()) if path.parent.exists() else []


def ready_client(bundle, **settings):
    """A TestClient of `deployft.serve.create_app(bundle, **settings)`, its lifespan entered and its model warmed
    (`/ready` 200); the caller exits it."""
    import time

    from fastapi.testclient import TestClient

    from deployft.serve import create_app

    client = TestClient(create_app(bundle, **settings))
    client.__enter__()
    deadline = time.time() + 60
    while client.get("/ready").status_code != 200:
        assert time.time() < deadline, "the app never became ready"
        time.sleep(0.05)
    return client


class NeverCalledPredictor:
    """A classifier predictor that fails the test if a row is ever predicted (the file must be refused first)."""

    task = "classify"

    def predict(self, texts, batch_size=32):
        raise AssertionError("predicted before the input or output was checked")


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows as CSV, TSV or JSONL according to the file's extension."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def classify_csv(tmp_path) -> Path:
    """A 240-row two-label sentiment CSV (columns text,label)."""
    return write_rows(tmp_path / "data" / "reviews.csv", sentiment_rows(240))


@pytest.fixture
def qa_jsonl(tmp_path) -> Path:
    """A 120-row prompt/response JSONL."""
    return write_rows(tmp_path / "data" / "qa.jsonl", qa_rows(120))


# ---- runtime bundles (appended for deployft.runtime tests) ---------------------------------------

RUNTIME_TASKS = {"bert": "classify", "distilbert": "classify", "roberta": "classify", "gpt2": "generate", "llama": "generate"}


def sharpen_decoder(model_dir: Path, output: Path, std: float = 0.25) -> Path:
    """Copy a tiny decoder with larger random weights, so greedy decoding picks varied, well-separated tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    model.save_pretrained(output)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(output)
    return output


def short_decoder(arch: str, folder: Path, positions: int) -> Path:
    """A tiny `arch` decoder with only `positions` positions, its weights sharpened (`sharpen_decoder`)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    tokenizer = _bpe_tokenizer(None)
    config = _tiny_config(arch, tokenizer, 2)
    if arch == "gpt2":
        config.n_positions = positions
    else:
        config.max_position_embeddings = positions
    AutoModelForCausalLM.from_config(config).save_pretrained(folder / "init")
    tokenizer.save_pretrained(folder / "init")
    return sharpen_decoder(folder / "init", folder / "model")


def build_runtime_bundle(model_dir: Path, output: Path, task: str, int8: bool = True) -> Path:
    """A BUNDLE per docs/folders.md made with Optimum's plain export (fp32 model.onnx + int8 model_int8.onnx).

    Independent of deployft.exporter.runner so the runtime is tested against Optimum's own files.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export

    from deployft.manifest import file_table, library_versions, write_manifest
    from deployft.staging import atomic_folder

    config = json.loads((model_dir / "config.json").read_text())
    export_task = "text-classification" if task == "classify" else "text-generation-with-past"
    with atomic_folder(output) as staging:
        main_export(str(model_dir), str(staging), task=export_task, do_validation=False)
        if int8:
            quantize_dynamic(staging / "model.onnx", staging / "model_int8.onnx", weight_type=QuantType.QInt8)
        generation = None
        if task == "generate":
            heads = config.get("num_key_value_heads") or config.get("num_attention_heads") or config.get("n_head")
            hidden = config.get("hidden_size") or config.get("n_embd")
            generation = {"bos_token_id": config.get("bos_token_id"), "eos_token_id": [config.get("eos_token_id")],
                          "pad_token_id": config.get("pad_token_id"),
                          "num_layers": config.get("num_hidden_layers") or config.get("n_layer"),
                          "num_kv_heads": heads, "head_dim": hidden // (config.get("num_attention_heads")
                                                                      or config.get("n_head"))}
        chat = (staging / "chat_template.jinja").is_file()
        write_manifest(staging, {
            "kind": "bundle", "task": task, "model_type": config["model_type"],
            "labels": ["negative", "positive"] if task == "classify" else None,
            "max_length": 32 if task == "classify" else 64,
            "prompt_format": None if task == "classify" else {"style": "chat" if chat else "plain", "separator": "\n"},
            "model_file": "model.onnx",
            "variants": {name: {"precision": precision, "optimized": False, "validation": {}}
                         for name, precision in (("model.onnx", "fp32"), ("model_int8.onnx", "int8"))
                         if (staging / name).is_file()},
            "generation": generation, "files": file_table(staging),
            "source_run": {"path": str(model_dir), "base_model": str(model_dir), "weights_sha256": None},
            "versions": library_versions(), "created": "2026-01-01T00:00:00+00:00",
        })
    return output


@pytest.fixture
def tiny_int8_classifier(tiny_run, tmp_path) -> Path:
    """A tiny bert classifier RUN exported with --quantize int8 (every candidate built, a short timing), as the
    benchmark scripts read a bundle."""
    from deployft.exporter import ExportConfig, export

    return export(ExportConfig(run=tiny_run("bert"), output=tmp_path / "bundle", quantize="int8", validate_samples=40,
                               calibration_samples=16, max_accuracy_drop=25.0, select_seconds=0.2))


@pytest.fixture
def no_agreement_goal(monkeypatch):
    """The classifier task without its int8 agreement goal (`Task.min_agreement`), for tests about the budget and
    the remedies themselves: a tiny RUN's 24 rows would otherwise make the ladder climb on a single flip."""
    import dataclasses

    from deployft.tasks import TASKS

    monkeypatch.setitem(TASKS, "classify", dataclasses.replace(TASKS["classify"], min_agreement=None))


@pytest.fixture(scope="session")
def benchmark_script():
    """`benchmark_script("serve_load")` -> benchmarks/serve_load.py imported as a module (the scripts are no package)."""
    import importlib.util

    loaded: dict = {}

    def load(name: str):
        if name not in loaded:
            path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
            spec = importlib.util.spec_from_file_location(name, path)
            loaded[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded[name])
        return loaded[name]

    return load


@pytest.fixture(scope="session")
def runtime_bundle(_tiny_model_cache, tmp_path_factory):
    """`runtime_bundle("gpt2")` -> a shared tiny BUNDLE (with the RUN-like model folder at manifest source_run.path).

    Shared by the session: copy it before changing anything in it.
    """
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            model_dir = _tiny_model_cache(arch)
            if RUNTIME_TASKS[arch] == "generate":
                model_dir = sharpen_decoder(model_dir, tmp_path_factory.mktemp(f"sharp-{arch}"))
            cache[arch] = build_runtime_bundle(model_dir, tmp_path_factory.mktemp(f"bundle-{arch}") / "bundle",
                                               RUNTIME_TASKS[arch])
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def _tiny_onnx_cache(_tiny_model_cache, tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            from deployft.exporter.onnx_export import export_onnx
            from deployft.exporter.source import read_source

            task = "classify" if arch in ENCODERS else "generate"
            folder = tmp_path_factory.mktemp(f"onnx-{arch}")
            export_onnx(read_source(_tiny_model_cache(arch), task), folder)
            cache[arch] = folder
        return cache[arch]

    return get


@pytest.fixture
def tiny_onnx(_tiny_onnx_cache, tmp_path):
    """`tiny_onnx("bert")` -> a fresh copy of Optimum's plain export (model.onnx, config, tokenizer) of a tiny model."""

    def copy(arch: str) -> Path:
        target = tmp_path / f"onnx-{arch}"
        shutil.copytree(_tiny_onnx_cache(arch), target)
        return target

    return copy


EXPORT_RUN_STEPS = {"distilbert": 8, "roberta": 8}
SHARED_RUNS = {"bert": "tiny_classify_run", "llama": "tiny_generate_run", "gpt2": "tiny_gpt2_generate_run"}


@pytest.fixture(scope="session")
def _tiny_run_cache(_tiny_model_cache, tmp_path_factory, request):
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch in SHARED_RUNS:
            return request.getfixturevalue(SHARED_RUNS[arch])
        if arch not in cache:
            from deployft import FinetuneConfig, finetune

            root = tmp_path_factory.mktemp(f"run-{arch}")
            if arch in ENCODERS:
                data, task = write_rows(root / "data" / "reviews.csv", sentiment_rows(240)), "classify"
            else:
                data, task = write_rows(root / "data" / "qa.jsonl", qa_rows(120)), "generate"
            cache[arch] = finetune(FinetuneConfig(
                task=task, model=str(_tiny_model_cache(arch)), data=str(data), output=str(root / "run"),
                max_steps=EXPORT_RUN_STEPS[arch], lr=5e-3, batch_size=16, max_length=32))
        return cache[arch]

    return get


@pytest.fixture
def tiny_run(_tiny_run_cache, tmp_path):
    """`tiny_run("bert")` -> a copy of a RUN folder fine-tuned a few steps from the tiny model (data left in place)."""

    def copy(arch: str) -> Path:
        target = tmp_path / f"run-{arch}"
        shutil.copytree(_tiny_run_cache(arch), target)
        return target

    return copy


# RUN folders written by `deployft finetune`, built once per session. They are shared: copy before modifying.


def _finetune_run(root: Path, **settings) -> Path:
    from deployft import FinetuneConfig, finetune

    return finetune(FinetuneConfig(output=str(root / "run"), **settings))


@pytest.fixture(scope="session")
def tiny_classify_run(_tiny_model_cache, tmp_path_factory) -> Path:
    """A tiny bert RUN trained on `sentiment_rows(240)` until accurate (labels negative/positive)."""
    root = tmp_path_factory.mktemp("tiny-classify-run")
    data = write_rows(root / "data" / "reviews.csv", sentiment_rows(240))
    return _finetune_run(root, task="classify", model=str(_tiny_model_cache("bert")), data=str(data),
                         epochs=8, lr=2e-3, batch_size=16, max_length=32)


@pytest.fixture(scope="session")
def tiny_generate_run(_tiny_model_cache, tmp_path_factory) -> Path:
    """A tiny llama RUN (chat template prompt format) trained a few epochs on `qa_rows(120)`."""
    root = tmp_path_factory.mktemp("tiny-generate-run")
    data = write_rows(root / "data" / "qa.jsonl", qa_rows(120))
    return _finetune_run(root, task="generate", model=str(_tiny_model_cache("llama")), data=str(data),
                         epochs=3, lr=3e-3, batch_size=16, max_length=64)


@pytest.fixture(scope="session")
def tiny_gpt2_generate_run(_tiny_model_cache, tmp_path_factory) -> Path:
    """A tiny gpt2 RUN (plain `prompt + "\\n"` prompt format) trained a few epochs on `qa_rows(120)`."""
    root = tmp_path_factory.mktemp("tiny-gpt2-generate-run")
    data = write_rows(root / "data" / "qa.jsonl", qa_rows(120))
    return _finetune_run(root, task="generate", model=str(_tiny_model_cache("gpt2")), data=str(data),
                         epochs=3, lr=3e-3, batch_size=16, max_length=64)


@pytest.fixture(scope="session")
def real_classify_run(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 fine-tuned 1 epoch on 300 default Rotten Tomatoes snippets (+30 eval); slow tests only."""
    return _finetune_run(tmp_path_factory.mktemp("real-classify-run"), task="classify", max_samples=330,
                         epochs=1, max_length=64, batch_size=16, lr=2e-4)


@pytest.fixture(scope="session")
def real_generate_run(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct fine-tuned 2 steps on 18 default chatterbot pairs (+6 eval); slow tests only."""
    return _finetune_run(tmp_path_factory.mktemp("real-generate-run"), task="generate", max_samples=24,
                         eval_fraction=0.25, max_steps=2, max_length=64, batch_size=4, lr=5e-5)
