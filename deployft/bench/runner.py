"""`benchmark(config)`: time every variant of a BUNDLE against its RUN and write the report folder."""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..staging import atomic_folder, check_output_free
from ..tasks import get_task
from .config import BenchConfig
from .inputs import build_inputs, check_grid, read_pair, select_variants
from .quiet import RoundMeter, noisy_warning
from .machine import busy_warning, describe_machine, load_average
from .report import BenchReport, assemble, write_report
from .timing import interleave
from .worker import WorkerFailed, WorkerHandle

logger = logging.getLogger("deployft.bench")


def benchmark(config: BenchConfig) -> BenchReport:
    """Time the RUN's PyTorch variants and the BUNDLE's ONNX variants side by side, and report.

    Args:
        config: what to time and where to write the report (see `BenchConfig`).

    Returns:
        The report, also written to `config.report` as report.json, report.md, report.html and PNG plots.

    Raises:
        UsageError: a bad flag, a RUN and BUNDLE of different models, or an existing report folder.
        ModelError / BundleError: the RUN or BUNDLE folder cannot be read.
    """
    manifests = read_pair(config)
    task = manifests["run"]["task"]
    config.check_task(task)
    if config.static_shapes and get_task(task).generates:
        raise UsageError("--static-shapes fixes a classifier's (batch, length) inputs; a generator's KV cache grows "
                         "every step: drop --static-shapes")
    variants = select_variants(config, manifests["bundle"])
    check_grid(config, task)
    check_output_free(config.report, config.overwrite, "--report")
    _check_device(config.device)
    with tempfile.TemporaryDirectory(prefix="deployft-bench-") as scratch:
        raw = _measure(config, manifests, variants, Path(scratch))
    data = assemble(config, manifests, raw)
    with atomic_folder(config.report, overwrite=config.overwrite, flag="--report") as staging:
        write_report(data, staging, plots=config.plots)
    return BenchReport(Path(config.report).resolve(), data)


def _check_device(device: str) -> None:
    if device == "cuda":
        import torch

        from ..errors import DeviceError

        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was asked for but torch sees no CUDA device; "
                              "use --device cpu or install a CUDA build of torch and onnxruntime-gpu")


def _measure(config: BenchConfig, manifests: dict, variants: list[str], scratch: Path) -> dict[str, Any]:
    """Everything measured, raw: machine, peaks, loads, timings, accuracy, FLOPs."""
    raw: dict[str, Any] = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    raw["load_before"] = load_average()
    raw["inputs"] = build_inputs(config, manifests, scratch / "inputs.npz")
    raw["machine"] = describe_machine(config.device)
    if config.peak:
        from .peak import measure_peaks

        raw["peak"] = measure_peaks(config.threads, config.device)
    built = _build_peers(config, variants, scratch)
    started = time.perf_counter()
    raw["variants"], raw["timings"], raw["rounds"] = _run_workers(config, manifests, variants, scratch, built,
                                                                  raw["inputs"].get("eval_rows", 0))
    raw["wall_s"] = time.perf_counter() - started
    raw["load_after"] = load_average()
    raw["flops"], raw["flops_first_position"] = (_flops(config, manifests["run"]["task"], manifests["bundle"])
                                                 if config.peak else ({}, {}))
    raw["warnings"] = machine_warnings(raw["rounds"], raw["load_before"], raw["load_after"], config.threads,
                                       raw["machine"]["cores_usable"] or 1)
    return raw


def machine_warnings(rounds: dict[str, Any], load_before, load_after, threads: int, cores: int) -> list[str]:
    """The report's warnings about the machine: `quiet.noisy_warning` when a kept timing round was dirty or none
    was judged, the load-average guess where none was judged (no /proc/stat), and threads beyond the cores."""
    # the load average counts the benchmark's own threads; where every round was judged from /proc/stat the
    # round counts say more, so the load-average guess is only the fallback
    warnings = [] if rounds["judged"] else [busy_warning(load_before, load_after, threads, cores)]
    warnings.append(noisy_warning(rounds))
    if threads > cores:
        warnings.append(f"--threads {threads} is more than the {cores} usable cores; threads compete with each other")
    return [w for w in warnings if w]


def _build_peers(config: BenchConfig, variants: list[str], scratch: Path) -> dict[str, dict[str, Any]]:
    """Build the requested peer models before any timing (see `peers.py`); `{}` when none is requested."""
    from .peers import build_peers, is_peer

    names = [n for n in variants if is_peer(n)]
    if not names:
        return {}
    cache = config.peer_cache or scratch / "peers"
    cache.mkdir(parents=True, exist_ok=True)
    return build_peers(names, Path(config.run).resolve(), cache, config.threads)


def _run_workers(config: BenchConfig, manifests: dict, variants: list[str], scratch: Path,
                 built: dict[str, dict[str, Any]], eval_rows: int):
    """Start one worker per variant, time them interleaved, then collect accuracy (on `eval_rows` rows: the RUN's
    eval split, at most --eval-samples) and memory."""
    task = manifests["run"]["task"]
    status: dict[str, dict[str, Any]] = {}
    workers: dict[str, WorkerHandle] = {}
    try:
        for name in variants:
            peer = built.get(name)
            if peer and "error" in peer:
                status[name] = {"status": "failed", "error": peer["error"], "build": peer}
                continue
            spec = {"variant": name, "run": str(Path(config.run).resolve()), "task": task,
                    "bundle": str(Path(config.bundle).resolve()), "manifests": manifests, "peer": peer,
                    "device": config.device, "provider": config.provider, "threads": config.threads,
                    "static_shapes": config.static_shapes, "inputs": str(scratch / "inputs.npz")}
            safe = name.replace("/", "_")
            workers[name] = WorkerHandle(spec, scratch / f"{safe}.json", scratch / f"{safe}.log")
            status[name] = {**_start(workers[name]), **({"build": peer} if peer else {})}
            logger.info("%s: %s", name, f"loaded, first result after {status[name]['cold_start_s']:.2f} s"
                        if status[name]["status"] == "ok" else f"failed: {status[name]['error']}")
        live = [n for n in variants if status[n]["status"] == "ok"]
        timings, rounds = _time(config, task, workers, live, status)
        for name in [n for n in live if status[n]["status"] == "ok"]:
            logger.info("%s: scoring %d eval rows", name, eval_rows)
            _finish(config, workers[name], status[name])
    finally:
        for handle in workers.values():
            handle.close()
    return {name: status[name] for name in variants}, timings, rounds


def _start(handle: WorkerHandle) -> dict[str, Any]:
    try:
        return {"status": "ok", "error": None, **handle.call("load")}
    except WorkerFailed as exc:
        handle.close()
        return {"status": "failed", "error": str(exc)}


def _fail(status: dict, name: str, exc: Exception) -> None:
    logger.info("%s: failed: %s", name, exc)
    status[name].update(status="failed", error=str(exc))


def _time(config: BenchConfig, task: str, workers: dict, live: list[str], status: dict) -> dict[str, Any]:
    if not get_task(task).generates:
        cells = [(b, s) for b in config.batch_sizes for s in config.seq_lens]

        def step(name, cell):
            time.sleep(config.settle)
            return workers[name].call("classify", cell=f"cell_{cell[0]}x{cell[1]}", warmup=config.warmup,
                                      hot_calls=config.hot_calls)

        def elapsed(m):
            return m["seconds"] + sum(m["hot"])
    else:
        cells = [(p, n) for p in config.prompt_lens for n in config.new_tokens]

        def step(name, cell):
            time.sleep(config.settle)
            return workers[name].call("generate", cell=f"prompt_{cell[0]}", new_tokens=cell[1], warmup=config.warmup)

        def elapsed(m):
            return m["times"][-1]
    started = time.perf_counter()

    def progress(done: int) -> None:
        logger.info("round %d of %d done (%d cells x %d variants, %.0f s)", done, config.repeats, len(cells),
                    len(live), time.perf_counter() - started)

    meter = RoundMeter(own_pids=lambda: [w.process.pid for w in workers.values()])
    results = interleave(live, cells, step, repeats=config.repeats, min_time=config.min_time, elapsed=elapsed,
                         on_error=lambda name, exc: _fail(status, name, exc), on_round=progress, meter=meter)
    if meter.rejected:
        logger.info("%d round(s) rejected and repeated: other programs used the CPU during them", meter.rejected)
    timings = {name: [{"cell": list(cell), "samples": samples} for cell, samples in per_cell.items()]
               for name, per_cell in results.items()}
    return timings, meter.summary()


def _finish(config: BenchConfig, handle: WorkerHandle, status: dict[str, Any]) -> None:
    """Peak memory (after timing, before the accuracy pass), then the task metric."""
    try:
        status.update(handle.call("stats"))
        status["accuracy"] = handle.call("accuracy") if config.eval_samples else None
    except WorkerFailed as exc:
        logger.info("accuracy not measured: %s", exc)
        status["accuracy_error"] = str(exc)


def _flops(config: BenchConfig, task: str, bundle: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """FLOPs per inference for every cell, counted once on the PyTorch model (every variant does its math), and for
    a classifier whose fused files compute the last layer's first position alone, those files' own (`{cell:
    flops}`, None where the saving cannot be counted; empty for other bundles)."""
    import torch

    from .peak import classify_flops, decode_flops, first_position_saving

    torch.set_num_threads(config.threads)
    cls = get_task(task).model_class()
    # eager attention: torch's counter has no formula for the CPU kernel of scaled_dot_product_attention, so with
    # it the count would leave the attention's q.k and p.v out
    model = cls.from_pretrained(config.run, dtype=torch.float32, attn_implementation="eager").eval()
    if not get_task(task).generates:
        cells = {f"{b}x{s}": (b, s) for b in config.batch_sizes for s in config.seq_lens}
        flops = {cell: classify_flops(model, *shape) for cell, shape in cells.items()}
        if not (bundle.get("fusion") or {}).get("first_position"):
            return flops, {}
        saved = {cell: first_position_saving(model.config, *shape) for cell, shape in cells.items()}
        return flops, {cell: None if saved[cell] is None else flops[cell] - saved[cell] for cell in cells}
    return {f"{p}x{n}": decode_flops(model, p, n) for p in config.prompt_lens for n in config.new_tokens}, {}
