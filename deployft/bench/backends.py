"""One predictor interface over every variant, so one loop times them all.

`pytorch` is the RUN in eager fp32, `pytorch-int8` the same model through torch.ao dynamic int8,
`pytorch-compile` the same model through torch.compile, and every other name an `.onnx` file of the
BUNDLE, run by the product's own `deployft.runtime.Predictor`.
"""

from __future__ import annotations

import copy
import io
import time
from pathlib import Path
import numpy as np

from ..errors import UsageError
from ..tasks import get_task
from .config import TORCH_VARIANTS


class Backend:
    """A loaded variant: logits for a block of token ids, and timed greedy generation."""

    name: str
    precision: str = "fp32"

    def load(self) -> None:
        raise NotImplementedError

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits as numpy: `[batch, labels]` for classifiers, `[batch, seq, vocab]` for generators."""
        raise NotImplementedError

    def generate(self, prompt_ids: list[int], new_tokens: int, stop_at_eos: bool = False
                 ) -> tuple[list[int], list[float]]:
        """Greedy tokens and, for each, seconds from the call's start until it was available.

        For timing (`stop_at_eos=False`) every variant generates exactly `new_tokens`, end tokens included,
        so all of them do the same work; the accuracy check stops at the first end token as users would.
        """
        raise NotImplementedError

    def size_bytes(self) -> int:
        raise NotImplementedError

    def weight_bytes_per_token(self) -> int | None:
        """Weight bytes one decode step reads (`roofline.py`), or None where they cannot be counted."""
        return None

    def sync(self) -> None:
        """Wait for queued device work (CUDA); nothing on CPU."""

    def details(self) -> dict:
        """How the variant runs, for the report (engine settings of a peer, the provider of an `.onnx` file run on
        OpenVINO); empty for deployft's own files on the default provider."""
        return {}


class _Stamps:
    """A transformers streamer that notes when each new token arrives (the first `put` is the prompt)."""

    def __init__(self, start: float):
        self.start, self.tokens, self.times, self._prompt_seen = start, [], [], False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        ids = value.reshape(-1).tolist()  # .tolist() waits for the device, so the stamp is honest on CUDA
        self.times.extend([time.perf_counter() - self.start] * len(ids))
        self.tokens.extend(ids)

    def end(self) -> None:
        pass


class TorchBackend(Backend):
    """The RUN's PyTorch model: eager fp32, dynamic int8 or compiled."""

    def __init__(self, name: str, run: Path, task: str, device: str, threads: int):
        self.name, self.run, self.task, self.device, self.threads = name, Path(run), task, device, threads
        self.precision = "int8" if name == "pytorch-int8" else "fp32"

    def load(self) -> None:
        import torch

        torch.set_num_threads(self.threads)
        if self.name == "pytorch-int8" and self.device != "cpu":
            raise UsageError("pytorch-int8 (torch.ao dynamic quantization) has CPU kernels only; "
                             "drop it from --variants on --device cuda")
        cls = get_task(self.task).model_class()
        model = cls.from_pretrained(self.run, dtype=torch.float32).eval()
        if self.name == "pytorch-int8":
            from torch.ao.quantization import quantize_dynamic

            model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model.to(self.device)
        self._torch = torch
        if self.name == "pytorch-compile":
            self.model.forward = torch.compile(self.model.forward, dynamic=True)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(self.device)
            mask = torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64)).to(self.device)
            return self.model(input_ids=ids, attention_mask=mask).logits.float().cpu().numpy()

    def generate(self, prompt_ids: list[int], new_tokens: int, stop_at_eos: bool = False
                 ) -> tuple[list[int], list[float]]:
        torch = self._torch
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        config = copy.deepcopy(self.model.generation_config)
        eos = config.eos_token_id
        config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else \
            (eos[0] if isinstance(eos, list) else eos)
        if not stop_at_eos:
            config.eos_token_id = []  # an empty list (unlike None) keeps generate from restoring the model's
        self.sync()
        stamps = _Stamps(time.perf_counter())
        with torch.inference_mode():
            self.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                max_new_tokens=new_tokens, do_sample=False, num_beams=1, use_cache=True,
                                streamer=stamps)
        return stamps.tokens, stamps.times

    def size_bytes(self) -> int:
        if self.name == "pytorch-int8":
            buffer = io.BytesIO()
            self._torch.save(self.model.state_dict(), buffer)
            return buffer.tell()
        return sum(p.stat().st_size for p in self.run.glob("*.safetensors")) or \
            sum(p.stat().st_size for p in self.run.glob("*.bin"))

    def weight_bytes_per_token(self) -> int | None:
        from .roofline import torch_weight_bytes

        # torch.ao packs int8 Linear weights out of model.parameters(): they cannot be counted the same way
        return None if self.name == "pytorch-int8" else torch_weight_bytes(self.model)

    def sync(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.synchronize()


class OnnxBackend(Backend):
    """One `.onnx` file of the BUNDLE, run through `deployft.runtime.Predictor` (the product's own code path)."""

    def __init__(self, name: str, bundle: Path, precision: str, device: str, threads: int, provider: str = "default",
                 static_shapes: bool = False):
        self.name, self.bundle, self.precision = name, Path(bundle), precision
        self.device, self.threads, self.provider, self.static_shapes = device, threads, provider, static_shapes

    def load(self) -> None:
        from ..runtime import Predictor

        self.predictor = Predictor.load(self.bundle, device=self.device, threads=self.threads, model_file=self.name,
                                        provider=self.provider, static_shapes=self.static_shapes)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return np.asarray(self.predictor.forward(input_ids, attention_mask)).astype(np.float32)

    def generate(self, prompt_ids: list[int], new_tokens: int, stop_at_eos: bool = False
                 ) -> tuple[list[int], list[float]]:
        tokens, times = [], []
        start = time.perf_counter()
        for token in self.predictor.iter_token_ids(list(prompt_ids), max_new_tokens=new_tokens,
                                                   ignore_eos=not stop_at_eos):
            times.append(time.perf_counter() - start)
            tokens.append(int(token))
        return tokens, times

    def size_bytes(self) -> int:
        model = self.bundle / self.name
        data = [p for p in self.bundle.iterdir() if p.name in (model.name + "_data", model.name + ".data")]
        return model.stat().st_size + sum(p.stat().st_size for p in data)

    def details(self) -> dict:
        runtime = self.predictor.runtime
        if runtime.provider == "default":
            return {}
        return {"provider": runtime.provider, "inference_precision": runtime.precision,
                "static_shapes": runtime.static_shapes, "threads": runtime.threads, "nodes": runtime.nodes}

    def weight_bytes_per_token(self) -> int | None:
        from .roofline import onnx_weight_bytes

        return onnx_weight_bytes(self.bundle / self.name)


def make_backend(name: str, run: Path, bundle: Path, manifests: dict[str, dict], device: str,
                 threads: int, provider: str = "default", peer: dict | None = None,
                 static_shapes: bool = False) -> Backend:
    """The backend for variant `name` (validated against the bundle's variants beforehand; `peer`: where a peer
    variant was built, see `peers.build_peers`)."""
    if peer is not None:
        from .peer_backends import make_peer_backend

        return make_peer_backend(name, peer, threads)
    if name in TORCH_VARIANTS:
        return TorchBackend(name, run, manifests["run"]["task"], device, threads)
    info = manifests["bundle"].get("variants", {}).get(name, {})
    return OnnxBackend(name, bundle, info.get("precision", "fp32"), device, threads, provider, static_shapes)
