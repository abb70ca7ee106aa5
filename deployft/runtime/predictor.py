"""`Predictor`: load a BUNDLE and classify or generate with ONNX Runtime alone (no torch, no transformers)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, UsageError
from ..manifest import read_manifest, sha256_file
from .chat import read_chat_template, render_chat
from .generation import KVDecoder, TextTracker
from .inputs import check_prompt, check_texts, stop_strings
from .sampling import GenerationOptions
from .session import SessionOptions, create_session
from .text import TextCodec

logger = logging.getLogger("deployft.runtime")


@dataclass
class Prediction:
    """One classification result."""

    label: str
    """The most likely label."""
    score: float
    """Its probability."""
    scores: dict[str, float] = field(default_factory=dict)
    """The probability of every label, in the bundle's label order."""


def verify_model_file(folder: Path, manifest: dict, name: str) -> Path:
    """Check that `name` is a file of the bundle whose sha256 matches the manifest."""
    path = folder / name
    entry = (manifest.get("files") or {}).get(name)
    if not path.is_file():
        raise BundleError(f"model file {name} not found in {folder}; pass one of the bundle's .onnx files "
                          f"({', '.join(sorted(f for f in manifest.get('files', {}) if f.endswith('.onnx')))})")
    if entry is None:
        raise BundleError(f"model file {name} is not listed in {folder}/deployft.json; pass a file the bundle lists")
    if sha256_file(path) != entry.get("sha256"):
        raise BundleError(f"model file {path} was modified after export (sha256 differs from deployft.json); "
                          "re-export the bundle with deployft export")
    return path


class Predictor:
    """A loaded BUNDLE: `predict` for classifiers, `generate` / `stream` for generators. Safe to share across threads."""

    def __init__(self, folder: Path, manifest: dict, session, device: str, model_file: str):
        self.folder = folder
        self.manifest = manifest
        self.session = session
        self.device = device
        self.model_file = model_file
        self.providers = list(session.get_providers())
        self.task = manifest.get("task")
        self.labels = list(manifest.get("labels") or [])
        self.codec = TextCodec(folder, manifest.get("max_length"))
        self.input_names = [i.name for i in session.get_inputs()]
        self.decoder = self._decoder() if self.task == "generate" else None
        self.chat_template = read_chat_template(folder, self.codec.config)

    @classmethod
    def load(cls, bundle: str | Path, device: str = "cpu", threads: int | None = None,
             model_file: str | None = None) -> Predictor:
        """Load a BUNDLE folder.

        Args:
            bundle: the folder written by `deployft export`.
            device: `cpu`, `cuda`, or `auto` (CUDA when it really runs, else CPU; logged).
            threads: intra-op CPU threads (None: ONNX Runtime's default).
            model_file: another `.onnx` variant of the bundle (default: the manifest's `model_file`).

        Raises:
            BundleError: missing folder, newer format, unknown task, missing or modified model file.
            DeviceError: CUDA asked for but ONNX Runtime runs on CPU.
        """
        options = SessionOptions(device=device, threads=threads)
        folder = Path(bundle)
        manifest = read_manifest(folder, "bundle")
        if manifest.get("task") not in ("classify", "generate"):
            raise BundleError(f"{folder}/deployft.json has task {manifest.get('task')!r}; expected classify or generate")
        name = model_file or manifest.get("model_file") or "model.onnx"
        path = verify_model_file(folder, manifest, name)
        session, actual = create_session(path, options)
        logger.info("loaded %s (%s) on %s", folder, name, actual)
        if manifest.get("device") not in (None, actual):
            logger.warning("%s was exported and validated for %s but runs on %s; its speed and accuracy there "
                           "are unmeasured (re-export with --device %s)", folder, manifest["device"], actual, actual)
        return cls(folder, manifest, session, actual, name)

    def __repr__(self) -> str:
        return f"Predictor(task={self.task!r}, model_file={self.model_file!r}, device={self.device!r})"

    # ---- classification ----------------------------------------------------------------------

    def _require(self, task: str, call: str) -> None:
        if self.task != task:
            other = "generate() or stream()" if self.task == "generate" else "predict()"
            raise UsageError(f"{call} needs a {task} bundle but {self.folder} is a {self.task} bundle; call {other}")

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Raw model call on tokenized ids (batch, length).

        Returns the logits: (batch, labels) for a classifier; (batch, length, vocab) for a generator, every
        position of a right-padded batch in one call with an empty KV cache (what perplexity needs).
        """
        if self.task == "generate":
            return self.decoder.full_logits(input_ids.astype(np.int64), attention_mask.astype(np.int64))
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return self.session.run(["logits"], {k: v for k, v in feeds.items() if k in self.input_names})[0]

    def predict(self, texts: str | list[str], batch_size: int = 32) -> Prediction | list[Prediction]:
        """Classify a text (returns one Prediction) or a list of texts (returns a list, same order).

        Texts are sorted by length and padded per batch; texts longer than the bundle's max_length are
        truncated and counted in the log.
        """
        self._require("classify", "predict()")
        single = isinstance(texts, str)
        rows = check_texts([texts] if single else texts, "predict()")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}; pass --batch-size 32")
        ids = [row or [self.codec.pad_id] for row in self.codec.encode(rows, keep="start")]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        results: list[Prediction | None] = [None] * len(ids)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            logits = self.forward(*self.codec.pad([ids[i] for i in chunk], side="right"))
            for i, row in zip(chunk, _softmax(logits.astype(np.float64))):
                results[i] = self._prediction(row)
        return results[0] if single else results

    def _prediction(self, probs: np.ndarray) -> Prediction:
        labels = self.labels or [str(i) for i in range(len(probs))]
        best = int(probs.argmax())
        return Prediction(labels[best], float(probs[best]), {lab: float(p) for lab, p in zip(labels, probs)})

    # ---- generation --------------------------------------------------------------------------

    def _decoder(self) -> KVDecoder:
        block = self.manifest.get("generation") or {}
        config = _read_json(self.folder / "config.json")
        gen_config = _read_json(self.folder / "generation_config.json")
        eos = block.get("eos_token_id", gen_config.get("eos_token_id", config.get("eos_token_id")))
        eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        pad = block.get("pad_token_id", gen_config.get("pad_token_id", config.get("pad_token_id")))
        self.bos_id = block.get("bos_token_id", gen_config.get("bos_token_id", config.get("bos_token_id")))
        max_positions = config.get("max_position_embeddings") or config.get("n_positions")
        pad_id = int(pad) if pad is not None else (eos_ids[0] if eos_ids else self.codec.pad_id)
        return KVDecoder(self.session, self.device, eos_ids, pad_id, max_positions)

    def prompt_ids(self, prompt: str | list[dict]) -> list[int]:
        """Token ids of a prompt string (in the bundle's prompt format) or of chat messages (its chat template)."""
        style = (self.manifest.get("prompt_format") or {}).get("style", "text")
        if isinstance(prompt, list) or style == "chat":
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            text = render_chat(self.chat_template, messages, self.codec.special_tokens)
            ids = self.codec.encode([text], add_special_tokens=False, keep="end", limit=self._prompt_limit())[0]
        else:
            separator = (self.manifest.get("prompt_format") or {}).get("separator", "\n")
            text = prompt + separator if style == "plain" else prompt
            ids = self.codec.encode([text], add_special_tokens=True, keep="end", limit=self._prompt_limit())[0]
        if not ids:  # an empty prompt: start from the begin-of-text token, as an unconditional model would
            ids = [int(self.bos_id if self.bos_id is not None else self.decoder.pad_id)]
        return ids

    def _prompt_limit(self) -> int | None:
        """Prompts keep their last tokens so that at least one new token fits the model's positions."""
        positions = self.decoder.max_positions
        return positions - 1 if positions else None

    def _batch(self, prompts: list, options: GenerationOptions) -> list[str]:
        rows = [self.prompt_ids(p) for p in prompts]
        ids, mask = self.codec.pad(rows, side="left")
        eos = set(int(e) for e in self.decoder.eos_ids)
        trackers = [TextTracker(self.codec.decode, options.stop, eos) for _ in rows]
        done = np.zeros(len(rows), dtype=bool)
        for tokens in self.decoder.iter_batch(ids, mask, options, done):
            for i, (tracker, token) in enumerate(zip(trackers, tokens)):
                tracker.add(int(token))
                done[i] |= tracker.finished
        return [t.text for t in trackers]

    def generate(self, prompt: str | list, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: str | list[str] | tuple[str, ...] = ()) -> str | list[str]:
        """Complete a prompt string, a chat (list of {"role", "content"} dicts), or a list of prompt strings.

        A list of strings is generated as one left-padded batch and returns a list. temperature 0 is greedy;
        the returned text ends before the first stop string or end token.
        """
        self._require("generate", "generate()")
        options = GenerationOptions(max_new_tokens, temperature, top_k, top_p, seed, tuple(stop_strings(stop)))
        batch = check_prompt(prompt)
        texts = self._batch(prompt if batch else [prompt], options)
        return texts if batch else texts[0]

    def stream(self, prompt: str | list[dict], max_new_tokens: int = 64, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               stop: str | list[str] | tuple[str, ...] = ()) -> Iterator[str]:
        """Yield text pieces as they are decoded; they concatenate to what `generate` returns."""
        self._require("generate", "stream()")
        options = GenerationOptions(max_new_tokens, temperature, top_k, top_p, seed, tuple(stop_strings(stop)))
        if check_prompt(prompt):
            raise UsageError("stream() takes one prompt or one chat, not a list of prompts; call generate() for a batch")
        ids, mask = self.codec.pad([self.prompt_ids(prompt)], side="left")
        tracker = TextTracker(self.codec.decode, options.stop, set(int(e) for e in self.decoder.eos_ids))
        done = np.zeros(1, dtype=bool)
        for tokens in self.decoder.iter_batch(ids, mask, options, done):
            piece = tracker.add(int(tokens[0]))
            done[0] |= tracker.finished
            if piece:
                yield piece
        tail = tracker.flush()
        if tail:
            yield tail

    def iter_token_ids(self, prompt_ids: list[int], max_new_tokens: int = 64, temperature: float = 0.0,
                       top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                       ignore_eos: bool = False) -> Iterator[int]:
        """Yield new token ids one by one for already-tokenized `prompt_ids`.

        Ends after an end token, or, with `ignore_eos`, only after exactly `max_new_tokens` (for timing).
        """
        self._require("generate", "iter_token_ids()")
        options = GenerationOptions(max_new_tokens, temperature, top_k, top_p, seed)
        if not prompt_ids:
            raise UsageError("prompt_ids is empty; pass at least one token id")
        ids = np.asarray([prompt_ids], dtype=np.int64)
        done = np.zeros(1, dtype=bool)
        for tokens in self.decoder.iter_batch(ids, np.ones_like(ids), options, done, ignore_eos):
            yield int(tokens[0])


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
