"""Backends for the peer engines (see `peers.py`), behind the same interface as deployft's own variants."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, UsageError, first_line
from .backends import Backend
from .llama_cpp import FTYPES, GGUF
from .llama_cpp import INSTALL as LLAMA_CPP_INSTALL
from .peers import INSTALL, PEERS, bf16_hint


def _folder_bytes(folder: Path, suffixes: tuple[str, ...]) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(suffixes))


class OpenVinoBackend(Backend):
    """An OpenVINO IR built by optimum-intel, compiled for each input shape (static shapes, as users deploy it).

    Each shape is compiled the first time it is seen (in the worker's untimed warm-up), with the latency hint,
    one stream, the bench's threads and bf16 only where the CPU has bf16 matmul; `details` records them.
    """

    def __init__(self, name: str, folder: Path, threads: int):
        self.name, self.folder, self.threads = name, Path(folder), threads
        self.precision = PEERS[name].precision
        self.inference_precision = "bf16" if bf16_hint() else "f32"
        self._compiled: dict[tuple[int, int], Any] = {}

    def load(self) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise MissingDependencyError(f"openvino is not installed ({first_line(exc)}); {INSTALL}") from None
        self._core = ov.Core()
        self._xml = self.folder / "openvino_model.xml"
        self._inputs = [i.get_any_name() for i in self._core.read_model(self._xml).inputs]

    def _request(self, shape: tuple[int, int]):
        if shape not in self._compiled:
            model = self._core.read_model(self._xml)
            model.reshape({name: list(shape) for name in self._inputs})
            config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                      "INFERENCE_NUM_THREADS": str(self.threads),
                      "INFERENCE_PRECISION_HINT": self.inference_precision}
            self._compiled[shape] = self._core.compile_model(model, "CPU", config).create_infer_request()
        return self._compiled[shape]

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64),
                 "token_type_ids": np.zeros_like(input_ids, dtype=np.int64)}
        request = self._request(tuple(input_ids.shape))
        request.infer({name: feeds[name] for name in self._inputs})
        return np.asarray(request.get_output_tensor(0).data, dtype=np.float32).copy()

    def size_bytes(self) -> int:
        return _folder_bytes(self.folder, (".xml", ".bin"))

    def details(self) -> dict[str, Any]:
        return {"engine": "openvino", "inference_precision": self.inference_precision, "static_shapes": True,
                "performance_hint": "LATENCY", "threads": self.threads}


class GenaiBackend(Backend):
    """A model built by onnxruntime-genai's builder, run by onnxruntime-genai's runtime (greedy, CPU).

    For timing every call makes exactly `new_tokens` with the end token suppressed (`min_length`), so the work
    equals the other variants'; the accuracy check keeps the end token. `forward` runs the prefill of each row
    alone, which returns logits for every position, so perplexity comes from the same graph.
    """

    def __init__(self, name: str, folder: Path, threads: int):
        self.name, self.folder, self.threads = name, Path(folder), threads
        self.precision = PEERS[name].precision

    def load(self) -> None:
        try:
            import onnxruntime_genai as og
        except ImportError as exc:
            raise MissingDependencyError(f"onnxruntime-genai is not installed ({first_line(exc)}); {INSTALL}") \
                from None
        config = og.Config(str(self.folder))
        config.clear_providers()
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": self.threads, "inter_op_num_threads": 1}}}}))
        self._og, self.model = og, og.Model(config)

    def _generator(self, length: int, min_length: int = 0):
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(max_length=length, min_length=min_length, do_sample=False, batch_size=1)
        return self._og.Generator(self.model, params)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            tokens = ids[mask.astype(bool)].astype(np.int32)
            generator = self._generator(len(tokens) + 1)
            generator.append_tokens(tokens)
            rows.append(np.asarray(generator.get_output("logits"), dtype=np.float32)[0])
        width, vocab = input_ids.shape[1], rows[0].shape[-1]
        logits = np.zeros((len(rows), width, vocab), dtype=np.float32)
        for i, (row, mask) in enumerate(zip(rows, attention_mask)):
            logits[i, np.flatnonzero(mask)] = row  # padded positions stay zero (they carry no weight)
        return logits

    def generate(self, prompt_ids: list[int], new_tokens: int, stop_at_eos: bool = False
                 ) -> tuple[list[int], list[float]]:
        length = len(prompt_ids) + new_tokens
        start = time.perf_counter()
        generator = self._generator(length, 0 if stop_at_eos else length)
        generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
        tokens, times = [], []
        while not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            times.append(time.perf_counter() - start)
        return tokens, times

    def size_bytes(self) -> int:
        return _folder_bytes(self.folder, (".onnx", ".onnx.data"))

    def weight_bytes_per_token(self) -> int | None:
        from .roofline import onnx_weight_bytes

        return onnx_weight_bytes(self.folder / "model.onnx")

    def details(self) -> dict[str, Any]:
        config = json.loads((self.folder / "genai_config.json").read_text(encoding="utf-8"))
        return {"engine": "onnxruntime-genai", "threads": self.threads,
                "context_length": config.get("model", {}).get("context_length"),
                "block_size": dict(PEERS[self.name].options).get("block_size")}


class LlamaCppBackend(Backend):
    """A GGUF file built by llama.cpp's converter and quantizer (`llama_cpp.py`), run by llama-cpp-python.

    Generation is `Llama.generate` with llama.cpp's greedy sampler, as a Python user runs it, after a `reset` so
    no call reuses the previous call's cache for the same prompt (which `generate` would otherwise do). For
    timing every call makes exactly `new_tokens`, an end token fed back like any other. `forward` (perplexity)
    runs each row alone in a second context that keeps every position's logits, made only when asked for.
    """

    CONTEXT = 2048
    """Context length of the timed instance (its KV cache), enough for the bench's prompts and answers."""

    def __init__(self, name: str, folder: Path, threads: int):
        self.name, self.folder, self.threads = name, Path(folder), threads
        self.precision = PEERS[name].precision
        self._scorer, self._scorer_length = None, 0

    def _llama(self, **options):
        return self._Llama(str(self.folder / GGUF), n_threads=self.threads, n_threads_batch=self.threads,
                           verbose=False, **options)

    def load(self) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise MissingDependencyError(f"llama-cpp-python is not installed ({first_line(exc)}); "
                                         f"{LLAMA_CPP_INSTALL}") from None
        self._llama_cpp, self._Llama = llama_cpp, llama_cpp.Llama
        self.model = self._llama(n_ctx=self.CONTEXT)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        width = input_ids.shape[1]
        if self._scorer is None or self._scorer_length < width:  # (llama.cpp rounds its own n_ctx() up)
            self._scorer_length = max(width, 512)
            self._scorer = self._llama(n_ctx=self._scorer_length, logits_all=True)
        logits = None
        for i, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
            tokens = ids[mask.astype(bool)].tolist()
            self._scorer.reset()
            self._scorer.eval(tokens)
            row = np.asarray(self._scorer.scores[:len(tokens)], dtype=np.float32)
            if logits is None:
                logits = np.zeros((len(input_ids), width, row.shape[-1]), dtype=np.float32)
            logits[i, np.flatnonzero(mask)] = row  # padded positions stay zero (they carry no weight)
        return logits

    def generate(self, prompt_ids: list[int], new_tokens: int, stop_at_eos: bool = False
                 ) -> tuple[list[int], list[float]]:
        if len(prompt_ids) + new_tokens > self.CONTEXT:
            raise UsageError(f"{self.name}: prompt {len(prompt_ids)} + {new_tokens} new tokens exceed the "
                             f"context of {self.CONTEXT}; pass shorter --prompt-lens / --new-tokens")
        vocab = self.model._model.vocab
        tokens, times = [], []
        start = time.perf_counter()
        self.model.reset()
        for token in self.model.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            if stop_at_eos and self._llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            tokens.append(int(token))
            times.append(time.perf_counter() - start)
            if len(tokens) == new_tokens:
                break
        return tokens, times

    def size_bytes(self) -> int:
        return (self.folder / GGUF).stat().st_size

    def weight_bytes_per_token(self) -> int | None:
        from .roofline import gguf_weight_bytes

        return gguf_weight_bytes(self.folder / GGUF)

    def details(self) -> dict[str, Any]:
        return {"engine": "llama.cpp (llama-cpp-python)", "version": self._llama_cpp.__version__,
                "file_type": FTYPES[self.precision][0], "threads": self.threads, "n_ctx": self.CONTEXT}


def make_peer_backend(name: str, peer: dict[str, Any], threads: int) -> Backend:
    """The backend of peer variant `name`, built into `peer["path"]` by `peers.build_peers`."""
    engine = PEERS[name].engine
    if engine == "openvino":
        return OpenVinoBackend(name, Path(peer["path"]), threads)
    if engine == "ort-genai":
        return GenaiBackend(name, Path(peer["path"]), threads)
    if engine == "llama.cpp":
        return LlamaCppBackend(name, Path(peer["path"]), threads)
    raise MissingDependencyError(f"{name}: no runtime for engine {engine} in this environment")
