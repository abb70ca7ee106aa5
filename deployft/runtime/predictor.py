"""`Predictor`: load a BUNDLE and classify or generate with ONNX Runtime alone (no torch, no transformers)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import BundleError, UsageError, reraise_as
from ..manifest import read_json
from ..prompts import PromptFormat, prompt_ids
from ..tasks import TASKS, get_task
from ..tokens import special_ids
from .classifier import ClassifierHead
from .completion import complete, prompt_rows, stream_pieces
from .generation import KVDecoder
from .integrity import REEXPORT, check_for_load, check_model_file_name, signed_manifest
from .inputs import check_batch_size, check_prompt, check_texts, check_token_ids
from .sampling import GenerationOptions, softmax
from .openvino import pick_model_file
from .session import Runtime, SessionOptions, create_session
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


def checked_bundle(folder: Path, model_file: str | None = None, public_key: str | Path | bytes | None = None,
                   provider: str = "default") -> tuple[dict, str, Path, str | None]:
    """`(manifest, model file name, its path, why the provider chose that file or None)` of a bundle after every
    check `Predictor.load` makes before it reads a file: signature (with a public key) of the manifest's bytes,
    read once, known task, the manifest's digest, and the files it will read."""
    manifest = signed_manifest(folder, public_key)
    if manifest.get("task") not in TASKS:
        raise BundleError(f"{folder}/deployft.json has task {manifest.get('task')!r}; "
                          f"expected one of {', '.join(TASKS)}; re-export the bundle with deployft export")
    choice = None
    if model_file is not None:
        files = manifest.get("files")
        check_model_file_name(folder, files if isinstance(files, dict) else {}, model_file)
    if provider == "openvino":
        model_file, choice = pick_model_file(manifest, model_file)
    name = model_file or manifest.get("model_file") or "model.onnx"
    return manifest, name, check_for_load(folder, manifest, name), choice


def _with_shapes(options: SessionOptions, manifest: dict, static_shapes: bool, pad_id: int) -> SessionOptions:
    """`options` with the bundle's shape settings (static shapes only where asked for, on a classifier)."""
    if static_shapes and get_task(manifest["task"]).generates:
        raise UsageError("static_shapes fixes (batch, length) inputs and a generator's KV cache grows every step; "
                         "leave static_shapes off for a generate bundle")
    return replace(options, static_shapes=static_shapes, max_length=manifest.get("max_length"), pad_id=pad_id)


class Predictor:
    """A loaded BUNDLE: `predict` for classifiers, `generate` / `stream` for generators. Safe to share across
    threads."""

    def __init__(self, folder: Path, manifest: dict, session, device: str, model_file: str,
                 runtime: Runtime | None = None, file_choice: str | None = None, codec: TextCodec | None = None):
        self.folder = folder
        self.manifest = manifest
        self.session = session
        self.device = device
        self.model_file = model_file
        self.runtime = runtime or Runtime(device)  # what really runs: provider, threads, precision, placement
        self.file_choice = file_choice  # why model_file is not the deployable file, when the provider chose it
        self.providers = list(session.get_providers())
        self.task = manifest.get("task")
        self.labels = list(manifest.get("labels") or [])
        self.max_length = manifest.get("max_length")
        self.prompt_format = PromptFormat.from_manifest(manifest.get("prompt_format"))
        self.codec = codec or TextCodec(folder, self.max_length)
        self.input_names = [i.name for i in session.get_inputs()]
        config = read_json(folder / "config.json")
        self.vocab_size = int(config.get("vocab_size") or self.codec.tokenizer.get_vocab_size(with_added_tokens=True))
        """Token ids the model takes: 0 to vocab_size - 1."""
        generates = get_task(self.task).generates
        self.head = None if generates else ClassifierHead(session)
        self.decoder = self._decoder(config) if generates else None
        self.chat_template = self.codec.chat_template

    @classmethod
    def load(cls, bundle: str | Path, device: str = "cpu", threads: int | None = None,
             model_file: str | None = None, public_key: str | Path | bytes | None = None,
             spinning: bool = True, provider: str = "default", cache_dir: str | Path | None = None,
             static_shapes: bool = False) -> Predictor:
        """Load a BUNDLE folder.

        Args:
            bundle: the folder written by `deployft export`.
            device: `cpu`, `cuda`, or `auto` (CUDA when it really runs, else CPU; logged).
            threads: intra-op CPU threads (None: ONNX Runtime's default).
            model_file: another `.onnx` variant of the bundle (default: the manifest's `model_file`).
            public_key: an Ed25519 public key: a PEM file's path or its bytes; the bundle must carry a matching
                signature of its manifest.
            spinning: let idle ONNX Runtime threads spin-wait between calls (see `SessionOptions.spinning`).
            provider: `default` (ONNX Runtime's kernels) or `openvino` (the OpenVINO plugin on the CPU; a dynamic
                int8 deployable file is swapped for the bundle's fused fp32 file unless `model_file` is given,
                logged and kept in `file_choice`).
            cache_dir: openvino's compiled-model cache (default ~/.cache/deployft/openvino).
            static_shapes: openvino, classifiers: compile the graph for each call's shape, its length padded up
                to a bucket (`runtime/shapes.py`). Faster where calls repeat the same batch sizes (one text at a
                time, full batches); off by default, since a server's batches of every size each compile anew.

        Every file it reads is checked against the manifest first (`deployft.runtime.integrity`).

        Raises:
            BundleError: missing folder, newer or older format, unknown task, a missing, added, modified or
                unreadable file, a name outside the folder, a signature that does not match.
            DeviceError: CUDA asked for but ONNX Runtime runs on CPU; OpenVINO asked for but not running.
            UsageError: static_shapes asked for on a generator, or without provider openvino.
            MissingDependencyError: OpenVINO asked for and its plugin is not installed.
        """
        options = SessionOptions(device=device, threads=threads, spinning=spinning, provider=provider,
                                 cache_dir=cache_dir)
        folder = Path(bundle)
        manifest, name, path, choice = checked_bundle(folder, model_file, public_key, provider)
        codec = TextCodec(folder, manifest.get("max_length"))
        options = _with_shapes(options, manifest, static_shapes, codec.pad_id)
        if choice:
            logger.warning("provider openvino: %s", choice)
        if provider == "default" and (manifest.get("quantization") or {}).get("quantizer") == "nncf" \
                and name == manifest.get("model_file"):
            logger.warning("%s was quantized by NNCF for the OpenVINO provider and validated through it only; its "
                           "speed and accuracy on ONNX Runtime's own kernels are unmeasured: pass --provider "
                           "openvino", name)
        why = f"ONNX Runtime cannot load model file {name} in {folder} ({{reason}}); {REEXPORT}"
        with reraise_as(BundleError, why):
            session, runtime = create_session(path, options)
        actual = runtime.device
        logger.info("loaded %s (%s) on %s (provider %s)", folder, name, actual, runtime.provider)
        if manifest.get("device") not in (None, actual):
            logger.warning("%s was exported and validated for %s but runs on %s; its speed and accuracy there "
                           "are unmeasured (re-export with --device %s)", folder, manifest["device"], actual, actual)
        return cls(folder, manifest, session, actual, name, runtime, choice, codec)

    def __repr__(self) -> str:
        return (f"Predictor(task={self.task!r}, model_file={self.model_file!r}, device={self.device!r}, "
                f"provider={self.runtime.provider!r})")

    # ---- classification ----------------------------------------------------------------------

    def _require(self, generator: bool, call: str) -> None:
        if (self.decoder is not None) != generator:
            task, other = ("generate", "predict()") if generator else ("classify", "generate() or stream()")
            raise UsageError(f"{call} needs a {task} bundle but {self.folder} is a {self.task} bundle; call {other}")

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Raw model call on tokenized ids (batch, length).

        Returns the logits: (batch, labels) for a classifier; (batch, length, vocab) for a generator, every
        position of a right-padded batch in one call with an empty KV cache (what perplexity needs).
        """
        if self.decoder is not None:
            return self.decoder.full_logits(input_ids.astype(np.int64), attention_mask.astype(np.int64))
        return self.head.logits(input_ids, attention_mask)

    def predict(self, texts: str | list[str], batch_size: int = 32) -> Prediction | list[Prediction]:
        """Classify a text (returns one Prediction) or a list of texts (returns a list, same order).

        Texts are sorted by length and padded per batch; texts longer than the bundle's max_length are
        truncated and counted in the log.
        """
        self._require(False, "predict()")
        single = isinstance(texts, str)
        rows = check_texts([texts] if single else texts, "predict()")
        results = self._classify(self.codec.encode(rows), check_batch_size(batch_size))
        return results[0] if single else results

    def predict_ids(self, ids: list[list[int]], batch_size: int = 32) -> list[Prediction]:
        """Classify already-tokenized texts (same order): sorted by length, right-padded per batch of
        `batch_size`, so texts of similar length share a call and padding stays small.

        Raises:
            UsageError: `ids` is not a list of lists of token ids in [0, vocab_size), or a bad batch size.
        """
        self._require(False, "predict_ids()")
        if not isinstance(ids, (list, tuple)):
            raise UsageError(f"predict_ids() takes a list of token-id lists, got {type(ids).__name__}; "
                             "pass e.g. predictor.codec.encode(texts)")
        rows = [check_token_ids(row, self.vocab_size, f"predict_ids() row {i}") for i, row in enumerate(ids)]
        return self._classify(rows, check_batch_size(batch_size))

    def _classify(self, ids: list[list[int]], batch_size: int) -> list[Prediction]:
        ids = [row or [self.codec.pad_id] for row in ids]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        results: list[Prediction | None] = [None] * len(ids)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            logits = self.forward(*self.codec.pad([ids[i] for i in chunk], side="right"))
            for i, row in zip(chunk, softmax(logits.astype(np.float64))):
                results[i] = self._prediction(row)
        return results

    def _prediction(self, probs: np.ndarray) -> Prediction:
        labels = self.labels or [str(i) for i in range(len(probs))]
        best = int(probs.argmax())
        return Prediction(labels[best], float(probs[best]), {lab: float(p) for lab, p in zip(labels, probs)})

    # ---- generation --------------------------------------------------------------------------

    def _decoder(self, config: dict) -> KVDecoder:
        ids = special_ids(config, read_json(self.folder / "generation_config.json"), self.manifest.get("generation"))
        self.bos_id = ids.bos
        max_positions = config.get("max_position_embeddings") or config.get("n_positions")
        return KVDecoder(self.session, self.device, ids.eos, ids.pad, max_positions)

    def prompt_ids(self, prompt: str | list[dict]) -> list[int]:
        """Token ids of a prompt string (in the bundle's prompt format) or of chat messages (its chat template),
        truncated exactly as training truncated prompts (`deployft.prompts`)."""
        ids = prompt_ids(prompt, self.prompt_format, self.codec, self.max_length)
        return ids or [self._start_id]

    @property
    def _start_id(self) -> int:
        """The first token of an empty prompt: the begin-of-text token, as an unconditional model would start."""
        return int(self.bos_id if self.bos_id is not None else self.decoder.pad_id)

    def _rows(self, prompts: list) -> list[list[int]]:
        """`prompt_ids` of each prompt, with one warning for all the prompts cut."""
        return prompt_rows(prompts, self.prompt_format, self.codec, self.max_length, self._start_id)

    def generate(self, prompt: str | list, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: str | list[str] | tuple[str, ...] = ()) -> str | list[str]:
        """Complete a prompt string, a chat (list of {"role", "content"} dicts), or a list of prompt strings.

        A list of strings is generated as one left-padded batch and returns a list. temperature 0 is greedy;
        the returned text ends before the first stop string or end token.

        `seed` (temperature > 0): every row samples from its own generator seeded with `seed`, so with an fp32 file
        a row gets the text its prompt gets alone, in any batch (as the server does per request). A blockwise-int8
        file's MatMulNBits kernel computes a batch of rows slightly differently from one row, so where two tokens
        are nearly tied a batched row can take the other one, greedy too. Identical prompts with the same seed
        give identical samples: `generate([p] * 3, temperature=1, seed=0)` is one text three times. Pass
        seed=None (fresh entropy per row) or call with different seeds for different samples.
        """
        self._require(True, "generate()")
        options = GenerationOptions(max_new_tokens, temperature, top_k, top_p, seed, stop)
        batch = check_prompt(prompt)
        texts = complete(self.decoder, self.codec, self._rows(list(prompt) if batch else [prompt]), options)
        return texts if batch else texts[0]

    def stream(self, prompt: str | list[dict], max_new_tokens: int = 64, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               stop: str | list[str] | tuple[str, ...] = ()) -> Iterator[str]:
        """Yield text pieces as they are decoded.

        They concatenate to what `generate` returns unless the tokenizer's decoder rewrites text it has already
        decoded once later tokens follow (a clean-up of the space before punctuation: " ." becomes "."). A piece
        already yielded is never taken back, so the stream then goes on from the first character where the whole
        decode differs from the text shown: "x", " ", "." streamed, "x." generated.

        `seed` (temperature > 0) seeds the row's own generator, as in `generate`: the same prompt and seed stream the
        same text, the text `generate` gives that prompt alone or in a batch; seed=None samples afresh each call.
        """
        self._require(True, "stream()")
        options = GenerationOptions(max_new_tokens, temperature, top_k, top_p, seed, stop)
        if check_prompt(prompt):
            raise UsageError("stream() takes one prompt or one chat, not a list of prompts; call generate() for "
                             "a batch")
        yield from stream_pieces(self.decoder, self.codec, self._rows([prompt])[0], options)

    def iter_token_ids(self, prompt_ids: list[int], max_new_tokens: int = 64, temperature: float = 0.0,
                       top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                       ignore_eos: bool = False) -> Iterator[int]:
        """Yield new token ids one by one for already-tokenized `prompt_ids`.

        Ends after an end token, or, with `ignore_eos`, only after exactly `max_new_tokens` (for timing). `seed`
        seeds the row's own generator, as in `generate`: the same ids and seed give the same tokens; None: fresh.

        Raises:
            UsageError: an empty list, or an id that is not an integer in [0, vocab_size); a bad setting.
        """
        self._require(True, "iter_token_ids()")
        options = GenerationOptions(max_new_tokens, temperature, top_k, top_p, seed)
        row = check_token_ids(prompt_ids, self.vocab_size, "iter_token_ids() prompt_ids")
        if not row:
            raise UsageError("prompt_ids is empty; pass at least one token id")
        ids = np.asarray([row], dtype=np.int64)
        done = np.zeros(1, dtype=bool)
        for tokens in self.decoder.iter_batch(ids, np.ones_like(ids), options, done, ignore_eos):
            yield int(tokens[0])

