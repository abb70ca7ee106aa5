"""benchmarks/serve_load.py's load generator against a live tiny server: answers counted, CPU accounted once."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("psutil")  # benchmarks/serve_load.py imports it

from live_server import Server, free_port  # noqa: E402


@pytest.fixture(scope="module")
def serve_load(benchmark_script):
    return benchmark_script("serve_load")


@pytest.fixture(scope="module")
def server(runtime_bundle):
    server = Server(runtime_bundle("bert"))
    yield server
    server.stop()


def test_a_round_answers_every_request_and_reports_the_clients_cpu(serve_load, server):
    before = serve_load.client_cpu()
    results, wall = asyncio.run(serve_load.load(serve_load.classify_call, server.url, 4, 12))
    row = serve_load.summarize(results, wall, serve_load.client_cpu() - before)
    assert row["requests"] == row["ok"] == 12 and row["failed"] == 0
    assert row["client_cpu_ms_per_request"] > 0


def test_the_model_alone_is_timed_at_batch_one_and_batched(serve_load, runtime_bundle):
    import argparse

    args = argparse.Namespace(model_rounds=2, max_foreign=float("inf"))  # every round counts, busy or not
    alone = serve_load.model_alone(runtime_bundle("bert"), 4, args, rows=16)
    assert alone["rounds"] == {"1": 2, "4": 2} and alone["rejected_rounds"] == 0
    assert alone["rows_per_s_batch_1"] > 0 and alone["rows_per_s_batched"] > 0
    assert alone["ratio"] == round(alone["rows_per_s_batched"] / alone["rows_per_s_batch_1"], 2)


def test_a_refused_connection_is_a_failed_request_not_a_crash(serve_load):
    results, wall = asyncio.run(serve_load.load(serve_load.classify_call, f"http://127.0.0.1:{free_port()}", 2, 3))
    assert [r["status"] for r in results] == [0, 0, 0] and "Error" in serve_load.summarize(results, wall)["first_failure"]


def test_a_streamed_generation_counts_its_tokens_and_first_token_time(serve_load, runtime_bundle, monkeypatch):
    monkeypatch.setattr(serve_load, "SYSTEM", None)  # the tiny bundle takes prompts of at most 32 tokens
    monkeypatch.setattr(serve_load, "PROMPTS", ["hi", "bees"])
    server = Server(runtime_bundle("llama"))
    try:
        call = lambda client, url, i: serve_load.generate_call(client, url, i, 4)  # noqa: E731
        results, _ = asyncio.run(serve_load.load(call, server.url, 2, 4))
    finally:
        server.stop()
    assert [r["status"] for r in results] == [200] * 4
    assert all(r["tokens"] > 0 and 0 < r["ttft"] <= r["latency"] for r in results)


def test_median_round_keeps_the_middle_round_whole(serve_load):
    trials = [{"tokens_per_s": v, "p50_ms": v * 10, "rejected_rounds": [{"r": v}] if v == 5 else []}
              for v in (5.0, 1.0, 3.0)]
    row = serve_load.median_round(trials, "tokens_per_s")
    assert row["tokens_per_s"] == 3.0 and row["p50_ms"] == 30.0
    assert row["rounds"] == 3 and row["tokens_per_s_rounds"] == [5.0, 1.0, 3.0]
    assert row["rejected_rounds"] == [{"r": 5.0}] and not row["unclean"]  # every round's rejections


def _two_free_ports() -> int:
    """A port p with p + 1 free too (run_task gives the second mode's server args.port + 1)."""
    import socket

    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


def test_both_modes_alternate_rounds_on_the_same_requests_and_report_their_median(serve_load, runtime_bundle,
                                                                                 monkeypatch):
    import argparse

    rounds = []
    clean_round = serve_load.clean_round

    def spy(server, call, concurrency, total, args, first=0):
        rounds.append((server.url, first))
        return clean_round(server, call, concurrency, total, args, first)

    monkeypatch.setattr(serve_load, "clean_round", spy)
    args = argparse.Namespace(rounds=3, concurrency=[2], classify_requests=6, max_foreign=float("inf"), tries=1,
                              pause=0.0, port=_two_free_ports(), soak=20, max_tokens=4)
    out = serve_load.run_task("classify", runtime_bundle("bert"), args)  # 10 requests per connection: 20
    assert set(out["modes"]) == {"batched", "unbatched"} and out["rounds_per_mode"] == 3
    for mode in out["modes"].values():
        (row,) = mode["rounds"]
        assert row["rounds"] == 3 and row["ok"] == 20 and len(row["requests_per_s_rounds"]) == 3
        assert mode["exit_code"] == 0
    assert out["modes"]["batched"]["soak"]["ok"] == 20 and out["modes"]["unbatched"]["soak"] is None
    batched, unbatched = (f"http://127.0.0.1:{args.port + i}" for i in (0, 1))
    # the modes take turns, which goes first alternates, and both get the same numbered requests in a round
    assert rounds == [(batched, 8), (unbatched, 8), (unbatched, 28), (batched, 28), (batched, 48), (unbatched, 48)]


def test_generation_rounds_report_what_the_prefix_cache_served(serve_load, runtime_bundle, monkeypatch):
    """Distinct questions after the same chat template opening: every request after the first resumes from a
    cached prefix, and the round's batch summary counts it from /metrics."""
    monkeypatch.setattr(serve_load, "PROMPTS", ["bees", "fish"])  # within the tiny bundle's 32-token prompt limit
    monkeypatch.setattr(serve_load, "SYSTEM", "")
    server = Server(runtime_bundle("llama"))
    try:
        before = serve_load.batch_histogram(server)
        call = lambda client, url, i: serve_load.generate_call(client, url, i, 4)  # noqa: E731
        results, wall = asyncio.run(serve_load.load(call, server.url, 1, 4))
        batches = serve_load.batch_sizes(before, serve_load.batch_histogram(server))
    finally:
        server.stop()
    assert [r["status"] for r in results] == [200] * 4
    # the first request resumes from the start-up warm-up's "hello", which opens with the same template tokens
    assert batches["prefix_hits"] == 4 and batches["prefix_tokens"] >= 4 * 4  # MIN_PREFIX tokens at least
    assert "prefix_hits" not in serve_load.batch_sizes({}, {"1.0": 2.0, "_count": 2.0, "_sum": 2.0})
