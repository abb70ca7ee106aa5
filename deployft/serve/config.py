"""`ServeConfig`: how `deployft serve` runs a BUNDLE, validated before any model is loaded."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..runtime.session import PROVIDERS

API_KEY_ENV = "DEPLOYFT_API_KEY"
"""The environment variable read for the API key when `--api-key` is not given."""
DEVICES = ("cpu", "cuda", "auto")


def _number(name: str, value, fix: str, number=int, zero: bool = False) -> None:
    """Refuse `value` unless it is a positive int (or finite number, `number=float`), or 0 too with `zero`."""
    kind = "finite number" if number is float else "integer"
    if isinstance(value, bool) or not isinstance(value, (int, float) if number is float else int) \
            or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        wanted = f"{'a' if number is float else 'an'} {kind} >= 0" if zero else f"a positive {kind}"
        raise UsageError(f"{name} must be {wanted}, got {value!r}; pass {fix}")


@dataclass
class ServeConfig:
    """How to serve a BUNDLE over HTTP."""

    bundle: str | Path
    """BUNDLE folder written by `deployft export`."""
    host: str = "127.0.0.1"
    """Address to listen on: loopback by default; 0.0.0.0 exposes the server to the network."""
    port: int = 8000
    """TCP port to listen on."""
    threads: int | None = None
    """Intra-op CPU threads of the ONNX Runtime session (None: ONNX Runtime's default)."""
    device: str = "cpu"
    """`cpu`, `cuda`, or `auto`."""
    provider: str = "default"
    """ONNX Runtime provider: `default` or `openvino` (the OpenVINO plugin on the CPU)."""
    model_file: str | None = None
    """Another `.onnx` variant of the bundle (default: its manifest's model_file)."""
    public_key: str | None = None
    """An Ed25519 public key PEM file: refuse to serve a bundle whose manifest signature does not match it."""
    model_name: str | None = None
    """The model id clients send and `/v1/models` lists (default: the bundle folder's name)."""
    max_batch_size: int = 32
    """The most texts (classifier) or sequences (generator) run in one ONNX Runtime call; 1 turns batching off."""
    max_wait_ms: float = 5.0
    """How long the classifier batcher waits for more texts before running a batch that is not full (it does not
    wait when no other request is in flight)."""
    prefix_cache_mb: int = 128
    """Memory for generator prompts' KV caches kept so that prompts starting the same way (a system message, a
    chat's previous turns) resume from them; 0 turns the prefix cache off."""
    max_queue: int = 256
    """Requests allowed to wait for the model; one more is answered 429 with Retry-After."""
    max_texts: int = 64
    """Texts allowed in one classification request."""
    max_tokens_limit: int = 512
    """The largest `max_tokens` a completion request may ask for; one that leaves it out gets the route's default
    (256 for chat, 16 for completions) or this limit, whichever is lower."""
    max_body_bytes: int = 1_000_000
    """The largest request body; a bigger one is answered 413."""
    request_timeout_s: float = field(default=120.0, metadata={"flag": "request_timeout"})
    """Seconds a request may wait and run before it is answered 504 (its queue place or batch slot is freed)."""
    grace_s: float = field(default=30.0, metadata={"flag": "grace"})
    """Seconds in-flight requests get to finish after SIGTERM before the server exits."""
    api_key: str | None = None
    """Bearer key every model route requires (default: the DEPLOYFT_API_KEY environment variable; none: open)."""

    def __post_init__(self) -> None:
        self.bundle = Path(self.bundle)
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        if self.device not in DEVICES:
            raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}; pass --device cpu")
        if self.provider not in PROVIDERS:
            raise UsageError(f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}; "
                             "pass --provider default")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise UsageError(f"port must be an integer in 0..65535, got {self.port!r}; pass --port 8000")
        if not isinstance(self.host, str) or not self.host:
            raise UsageError(f"host must be an address, got {self.host!r}; pass --host 127.0.0.1")
        if self.threads is not None:
            _number("threads", self.threads, "--threads with a value above 0")
        for name in ("max_batch_size", "max_queue", "max_texts", "max_tokens_limit", "max_body_bytes"):
            _number(name, getattr(self, name), f"--{name.replace('_', '-')} with a value above 0")
        for name in ("request_timeout_s", "grace_s"):
            _number(name, getattr(self, name), f"--{name.replace('_', '-')[:-2]} with a value above 0", float)
        _number("prefix_cache_mb", self.prefix_cache_mb, "--prefix-cache-mb 128 (0 turns it off)", zero=True)
        _number("max_wait_ms", self.max_wait_ms, "--max-wait-ms 5", float, zero=True)
        if self.api_key is not None and (not isinstance(self.api_key, str) or len(self.api_key) < 8):
            raise UsageError("the API key must be a string of at least 8 characters; pass a longer --api-key "
                             f"or {API_KEY_ENV}")

    def warn_if_open(self) -> None:
        """Log a warning when the server is reachable from the network and every client may use the model."""
        if self.exposed and self.api_key is None:
            logging.getLogger("deployft.serve").warning(
                "listening on %s without an API key: anyone who reaches this address can use the model; "
                "pass --api-key or set %s", self.host, API_KEY_ENV)

    @property
    def exposed(self) -> bool:
        """True when the host is not a loopback address (the server is reachable from the network)."""
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host != "localhost"

    @property
    def name(self) -> str:
        """The model id of the API."""
        return self.model_name or Path(self.bundle).resolve().name
