"""Load-test `deployft serve` on loopback: batching on against batching off (`--max-batch-size 1`), same run.

For the default classifier and generator bundles (built by benchmarks/run_defaults.py, reused when present), one
server per mode is started (`--threads 2`, both running side by side; the idle one's threads sleep), then bounded,
self-stopping rounds of concurrent requests (one aiohttp client session, `concurrency` connections) run at
concurrency 1, 8, 32 and 64, the two modes' rounds alternating, --rounds of each; each mode reports its median
round: requests/s, generated tokens/s, p50/p99 latency and time to first token, status counts (2xx, 429, 5xx,
failed connections), the ONNX Runtime calls made and their rows (from the server's /metrics batch-size
histogram), prompt tokens and what the prefix cache served of them, the server's RSS before and after, and the
CPU time the load generator itself spent per request (it runs on the same cores as the server).
A generation round sends 16 requests per connection, at least 48 and at most 256 in all (48 at concurrency 1, 128
at 8, 256 at 32 and 64): its last requests finish one by one while a batching server's batch is partly empty (an
unbatched server's queue never is), so rounds of a few requests per connection would measure that drain more than
the batching. Every generation request asks its own numbered question after the same short system message.
Then 10,000 requests at concurrency 32 (classifier: --soak; generator: --generate-soak, each question new, so a
prefix cache that kept everything would grow) check that the batching server's RSS stays flat, read after each
fifth of them, and the classifier is timed alone, in this
process without HTTP (`model_alone`: batch 1 against the server's max batch size, the same threads and texts): the
most batching can multiply requests/s by on this machine.

The client is aiohttp, not httpx: on 2 cores httpx's AsyncClient spent about 5 ms of CPU per request at
concurrency 32 (a whole core, so the rounds measured the client), aiohttp about 0.2 ms.

Clean rounds: each round runs under `deployft.bench.quiet.kept_rounds`, judged by a `RoundMeter` (/proc/stat busy
time read before and after it, less the CPU time of this process and of its descendants, the servers); a round where
other processes used more than --max-foreign of one core (their CPU seconds over the round's wall time) is rejected
and repeated after --pause seconds, at most --tries tries in all (the last one is then kept, marked unclean);
rejected rounds are recorded. The classifier alone is judged the same way (up to 5 rejections in a row).

    python benchmarks/serve_load.py                      # both tasks -> results/serve_load.{json,md}
    python benchmarks/serve_load.py --task generate --generate-bundle outputs/bench-defaults/bundle-generate \
        --output benchmarks/results/serve_load_generate
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEXTS = ["a warm, funny and beautifully acted film", "dull, overlong and badly written",
         "the best thing I have seen this year, a triumph", "it never finds its footing; the jokes fall flat",
         "an uneven but often moving portrait of a family", "forgettable"]
PROMPTS = ["What is the capital of France?", "Tell me a joke.", "What do you like to do?", "Who are you?",
           "What is the meaning of life?", "Do you like music?"]
SYSTEM = "Be brief."
"""A short system message: SmolLM2's default one alone nearly fills the default bundle's 32-token prompt limit."""
MODES = {"batched": [], "unbatched": ["--max-batch-size", "1"]}


def client_cpu() -> float:
    """CPU seconds of this process alone (to the nanosecond, not the clock tick): during a round, what the load
    generator costs."""
    return time.process_time()


class Server:
    def __init__(self, bundle: Path, flags: list[str], port: int):
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([sys.executable, "-m", "deployft", "serve", str(bundle), "--port", str(port),
                                         "--threads", "2", *flags], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self.ps = psutil.Process(self.process.pid)
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError(f"server for {bundle} never became ready")

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(60)


async def classify_call(client: aiohttp.ClientSession, url: str, i: int) -> dict:
    started = time.perf_counter()
    async with client.post(url + "/v1/classify", json={"input": TEXTS[i % len(TEXTS)]}) as response:
        await response.read()
        status = response.status
    return {"status": status, "latency": time.perf_counter() - started, "tokens": 0, "ttft": None}


async def generate_call(client: aiohttp.ClientSession, url: str, i: int, max_tokens: int) -> dict:
    messages = [{"role": "system", "content": SYSTEM}] if SYSTEM else []
    # each request's own question, numbered first: what requests share is the system message and the chat
    # template's opening, as in a chat service (a repeated prompt would come from the prefix cache almost whole)
    messages.append({"role": "user", "content": f"Question {i}: {PROMPTS[i % len(PROMPTS)]}"})
    body = {"messages": messages, "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    started, ttft, tokens, prompt_tokens = time.perf_counter(), None, 0, None
    async with client.post(url + "/v1/chat/completions", json=body) as response:
        async for raw in response.content:  # one SSE line at a time
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if ttft is None and event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                ttft = time.perf_counter() - started
            if event.get("usage"):
                tokens, prompt_tokens = event["usage"]["completion_tokens"], event["usage"]["prompt_tokens"]
        status = response.status
    return {"status": status, "latency": time.perf_counter() - started, "tokens": tokens, "ttft": ttft,
            "prompt_tokens": prompt_tokens}


async def load(call, url: str, concurrency: int, total: int, first: int = 0) -> tuple[list[dict], float]:
    """`total` requests numbered from `first` (a generation request's question carries its number), `concurrency`
    at a time."""
    counter, end = itertools.count(first), first + total
    results: list[dict] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as client:
        async def worker():
            while (i := next(counter)) < end:
                try:
                    results.append(await call(client, url, i))
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    results.append({"status": 0, "latency": 0.0, "tokens": 0, "ttft": None,
                                    "error": f"{type(exc).__name__}: {exc}"})

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - started


def pct(values: list[float], q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else None


def summarize(results: list[dict], wall: float, client_s: float | None = None) -> dict:
    ok = [r for r in results if 200 <= r["status"] < 300]
    return {"requests": len(results), "wall_s": round(wall, 3), "ok": len(ok),
            "client_cpu_ms_per_request": round(client_s / len(results) * 1000, 3)
            if client_s is not None and results else None,
            "status_429": sum(r["status"] == 429 for r in results),
            "status_4xx_other": sum(400 <= r["status"] < 500 and r["status"] != 429 for r in results),
            "status_5xx": sum(r["status"] >= 500 for r in results),
            "failed": sum(r["status"] == 0 for r in results),
            "first_failure": next((r["error"] for r in results if r["status"] == 0), None),
            "requests_per_s": round(len(ok) / wall, 2), "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
            "p50_ms": pct([r["latency"] for r in ok], 0.5), "p99_ms": pct([r["latency"] for r in ok], 0.99),
            "ttft_p50_ms": pct([r["ttft"] for r in ok], 0.5), "ttft_p99_ms": pct([r["ttft"] for r in ok], 0.99),
            "prompt_tokens_mean": round(statistics.mean(prompts), 1) if (prompts := [
                r["prompt_tokens"] for r in ok if r.get("prompt_tokens")]) else None}


PREFIX_COUNTERS = {"deployft_prefix_cache_hits": "_prefix_hits", "deployft_prefix_cache_tokens": "_prefix_tokens"}
"""The generator's prefix cache counters in /metrics, and their keys in `batch_histogram`'s values."""


def batch_histogram(server: Server) -> dict[str, float]:
    """The server's cumulative `deployft_batch_size` histogram from /metrics: `{le: count}`, `_count` and `_sum`
    (and the prefix cache counters, where the server has them)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=30).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in PREFIX_COUNTERS:
            values[PREFIX_COUNTERS[family.name]] = sum(sample.value for sample in family.samples
                                                       if sample.name.endswith("_total"))
        if family.name != "deployft_batch_size":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                values[sample.labels["le"]] = values.get(sample.labels["le"], 0.0) + sample.value
            elif sample.name.endswith(("_count", "_sum")):
                key = sample.name.rsplit("_", 1)[1]
                values["_" + key] = values.get("_" + key, 0.0) + sample.value
    return values


def batch_sizes(before: dict[str, float], after: dict[str, float]) -> dict:
    """ONNX Runtime calls made during a round, their mean rows, and how many fell in each bucket (not cumulative)."""
    calls = after.get("_count", 0.0) - before.get("_count", 0.0)
    rows = after.get("_sum", 0.0) - before.get("_sum", 0.0)
    edges = sorted((k for k in after if not k.startswith("_")), key=float)
    cumulative = [after[k] - before.get(k, 0.0) for k in edges]
    per_bucket = {f"<={edge}": int(c - p) for edge, c, p in zip(edges, cumulative, [0.0, *cumulative[:-1]]) if c - p}
    reuse = {key[1:]: int(after[key] - before.get(key, 0.0)) for key in PREFIX_COUNTERS.values() if key in after}
    return {"calls": int(calls), "mean_rows": round(rows / calls, 2) if calls else None, "histogram": per_bucket,
            **reuse}


def descendants() -> list[int]:
    """The pids of this process's live descendants (the servers and anything they started): CPU they use during a
    round is ours, not others'."""
    return [child.pid for child in psutil.Process().children(recursive=True)]


def clean_round(server: Server, call, concurrency: int, total: int, args, first: int = 0) -> dict:
    """Run one round (requests numbered from `first`) under `kept_rounds`: repeated, after --pause seconds, while
    other processes took more than --max-foreign of one core, at most --tries times in all (the last try is then
    kept, marked unclean). The rejected tries' rows are returned too, in `rejected_rounds`."""
    from deployft.bench.quiet import RoundMeter, kept_rounds

    meter = RoundMeter(own_pids=descendants, max_share=args.max_foreign, max_rejected=max(0, args.tries - 1))
    histograms, rejected = [batch_histogram(server)], []

    def attempt(_kept: int) -> dict:  # the meter's bracket holds the requests only: /metrics is read in `judged`
        client = client_cpu()
        results, wall = asyncio.run(load(call, server.url, concurrency, total, first))
        return {"concurrency": concurrency, **summarize(results, wall, client_cpu() - client), "foreign_load": None}

    def judged(row: dict, kept: bool) -> None:
        histograms.append(batch_histogram(server))  # also the next try's "before": no request in between
        share = meter.shares[-1] if meter.shares else None  # None: no /proc/stat, every round kept unjudged
        row.update(foreign_load=None if share is None else round(share, 3), batches=batch_sizes(*histograms[-2:]))
        if not kept:
            rejected.append(row)
            print(f"  rejected (others used {share:.0%} of a core); again", flush=True)
            time.sleep(args.pause)

    (row,) = kept_rounds(meter, 1, attempt, on_judged=judged)
    return {**row, "rejected_rounds": rejected, **({"unclean": True} if meter.dirty else {})}


def model_alone(bundle: Path, batch_size: int, args, rows: int = 384) -> dict:
    """The classifier without HTTP, in this process, with the server's threads: rows/s at batch 1 and at
    `batch_size` on the load generator's texts, interleaved rounds judged by `RoundMeter` (`kept_rounds`: a
    rejected round is repeated at its batch size, so the kept rounds alternate), the median of the kept ones.
    Their ratio is the most batching can add on this machine before HTTP and the load generator take their share
    of the cores."""
    from deployft import Predictor
    from deployft.bench.quiet import RoundMeter, kept_rounds

    predictor = Predictor.load(bundle, threads=2, spinning=False)
    ids = predictor.codec.encode([TEXTS[i % len(TEXTS)] for i in range(rows)])
    sizes = tuple(dict.fromkeys((1, batch_size)))
    meter = RoundMeter(max_share=args.max_foreign)
    predictor.predict_ids(ids[:batch_size], batch_size=batch_size)  # warm-up

    def one_round(kept: int) -> tuple[int, float]:
        size = sizes[kept % len(sizes)]
        started = time.perf_counter()
        for start in range(0, rows, size):
            predictor.predict_ids(ids[start:start + size], batch_size=size)
        return size, rows / (time.perf_counter() - started)

    speeds: dict[int, list[float]] = {size: [] for size in sizes}
    for size, speed in kept_rounds(meter, len(sizes) * args.model_rounds, one_round):
        speeds[size].append(speed)
    median = {size: round(statistics.median(v), 1) for size, v in speeds.items()}
    return {"batch_size": batch_size, "rows_per_s_batch_1": median[1], "rows_per_s_batched": median[batch_size],
            "ratio": round(median[batch_size] / median[1], 2),
            "rounds": {str(k): len(v) for k, v in speeds.items()}, "rejected_rounds": meter.rejected,
            "dirty_rounds": meter.dirty}


def median_round(trials: list[dict], key: str) -> dict:
    """The round with the median `key` of a mode's interleaved rounds at one concurrency (every column from that
    one round), with how many rounds there were, their `key`s and the rounds rejected on the way."""
    ranked = sorted(trials, key=lambda r: r[key])
    middle = ranked[(len(ranked) - 1) // 2]
    return {**middle, "rounds": len(trials), f"{key}_rounds": [r[key] for r in trials],
            "rejected_rounds": [bad for r in trials for bad in r["rejected_rounds"]],
            "unclean": any(r.get("unclean") for r in trials)}


def run_task(task: str, bundle: Path, args) -> dict:
    """Both modes' servers run side by side (the idle one sleeps: no spinning threads); at each concurrency their
    rounds alternate, `args.rounds` each (which goes first alternates too), and each mode reports its median
    round. Both modes get the same requests in each round, numbered on from the previous round's: no question is
    asked twice, so a prefix cache serves what prompts share, not repeats."""
    call = classify_call if task == "classify" else \
        (lambda client, url, i: generate_call(client, url, i, args.max_tokens))
    key = "requests_per_s" if task == "classify" else "tokens_per_s"
    servers: dict[str, Server] = {}
    out = {"bundle": str(bundle), "rounds_per_mode": args.rounds, "modes": {}}
    first = 8  # after the warm-up's
    try:
        for offset, (mode, flags) in enumerate(MODES.items()):
            servers[mode] = Server(bundle, flags, args.port + offset)
            asyncio.run(load(call, servers[mode].url, 4, 8))  # warm-up: questions 0 to 7
            out["modes"][mode] = {"rounds": [], "rss_before": servers[mode].rss(), "soak": None}
        for concurrency in args.concurrency:
            total = max(args.classify_requests, 10 * concurrency) if task == "classify" else \
                max(args.generate_requests, min(args.generate_per_connection * concurrency, args.generate_cap))
            trials: dict[str, list[dict]] = {mode: [] for mode in servers}
            for round_index in range(args.rounds):
                order = list(servers) if round_index % 2 == 0 else list(reversed(servers))
                for mode in order:
                    trials[mode].append(clean_round(servers[mode], call, concurrency, total, args, first))
                first += total
            for mode in servers:
                out["modes"][mode]["rounds"].append(median_round(trials[mode], key))
                print(f"{task} {mode} c={concurrency}: {json.dumps(out['modes'][mode]['rounds'][-1])[:240]}",
                      flush=True)
        requests = args.soak if task == "classify" else args.generate_soak
        if requests:
            out["modes"]["batched"]["soak"] = soak = run_soak(servers["batched"], call, requests, first)
            print(f"soak: {json.dumps(soak)}", flush=True)
        for mode, server in servers.items():
            out["modes"][mode]["rss_after"] = server.rss()
    finally:
        for mode, server in servers.items():
            out["modes"].setdefault(mode, {})["exit_code"] = server.stop()
    return out


def run_soak(server: Server, call, requests: int, first: int, parts: int = 5) -> dict:
    """`requests` at concurrency 32 on one server, numbered from `first` (none asked before), in `parts` equal
    runs with the server's RSS after each: memory that grows with the requests served shows as a rising series."""
    soak, client, rows, wall = {"rss_before": server.rss(), "rss_after_parts": []}, client_cpu(), [], 0.0
    size = -(-requests // parts)
    for start in range(0, requests, size):
        results, seconds = asyncio.run(load(call, server.url, 32, min(size, requests - start), first + start))
        rows += results
        wall += seconds
        soak["rss_after_parts"].append(server.rss())
    soak.update(summarize(rows, wall, client_cpu() - client), rss_after=server.rss())
    return soak


def ratios(task_result: dict, key: str) -> dict:
    on, off = (task_result["modes"][m]["rounds"] for m in ("batched", "unbatched"))
    return {str(a["concurrency"]): round(a[key] / b[key], 2) if b[key] else None for a, b in zip(on, off)}


def write(results: dict, path: Path) -> None:
    path.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    lines = ["# deployft serve under load (loopback, `--threads 2`)", "", f"Command: `{results['command']}`  ",
             f"Measured {results['created']} on {results['machine']}; load generator: aiohttp, one process on the same "
             "cores (its CPU per request in the last column).", ""]
    for task, data in results["tasks"].items():
        key = "requests_per_s" if task == "classify" else "tokens_per_s"
        lines += [f"## {task}: {data['bundle']}", "",
                  f"Each row is the median of {data['rounds_per_mode']} rounds by {key} (the two modes' servers run "
                  "side by side and their rounds alternate); its columns are that round's, except the rejected "
                  f"rounds (all of them) and the last column (every round's {key}).", "",
                  "| mode | concurrency | requests | req/s | tokens/s | p50 ms | p99 ms | TTFT p50 ms | TTFT p99 ms "
                  "| 429 | other 4xx | 5xx | failed | others' load (of a core) | rejected rounds | model calls "
                  "| mean rows per call | rows per call (histogram) | prompt tokens (mean) "
                  "| prompts from prefix cache (tokens) "
                  "| client CPU ms/req | all rounds |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                  "| ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
        for mode, m in data["modes"].items():
            for r in m["rounds"]:
                lines.append(f"| {mode} | {r['concurrency']} | {r['requests']} | {r['requests_per_s']} | "
                             f"{r['tokens_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['ttft_p50_ms']} | "
                             f"{r['ttft_p99_ms']} | {r['status_429']} | {r['status_4xx_other']} | {r['status_5xx']} | "
                             f"{r['failed']} | {_share(r)}{' (unclean)' if r.get('unclean') else ''} | "
                             f"{len(r['rejected_rounds'])} | {_batches(r, 'calls')} | {_batches(r, 'mean_rows')} | "
                             f"{_histogram(r)} | {r.get('prompt_tokens_mean') or '–'} | "
                             f"{_reuse(r) if task == 'generate' else '–'} | "
                             f"{r.get('client_cpu_ms_per_request', '–')} | "
                             f"{', '.join(map(str, r.get(key + '_rounds', [])))} |")
        lines.append("")
        for mode, m in data["modes"].items():
            lines.append(f"- {mode}: server RSS {m['rss_before'] / 2**20:.0f} MiB before the rounds, "
                         f"{m['rss_after'] / 2**20:.0f} MiB after; exit code after SIGTERM {m['exit_code']}.")
            if m.get("soak"):
                s = m["soak"]
                lines.append(f"- Soak ({mode}): {s['requests']} requests at concurrency 32: {s['ok']} 2xx, "
                             f"{s['status_429']} 429, {s['status_5xx']} 5xx, {s['failed']} failed "
                             f"({s['first_failure'] or 'none'}); "
                             f"RSS {s['rss_before'] / 2**20:.1f} MiB before, {s['rss_after'] / 2**20:.1f} MiB after"
                             + (" (after each fifth: " + ", ".join(f"{r / 2**20:.1f}" for r in s["rss_after_parts"])
                                + " MiB)" if s.get("rss_after_parts") else "")
                             + (f"; {s['tokens_per_s']} tokens/s" if task == "generate" else "") + ".")
        lines += ["", f"Batched / unbatched {key} by concurrency: {data['ratio']}", ""]
        if data.get("model_alone"):
            a = data["model_alone"]
            lines += [f"The model alone, in one process without HTTP (same 2 threads, no spinning, the same texts; "
                      f"median of {' and '.join(f'{n} at batch {k}' for k, n in a['rounds'].items())} rounds kept, "
                      f"{a['rejected_rounds']} rejected, {a.get('dirty_rounds', 0)} of the kept dirty): "
                      f"{a['rows_per_s_batch_1']} rows/s one text per call, {a['rows_per_s_batched']} rows/s "
                      f"{a['batch_size']} per call: **{a['ratio']}x** is the most batching can give on this machine "
                      "before HTTP and the load generator take their share of the cores.", ""]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _share(row: dict) -> str:
    """Others' share of a core during the round; "–" where it could not be judged (no /proc/stat)."""
    return "–" if row["foreign_load"] is None else f"{row['foreign_load']:.1%}"


def _batches(row: dict, key: str):
    return (row.get("batches") or {}).get(key, "–")


def _reuse(row: dict) -> str:
    batches = row.get("batches") or {}
    return f"{batches['prefix_hits']} ({batches['prefix_tokens']})" if "prefix_hits" in batches else "–"


def _histogram(row: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in ((row.get("batches") or {}).get("histogram") or {}).items()) or "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("classify", "generate", "both"), default="both")
    parser.add_argument("--classify-bundle", type=Path)
    parser.add_argument("--generate-bundle", type=Path)
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench-defaults",
                        help="Where run_defaults.py builds (or already built) the default bundles.")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 64])
    parser.add_argument("--classify-requests", type=int, default=400)
    parser.add_argument("--generate-requests", type=int, default=48, help="Generation requests per round, at least.")
    parser.add_argument("--generate-per-connection", type=int, default=16,
                        help="Generation requests per connection and round (up to --generate-cap in all): a round "
                             "ends with its last requests finishing one by one, a batch partly empty meanwhile, so "
                             "rounds of a few requests per connection measure that drain more than the batching.")
    parser.add_argument("--generate-cap", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--soak", type=int, default=10_000, help="Classifier requests of the RSS check (0: none).")
    parser.add_argument("--generate-soak", type=int, default=10_000,
                        help="Generation requests of the RSS check, --max-tokens each (0: none; about ten minutes "
                             "on 2 cores).")
    parser.add_argument("--model-rounds", type=int, default=5,
                        help="Clean rounds of the classifier alone, without HTTP (0: skip).")
    parser.add_argument("--rounds", type=int, default=3,
                        help="Interleaved rounds per mode and concurrency; each mode reports its median round.")
    parser.add_argument("--max-foreign", type=float, default=0.05)
    parser.add_argument("--tries", type=int, default=4)
    parser.add_argument("--pause", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "serve_load")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from deployft.bench.machine import cpu_info

    tasks = ("classify", "generate") if args.task == "both" else (args.task,)
    results = {"command": shlex.join(["python", "benchmarks/serve_load.py", *sys.argv[1:]]),
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": f"{cpu_info()['model']}, {psutil.cpu_count()} cores", "settings": vars(args) | {
                   "work": str(args.work), "output": str(args.output), "classify_bundle": str(args.classify_bundle),
                   "generate_bundle": str(args.generate_bundle)}, "tasks": {}}
    for task in tasks:
        bundle = getattr(args, f"{task}_bundle")
        if bundle is None:
            sys.path.insert(0, str(HERE))
            import run_defaults

            bundle = run_defaults.prepare(task, args.work, reuse=True)[1]
        data = run_task(task, bundle, args)
        data["ratio"] = ratios(data, "requests_per_s" if task == "classify" else "tokens_per_s")
        if task == "classify" and args.model_rounds:
            from deployft.serve.config import ServeConfig

            data["model_alone"] = model_alone(bundle, ServeConfig.max_batch_size, args)
        results["tasks"][task] = data
        write(results, args.output)
    print(f"wrote {args.output}.json and .md")


if __name__ == "__main__":
    main()
