"""Every classifier int8 recipe against dynamic int8 of the plain export, timed whatever the guard said, with its
agreement measured beside its speed.

Export times only the candidates within the accuracy guard, so when `plain` (dynamic int8 of model.onnx, the
deployable file before measured selection) fails the guard, its bundle cannot say how much faster the kept file
is than it. This script rebuilds every dynamic recipe of `deployft.exporter.select.RECIPES` from a bundle's own
model.onnx / model_optimized.onnx with export's functions and the bundle's preset (static QDQ needs the RUN's
calibration rows and is left out), and times them beside the bundle's deployable `model_quantized.onnx` and its
fused fp32 file, at one text of 32 and 128 tokens and 16 texts of 128, with the same threads, in interleaved rounds.
Every file runs in deployft's own CPU session (`create_session`), which keeps residual Add and LayerNormalization
apart; the baseline, `plain (ORT default fusions)`, is the plain recipe's file with every load-time fusion of ONNX
Runtime on, SkipLayerNormalization included: how deployft's sessions ran the deployable file before measured
selection and before they kept that pair apart. Every row, the baseline too, runs with the same threads and no
spin-waiting. A round is kept only when other programs used at most
--max-foreign of a core during it (`deployft.bench.quiet.RoundMeter`: busy time from /proc/stat minus this
process's CPU time); rejected rounds are repeated and counted, and after 5 in a row one is kept and counted dirty.
The guard's flips for each recipe come from the bundle's manifest where export built it.

Two more kinds of row show what export's graph choices are worth: `...; BiasGelu fused` is the fused recipe on the
bundle's fused graph with the feed-forward bias Add and Gelu fused back into BiasGelu (how export wrote the graph
before it kept them apart), and `...; activations smoothed` is the per-channel recipe after activation smoothing
(`deployft.exporter.smooth`, export's third remedy rung) calibrated on the RUN's first 100 training rows in padded
batches of 16, as export does; `...; activations smoothed + head and embeddings in fp32` is the fused one of those
with its head and embedding tables left in fp32 (export's fourth rung), and `...; activations smoothed + first
layer in fp32` the fused smoothed one with its first layer left in fp32 instead (export's fifth). Every row's
agreement is measured here too: top-1 predictions against the bundle's fp32 `model.onnx` (which matches PyTorch;
see the bundle's validation) on the RUN's eval rows
in export's validation batches, with the mean |Δ logit|.

    python benchmarks/int8_recipes.py --bundle outputs/demo/bundle      # the recorded result (after `make demo`)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHAPES = ((1, 32), (1, 128), (16, 32), (16, 128))
"""The shapes the issue's classifier targets name."""
BASELINE = "plain (ORT default fusions)"
"""The row every ratio is against (see the module's docstring)."""


def recipes() -> dict[str, tuple[str, bool]]:
    """Recipe -> (the graph it quantizes, per-channel weights), for export's dynamic int8 recipes."""
    from deployft.exporter.select import RECIPES

    return {r.name: ("model.onnx" if r.base == "plain" else "model_optimized.onnx", r.per_channel)
            for r in RECIPES if not r.static}


FUSED = "fused-qattention-per-channel"
SMOOTHED = ("plain-per-channel", FUSED)
HEAD = "activations smoothed + head and embeddings in fp32"
"""The fused recipe at export's fourth rung: smoothed, its head and embedding tables left in fp32."""
FIRST_LAYER = "activations smoothed + first layer in fp32"
"""The fused recipe at export's fifth rung: smoothed, its first layer's MatMuls and attention left in fp32."""
VALIDATION_ROWS = 2000
"""A classifier's validation rows (the task's default)."""


def build(bundle: Path, work: Path, run: Path) -> dict[str, Path]:
    """Every recipe's file, with the preset export used for the bundle (this CPU's when it recorded none), the fused
    recipe on a BiasGelu graph, and the per-channel recipes smoothed."""
    from deployft.exporter.quantize import cpu_preset, quantize_dynamic_int8, sensitive_nodes
    from deployft.exporter.select import SMOOTHING_BATCH
    from deployft.exporter.smooth import smooth_activations

    preset = (json.loads((bundle / "deployft.json").read_text()).get("quantization") or {}).get("preset") \
        or cpu_preset()
    files = {}
    for name, (source, per_channel) in recipes().items():
        files[name] = work / f"{name}.onnx"
        quantize_dynamic_int8(bundle / source, files[name], preset, per_channel)
    bias_gelu = work / "bias-gelu-fp32.onnx"
    if fuse_bias_gelu(bundle / "model_optimized.onnx", bias_gelu):
        files[f"{FUSED}; BiasGelu fused"] = work / "bias-gelu.onnx"
        quantize_dynamic_int8(bias_gelu, files[f"{FUSED}; BiasGelu fused"], preset, True)
    rows = calibration(run, bundle)
    for name in SMOOTHED:
        source = bundle / recipes()[name][0]
        smoothed = work / f"{name}-smoothed-fp32.onnx"
        smooth_activations(source, smoothed, padded(rows, bundle, source, SMOOTHING_BATCH))
        files[f"{name}; activations smoothed"] = work / f"{name}-smoothed.onnx"
        quantize_dynamic_int8(smoothed, files[f"{name}; activations smoothed"], preset, True)
        if name == FUSED:
            layers = json.loads((bundle / "config.json").read_text())["num_hidden_layers"]
            files[f"{name}; {HEAD}"] = work / f"{name}-smoothed-head.onnx"
            quantize_dynamic_int8(smoothed, files[f"{name}; {HEAD}"], preset, True,
                                  sensitive_nodes(smoothed, layers, ("head",)))
            files[f"{name}; {FIRST_LAYER}"] = work / f"{name}-smoothed-first.onnx"
            quantize_dynamic_int8(smoothed, files[f"{name}; {FIRST_LAYER}"], preset, True,
                                  sensitive_nodes(smoothed, layers, ("first",)))
    return files


def fuse_bias_gelu(src: Path, dst: Path) -> int:
    """Write `src` with every Gelu that reads `x + bias` (a 1-D initializer) as one BiasGelu; returns how many."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    fused, drop = 0, set()
    for i, node in enumerate(graph.node):
        add = producer.get(node.input[0]) if node.op_type == "Gelu" else None
        if add is None or add.op_type != "Add" or readers[add.output[0]] != 1:
            continue
        bias = next((n for n in add.input if n in initializers and len(initializers[n].dims) == 1), None)
        if bias is None:
            continue
        x = next(n for n in add.input if n != bias)
        graph.node[i].CopyFrom(helper.make_node("BiasGelu", [x, bias], list(node.output),
                                                name=f"{node.output[0]}/BiasGelu", domain="com.microsoft"))
        drop.add(add.output[0])
        fused += 1
    kept = [n for n in graph.node if not (n.op_type == "Add" and n.output[0] in drop)]
    del graph.node[:]
    graph.node.extend(kept)
    onnx.save(model, str(dst))
    return fused


def calibration(run: Path, bundle: Path):
    """The RUN's first training rows, as many as export calibrates on by default, encoded as export encodes them."""
    from transformers import AutoTokenizer

    from deployft.exporter.samples import calibration_samples
    from deployft.exporter.source import read_source

    from deployft.exporter.config import ExportConfig

    rows = ExportConfig.calibration_samples  # export's --calibration-samples default
    return calibration_samples(read_source(run), AutoTokenizer.from_pretrained(bundle), rows)


def padded(samples, bundle: Path, model: Path, size: int) -> list[dict]:
    """`samples` in right-padded batches of `size`, as feeds of `model` (export's `padded_feeds`)."""
    from transformers import AutoTokenizer

    from deployft.exporter.samples import padded_feeds
    from deployft.runtime.session import SessionOptions, create_session

    session, _ = create_session(model, SessionOptions())
    pad_id = AutoTokenizer.from_pretrained(bundle).pad_token_id or 0
    return padded_feeds(samples, pad_id, {i.name: i for i in session.get_inputs()}, size)


def agreement(files: dict[str, Path], run: Path, bundle: Path) -> dict[str, dict]:
    """Top-1 agreement and mean |Δ logit| of every file against the bundle's fp32 model.onnx on the RUN's eval
    rows, in export's validation batches (`validate.BATCH` rows, right-padded, in order)."""
    from deployft.exporter.validate import BATCH
    from transformers import AutoTokenizer

    from deployft.exporter.samples import validation_samples
    from deployft.exporter.source import read_source
    from deployft.runtime.session import SessionOptions, create_session

    samples = validation_samples(read_source(run), AutoTokenizer.from_pretrained(bundle), VALIDATION_ROWS)

    feeds = padded(samples, bundle, bundle / "model.onnx", BATCH)

    def logits(path: Path) -> np.ndarray:
        session, _ = create_session(path, SessionOptions())
        return np.concatenate([session.run(None, feed)[0] for feed in feeds])

    reference = logits(bundle / "model.onnx")
    out = {}
    for name, path in files.items():
        ours = logits(path)
        flips = int((ours.argmax(1) != reference.argmax(1)).sum())
        out[name] = {"rows": len(reference), "flips": flips, "agreement": round(1 - flips / len(reference), 4),
                     "mean_abs_logit_diff": round(float(np.abs(ours - reference).mean()), 4)}
    return out


def _ort_default_session(path: Path, threads: int):
    """`path` in a CPU session with every load-time fusion of ONNX Runtime on, threads and spinning as the rest."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def time_all(files: dict[str, Path], threads: int, rounds: int, max_foreign: float,
             vocab_size: int) -> tuple[dict, dict]:
    """Median ms per file and shape over `rounds` kept rounds, each judged by `RoundMeter` (a round where others
    took more than `max_foreign` of a core is repeated; after 5 in a row one is kept as dirty); returns
    `(medians, the meter's summary)`. `files[BASELINE]` runs with ONNX Runtime's default fusions, the rest in
    deployft's session."""
    from deployft.bench.quiet import RoundMeter, kept_rounds
    from deployft.runtime.session import SessionOptions, create_session

    sessions = {k: _ort_default_session(p, threads) if k == BASELINE
                else create_session(p, SessionOptions(threads=threads, spinning=False))[0] for k, p in files.items()}
    rng = np.random.default_rng(0)
    feeds = {}
    for batch, length in SHAPES:
        ids = rng.integers(1, vocab_size, size=(batch, length), dtype=np.int64)
        feeds[(batch, length)] = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                  "token_type_ids": np.zeros_like(ids)}
    names = {k: [i.name for i in s.get_inputs()] for k, s in sessions.items()}
    for key, session in sessions.items():
        for feed in feeds.values():
            for _ in range(2):
                session.run(None, {n: feed[n] for n in names[key]})
    samples = {k: {s: [] for s in SHAPES} for k in sessions}
    keys, meter = list(sessions), RoundMeter(max_share=max_foreign)

    def one_round(kept: int) -> dict:
        order = keys[kept % len(keys):] + keys[:kept % len(keys)]
        row = {k: {} for k in keys}
        for shape, feed in feeds.items():
            for key in order:
                began = time.perf_counter()
                sessions[key].run(None, {n: feed[n] for n in names[key]})
                row[key][shape] = 1000 * (time.perf_counter() - began)
        return row

    for row in kept_rounds(meter, rounds, one_round):
        for key in keys:
            for shape in SHAPES:
                samples[key][shape].append(row[key][shape])
    medians = {k: {f"b{b}x{n}": round(statistics.median(v), 2) for (b, n), v in per.items()}
               for k, per in samples.items()}
    return medians, meter.summary()


def guard_flips(bundle: Path) -> dict[str, str]:
    """Export's guard record per candidate name (first rung: the recipes as they are), and the kept file's."""
    manifest = json.loads((bundle / "deployft.json").read_text())
    out = {}
    for c in (manifest.get("quantization") or {}).get("candidates") or []:
        g = c.get("guard") or {}
        record = f"{g.get('flips')} of {g.get('rows')} ({'pass' if c['passed'] else 'FAIL'})"
        if c["remedy"] == "none":
            out[c["name"]] = record
        if c.get("kept"):
            out["model_quantized.onnx"] = record if c["remedy"] == "none" else f"{record}, {c['name']}"
    return out


def kept_name(manifest: dict) -> str | None:
    """The candidate export kept, as its table names it (the recipe, and the remedy past the first rung)."""
    q = manifest.get("quantization") or {}
    return (q.get("selection") or {}).get("kept") or q.get("recipe")


def write(result: dict, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    labels = [f"b{b}x{n}" for b, n in SHAPES]
    lines = ["# Classifier int8 recipes against dynamic int8 of the plain export", "",
             f"Command: `{result['command']}`  ",
             f"Date: {result['created']}  ", f"Machine: {result['machine']}; {result['threads']} threads, "
             f"no spinning; {result['quiet']['rounds_kept']} interleaved rounds kept ({result['quiet']['rounds_dirty']} of "
             f"them dirty), {result['quiet']['rounds_rejected']} rejected (others used more than "
             f"{result['max_foreign']:.0%} of a core)  ",
             f"Kept by export: `{result['kept']}` (its `model_quantized.onnx`)", "",
             f"Ratios are against `{BASELINE}`: the plain recipe's file with ONNX Runtime's default load-time "
             "fusions, which fuse residual Add + LayerNormalization into SkipLayerNormalization. Every other row "
             "runs in deployft's CPU session, which keeps them apart.", "",
             f"Agreement: top-1 predictions of each file against the bundle's fp32 model.onnx on the RUN's "
             f"{result['agreement_rows']} eval rows (export's validation batches), measured here; "
             "guard: export's own record for that candidate (against PyTorch), where it built it.", "",
             "| file | guard (export's) | agreement (flips) | mean abs Δlogit | "
             + " | ".join(f"{s} ms" for s in labels) + " | " + " | ".join(f"vs baseline {s}" for s in labels) + " |",
             "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in labels * 2) + " |"]
    plain = result["medians"][BASELINE]
    for name, ms in result["medians"].items():
        guard = result["guard"].get(name.split(" (")[0], "-")
        agree = result["agreement"][name]
        lines.append(f"| {name} | {guard} | {agree['agreement']:.4f} ({agree['flips']}) | "
                     f"{agree['mean_abs_logit_diff']:.4f} | " + " | ".join(f"{ms[s]:.2f}" for s in labels)
                     + " | " + " | ".join(f"{plain[s] / ms[s]:.2f}x" for s in labels) + " |")
    deployable = result["medians"]["model_quantized.onnx"]
    if "plain" in result["medians"]:
        same = result["medians"]["plain"]
        lines += ["", "The deployable file against `plain` in the same deployft session (the graph's share alone): "
                  + ", ".join(f"{s} {same[s] / deployable[s]:.2f}x" for s in ("b1x128", "b16x128"))]
    for name in [n for n in result["medians"] if n.endswith(("; BiasGelu fused", "; activations smoothed", f"; {HEAD}",
                                                               f"; {FIRST_LAYER}"))]:
        base, change = name.split("; ")
        other, ms = result["medians"][name], result["medians"][base]
        lines.append(f"- `{name}` takes " + ", ".join(f"{s} {other[s] / ms[s]:.2f}x" for s in labels)
                     + f" the time of `{base}`; flips {result['agreement'][name]['flips']} against "
                     f"{result['agreement'][base]['flips']}")
    agree = result["agreement"]["model_quantized.onnx"]["agreement"]
    lines += ["", f"Target (issue 11): the deployable file >= 1.3x faster than `{BASELINE}` at b1x128 and b16x128: "
              + ", ".join(f"{s} {plain[s] / deployable[s]:.2f}x" for s in ("b1x128", "b16x128"))
              + (" — met" if all(plain[s] / deployable[s] >= 1.3 for s in ("b1x128", "b16x128")) else " — not met")
              + f"; top-1 agreement >= 0.99: {agree:.4f}" + (" — met" if agree >= 0.99 else " — not met"), ""]
    out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("outputs/demo/bundle"))
    parser.add_argument("--run", type=Path, default=None,
                        help="the RUN the bundle was exported from (default: the one its manifest names)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--max-foreign", type=float, default=0.05)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "int8_recipes")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from deployft.bench.machine import cpu_info

    manifest_path = args.bundle / "deployft.json"
    if not manifest_path.is_file() or json.loads(manifest_path.read_text()).get("task") != "classify":
        raise SystemExit(f"Error: --bundle {args.bundle} is not a classifier bundle (its deployft.json is missing or "
                         "names another task); pass a folder `deployft export` wrote for a classifier")
    manifest = json.loads(manifest_path.read_text())
    run = args.run or Path(manifest["source_run"]["path"])
    if not (run / "deployft.json").is_file():
        raise SystemExit(f"Error: --run {run} is not a RUN folder (no deployft.json); pass the folder `deployft "
                         "finetune` wrote for this bundle")
    with tempfile.TemporaryDirectory() as work:
        files = build(args.bundle, Path(work), run)
        files |= {BASELINE: files["plain"], "model_quantized.onnx": args.bundle / "model_quantized.onnx",
                  "model_optimized.onnx (fp32)": args.bundle / "model_optimized.onnx"}
        agreements = agreement(files, run, args.bundle)
        vocab = json.loads((args.bundle / "config.json").read_text())["vocab_size"]
        medians, quiet = time_all(files, args.threads, args.rounds, args.max_foreign, vocab)
    info = cpu_info()
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "bundle": str(args.bundle),
              "command": " ".join(["python", "benchmarks/int8_recipes.py", *sys.argv[1:]]),
              "machine": f"{info['model']}, {os.cpu_count()} cores, {', '.join(info.get('flags') or [])}",
              "threads": args.threads, "rounds": args.rounds, "quiet": quiet,
              "max_foreign": args.max_foreign,
              "kept": kept_name(manifest), "guard": guard_flips(args.bundle),
              "medians": medians, "agreement": agreements,
              "agreement_rows": next(iter(agreements.values()))["rows"]}
    write(result, args.output)
    print(args.output.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
