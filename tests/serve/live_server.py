"""A live `deployft serve` subprocess for the tests that need a real server (HTTP clients, signals, a browser)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`deployft serve BUNDLE` on a free loopback port, ready when constructed."""

    def __init__(self, bundle: Path, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("DEPLOYFT_API_KEY", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deployft", "serve", str(bundle), "--port", str(self.port), "--threads", "1",
             "--model-name", "tiny", *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 90
        while True:
            assert self.process.poll() is None, self.process.stdout.read()
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "the server never became ready"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
