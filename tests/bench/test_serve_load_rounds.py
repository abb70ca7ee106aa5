"""benchmarks/serve_load.py's rounds under `quiet.kept_rounds`: an HTTP round is tried again (after --pause) while
others were busy, at most --tries times, every try's row kept; the classifier alone alternates its batch sizes.
Requests, /metrics and the model are faked, the machine readings scripted: only the judging is under test."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from noisy_rounds import script_noise

pytest.importorskip("aiohttp")
pytest.importorskip("psutil")

from deployft.bench.quiet import RoundMeter  # noqa: E402


@pytest.fixture(scope="module")
def serve_load(benchmark_script):
    return benchmark_script("serve_load")


@pytest.fixture
def fake_server(serve_load, monkeypatch):
    """A server whose /metrics counts one ONNX Runtime call per request served; `events` is what happened, in
    order: the meter's start and finish, the requests ("load") and the /metrics reads."""
    served, events, pauses = [0], [], []

    async def load(call, url, concurrency, total, first=0):
        events.append("load")
        served[0] += total
        return [{"status": 200, "latency": 0.01, "tokens": 0, "ttft": None}] * total, 0.5

    def histogram(server):
        events.append("metrics")
        return {"1.0": float(served[0]), "+Inf": float(served[0]), "_count": float(served[0]),
                "_sum": float(served[0])}

    start, finish = RoundMeter.start, RoundMeter.finish
    monkeypatch.setattr(RoundMeter, "start", lambda self: events.append("start") or start(self))
    monkeypatch.setattr(RoundMeter, "finish", lambda self: events.append("finish") or finish(self))
    monkeypatch.setattr(serve_load, "load", load)
    monkeypatch.setattr(serve_load, "batch_histogram", histogram)
    monkeypatch.setattr(serve_load.time, "sleep", pauses.append)
    return argparse.Namespace(url="http://fake", events=events, pauses=pauses)


def _args(tries: int) -> argparse.Namespace:
    return argparse.Namespace(max_foreign=0.05, tries=tries, pause=5.0)


def test_a_busy_round_is_tried_again_and_its_row_kept_with_the_rejected(serve_load, fake_server, monkeypatch):
    script_noise(monkeypatch, lambda i: i < 2)  # others took a whole core during the first two tries
    row = serve_load.clean_round(fake_server, None, 4, 12, _args(tries=4), first=8)
    assert row["foreign_load"] == 0.0 and "unclean" not in row
    assert [r["foreign_load"] for r in row["rejected_rounds"]] == [1.0, 1.0]
    # each try's calls come from the /metrics reads around that try alone
    assert [r["batches"]["calls"] for r in [*row["rejected_rounds"], row]] == [12, 12, 12]
    assert fake_server.pauses == [5.0, 5.0]  # a pause before each repeat
    # the meter's bracket holds the requests only, as before kept_rounds: /metrics is read outside it
    assert fake_server.events == ["metrics"] + ["start", "load", "finish", "metrics"] * 3


def test_after_tries_busy_rounds_the_last_is_kept_unclean(serve_load, fake_server, monkeypatch):
    script_noise(monkeypatch, lambda i: True)  # others never leave the machine alone
    row = serve_load.clean_round(fake_server, None, 4, 12, _args(tries=3))
    assert row["unclean"] is True and row["foreign_load"] == 1.0
    assert len(row["rejected_rounds"]) == 2 and fake_server.pauses == [5.0, 5.0]  # 3 tries in all, as --tries says
    assert fake_server.events.count("load") == 3


def test_the_servers_are_our_own_processes(serve_load):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in serve_load.descendants()
    finally:
        child.kill()
        child.wait()


def test_the_model_alone_repeats_a_rejected_round_at_its_batch_size(serve_load, monkeypatch):
    import deployft

    calls = []  # each call's batch size; None where the meter starts a round

    class Fake:
        codec = argparse.Namespace(encode=lambda texts: [[1, 2, 3]] * len(texts))

        @classmethod
        def load(cls, bundle, threads, spinning):
            return cls()

        def predict_ids(self, ids, batch_size):
            calls.append(batch_size)

    monkeypatch.setattr(deployft, "Predictor", Fake)
    start = RoundMeter.start
    monkeypatch.setattr(RoundMeter, "start", lambda self: calls.append(None) or start(self))
    script_noise(monkeypatch, lambda i: i == 1)  # the first batched round ran while others were busy
    alone = serve_load.model_alone("bundle", 4, argparse.Namespace(model_rounds=2, max_foreign=0.05), rows=8)
    warm_up, *rounds = " ".join("|" if c is None else str(c) for c in calls).split("|")
    assert warm_up.split() == ["4"] and [r.split() for r in rounds] == [["1"] * 8, ["4"] * 2, ["4"] * 2, ["1"] * 8,
                                                                         ["4"] * 2]
    # 1, 4 (rejected), 4 again, 1, 4: the kept rounds alternate, exactly two of each size
    assert alone["rounds"] == {"1": 2, "4": 2} and (alone["rejected_rounds"], alone["dirty_rounds"]) == (1, 0)
