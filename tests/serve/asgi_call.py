"""One request sent to the ASGI app directly, whose client can leave when the test says (TestClient cannot), and
a reader of the app's /metrics samples."""

from __future__ import annotations

import asyncio
import json


class AsgiCall:
    """A POST of `body` to `path`; the client disconnects once `leave()` is called."""

    def __init__(self, path: str, body: dict):
        self.path, self.body = path, json.dumps(body).encode()
        self.sent: list[dict] = []
        self._read = False
        self._leave = asyncio.Event()

    def scope(self) -> dict:
        return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                "method": "POST", "path": self.path, "raw_path": self.path.encode(), "root_path": "",
                "scheme": "http", "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]}

    def start(self, app) -> asyncio.Task:
        return asyncio.ensure_future(app(self.scope(), self.receive, self.send))

    def leave(self) -> None:
        self._leave.set()

    async def receive(self) -> dict:
        if not self._read:
            self._read = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self._leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)


async def until(condition, limit: int = 1000) -> None:
    """Give the event loop turns until `condition()` holds (no clock involved)."""
    for _ in range(limit):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def metric(service, name: str, **labels: str) -> float:
    """The value of one sample of the app's /metrics (0 when it is not there yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(service.metrics.render()[0].decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0
