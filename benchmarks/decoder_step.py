"""One decode step and one prefill of a generator BUNDLE, file by file: what fusion, int8 and int4 buy.

Times a single KV-cache step (batch 1, one new token, `--past` cached tokens) and a prefill (batch 1, `--prompts`
tokens, empty cache: the time to first token's model call) through ONNX Runtime for

    model.onnx                Optimum's export
    model_optimized.onnx      ORTOptimizer + deployft's fused decoder attention (GroupQueryAttention), packed
                              q/k/v and gate/up projections, optional last-position LM head (`logits_to_keep`)
    model_quantized.onnx      the bundle's int8 (blockwise MatMulNBits of the fused graph), when it has one
    unpacked-fp32.onnx, unpacked-int8.onnx
                              model_optimized.onnx with its packed projections split back into one MatMul each,
                              and its blockwise int8: what packing buys (on bundles whose attention reads the
                              packed q/k/v, only gate/up are split back)
    *, every position's logits
                              the fused fp32 and int8 files fed `logits_to_keep` 0 (logits at every position, as
                              a file without the input computes them): what the last-position LM head buys
    dynamic-int8.onnx         per-tensor dynamic int8 of model.onnx, written here for comparison (what deployft
                              shipped for generators before blockwise int8)
    int4-b32.onnx, int4-b128.onnx
                              `--quantize int4` of model_optimized.onnx at block 32 and 128 (LM head at 8 bits),
                              written here with deployft's own quantizer
    int4-b32-head4.onnx, int4-b128-head4.onnx
                              the same with the LM head at 4 bits too, as onnxruntime-genai's int4 files have it
                              (`--head-bits 4`): how much of the int4 gap is the head
    rotary-in-attention-int8.onnx
                              model_quantized.onnx with each layer's packed q/k/v MatMul fed straight to
                              GroupQueryAttention (do_rotary, position_ids): no RotaryEmbedding or Split nodes, as
                              onnxruntime-genai builds it: for bundles exported before deployft's fused graph
                              became that layout (their files are marked `deployft.rotary`, and the runtime runs
                              a left-padded first step right-padded); left out where there is nothing to fold
    *-acc1.onnx               the int8 / int4 block-32 files with MatMulNBits accuracy level 1 (fp32 compute)
                              instead of 4 (int8 compute): the prefill question on CPUs without VNNI

    peer ort-genai-*          onnxruntime-genai's model builder files of the same RUN, from the bench's peer cache
                              (`--peers`, default BUNDLE/../peer-cache, as benchmarks/run_defaults.py leaves it):
                              the same step and prefill through the same ONNX Runtime calls, so the graphs compare
                              at the same block size (these files compute every prefill position's logits, as
                              onnxruntime-genai runs them)

with the node count of each file and the kernels that take the decode step's time (ONNX Runtime's profiler, one
extra pass). The decode step is timed twice: with a copying cache (`present` returned as a new array), and, for
files whose attention is GroupQueryAttention, in place (each layer's cache one buffer bound as past and present,
as deployft's runtime and onnxruntime-genai decode). Files are interleaved round by round at the same thread
count; medians are reported. Files that take `logits_to_keep` are fed 1 in the copying step and the prefill (IO
binding cannot bind that optional input, so the in-place step leaves it at its default, 0, as the runtime's in-place
decode steps do). A round counts only if other programs used at most `--max-foreign` of a core during it (/proc/stat busy time minus this process's); rejected rounds are repeated
and counted.

    python benchmarks/decoder_step.py outputs/bench-defaults/bundle-generate --threads 2
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _session(path: Path, threads: int, profile: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    if profile:
        options.enable_profiling, options.profile_file_prefix = True, profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


ALL_LOGITS = ", every position's logits"


def _feed(sess, past: int, new: int = 1, keep_last: bool = True, head_dim: int = 0) -> dict[str, np.ndarray]:
    """`new` tokens after `past` random cached ones (decode: new=1; prefill: past=0); `logits_to_keep` 1 where the
    file takes it and `keep_last`, else 0; `head_dim` where the file leaves the cache's last axis symbolic."""
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(3, 100, (1, new), dtype=np.int64),
            "attention_mask": np.ones((1, past + new), dtype=np.int64),
            "position_ids": np.arange(past, past + new, dtype=np.int64)[None]}
    for item in sess.get_inputs():
        if item.name.startswith("past_key_values."):
            width = item.shape[3] if isinstance(item.shape[3], int) else head_dim
            feed[item.name] = rng.standard_normal((1, item.shape[1], past, width)).astype(np.float32)
    feed = {k: v for k, v in feed.items() if k in {i.name for i in sess.get_inputs()}}
    if any(i.name == "logits_to_keep" for i in sess.get_overridable_initializers()):
        feed["logits_to_keep"] = np.array(1 if keep_last else 0, dtype=np.int64)
    return feed


def _unpacked(src: Path, dst: Path) -> Path | None:
    """`src` with every packed MatMul + Split (deployft's `pack_projections`) split back into one MatMul per
    output, or None when `src` has none."""
    import onnx
    from onnx import helper, numpy_helper

    from deployft.exporter.decoder_graph import PACKED_SPLIT

    model = onnx.load(str(src))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    nodes, found = [], False
    users = {i: n for n in graph.node for i in n.input}
    for node in graph.node:
        matmul = producers.get(node.input[0]) if node.name.endswith("/" + PACKED_SPLIT) else None
        if matmul is None:
            split = users.get(node.output[0]) if node.op_type == "MatMul" else None
            if split is None or not split.name.endswith("/" + PACKED_SPLIT):
                nodes.append(onnx.NodeProto())
                nodes[-1].CopyFrom(node)
            continue
        found = True
        packed = numpy_helper.to_array(weights[matmul.input[1]])
        sizes = numpy_helper.to_array(weights[node.input[1]]).tolist()
        folder, leaves = matmul.name.rsplit("/", 1)[0].rsplit("/", 1)
        names = [f"{folder}/{leaf}/MatMul" for leaf in leaves.split("+")]
        if len(names) != len(node.output):
            names = [f"{matmul.name}_part_{i}" for i in range(len(node.output))]
        for name, out, part in zip(names, node.output, np.split(packed, np.cumsum(sizes)[:-1], axis=1)):
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(part), f"{name}/weight"))
            nodes.append(helper.make_node("MatMul", [matmul.input[0], f"{name}/weight"], [out], name=name))
    if not found:
        return None
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in nodes for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(dst), save_as_external_data=True, location=dst.name + ".data")
    return dst


def _top_kernels(path: Path, threads: int, feed: dict, steps: int = 10) -> list[tuple[str, float, int]]:
    """(op type, ms per step, nodes per step) for the five op types that take the most kernel time."""
    with tempfile.TemporaryDirectory() as scratch:
        sess = _session(path, threads, profile=str(Path(scratch) / "profile"))
        for _ in range(steps):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    total, count = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            total[event["args"]["op_name"]] += event["dur"]
            count[event["args"]["op_name"]] += 1
    return [(op, us / steps / 1e3, count[op] // steps) for op, us in total.most_common(5)]


def _with_accuracy_level(src: Path, dst: Path, level: int) -> Path:
    """A copy of `src` whose MatMulNBits nodes compute at accuracy `level` (1: fp32, 4: int8 activations)."""
    import onnx

    model = onnx.load(str(src))
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "MatMulNBits" and attr.name == "accuracy_level":
                attr.i = level
    onnx.save(model, str(dst))
    return dst


def _rotary_in_attention(src: Path, dst: Path) -> Path | None:
    """`src` (blockwise int8) with every layer's RotaryEmbedding pair and packed q/k/v Split folded into its
    GroupQueryAttention (packed QKV input, do_rotary=1, the same cos/sin caches and position_ids), the packed
    MatMulNBits' output columns reordered to q, k, v; None when `src` has no such layers."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    dropped = set()
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        rot_q, rot_k = producers.get(node.input[0]), producers.get(node.input[1])
        if rot_q is None or rot_k is None or rot_q.op_type != "RotaryEmbedding" or rot_k.op_type != "RotaryEmbedding":
            return None
        q, k, v = rot_q.input[0], rot_k.input[0], node.input[2]
        split = producers.get(q)
        if split is None or split.op_type != "Split" or not (producers.get(k) is split is producers.get(v)):
            return None
        matmul = producers[split.input[0]]
        if matmul.op_type != "MatMulNBits":
            return None
        bounds = np.cumsum([0, *numpy_helper.to_array(weights[split.input[1]]).tolist()])
        rows = {out: slice(bounds[i], bounds[i + 1]) for i, out in enumerate(split.output)}
        packed, scales = (numpy_helper.to_array(weights[name]) for name in matmul.input[1:3])
        scales_2d = scales.reshape(packed.shape[0], -1)
        weights[matmul.input[1]].CopyFrom(numpy_helper.from_array(
            np.concatenate([packed[rows[t]] for t in (q, k, v)]), matmul.input[1]))
        weights[matmul.input[2]].CopyFrom(numpy_helper.from_array(
            np.concatenate([scales_2d[rows[t]] for t in (q, k, v)]).reshape(scales.shape), matmul.input[2]))
        inputs = [*node.input, *[""] * (11 - len(node.input))]
        inputs[0:3] = [matmul.output[0], "", ""]
        inputs[7:10] = [rot_q.input[2], rot_q.input[3], rot_q.input[1]]
        del node.input[:]
        node.input.extend(inputs)
        for attr in node.attribute:
            if attr.name == "do_rotary":
                attr.i = 1
        dropped |= {rot_q.name, rot_k.name, split.name}
    if not dropped:
        return None
    kept = [n for n in graph.node if n.name not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    onnx.save(model, str(dst))
    return dst


def _peer_files(folder: Path | None) -> dict[str, Path]:
    """`peer <variant>` -> model.onnx of every peer model the bench cached under `folder`."""
    if folder is None or not folder.is_dir():
        return {}
    found = {}
    for marker in sorted(folder.glob("*/deployft-peer.json")):
        if (marker.parent / "model.onnx").is_file():
            found[f"peer {json.loads(marker.read_text())['variant']}"] = marker.parent / "model.onnx"
    return found


def _head_dim(bundle: Path) -> int:
    config = json.loads((bundle / "config.json").read_text())
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _files(bundle: Path, scratch: Path) -> dict[str, Path]:
    from deployft.exporter.int4 import quantize_int4
    from deployft.exporter.quantize import cpu_preset, head_matmuls, quantize_blockwise_int8, quantize_dynamic_int8

    files = {name: bundle / name for name in ("model.onnx", "model_optimized.onnx", "model_quantized.onnx")
             if (bundle / name).exists()}
    files["dynamic-int8.onnx"] = scratch / "dynamic-int8.onnx"
    quantize_dynamic_int8(bundle / "model.onnx", files["dynamic-int8.onnx"], cpu_preset(), per_channel=False)
    fused = bundle / "model_optimized.onnx"
    unpacked = _unpacked(fused, scratch / "unpacked-fp32.onnx")
    if unpacked is not None:
        files["unpacked-fp32.onnx"] = unpacked
        files["unpacked-int8.onnx"] = scratch / "unpacked-int8.onnx"
        quantize_blockwise_int8(unpacked, files["unpacked-int8.onnx"], nodes_to_exclude=())
    for block in (32, 128):
        files[f"int4-b{block}.onnx"] = scratch / f"int4-b{block}.onnx"
        quantize_int4(fused, files[f"int4-b{block}.onnx"], block, head_matmuls(fused))
        files[f"int4-b{block}-head4.onnx"] = scratch / f"int4-b{block}-head4.onnx"
        quantize_int4(fused, files[f"int4-b{block}-head4.onnx"], block, ())
    if "model_quantized.onnx" in files:
        folded = _rotary_in_attention(files["model_quantized.onnx"], scratch / "rotary-in-attention-int8.onnx")
        if folded is not None:
            files["rotary-in-attention-int8.onnx"] = folded
    for name in ("model_quantized.onnx", "int4-b32.onnx"):
        if name in files:
            acc1 = name.replace(".onnx", "-acc1.onnx")
            files[acc1] = _with_accuracy_level(files[name], scratch / acc1, 1)
    return files


def _runs(sessions: dict, feeds: dict) -> dict:
    """One call per session: `sess.run` on its feed (a copying cache: `present` comes back as a new array)."""
    return {name: functools.partial(sess.run, None, feeds[name]) for name, sess in sessions.items()}


class _InPlaceStep:
    """A decode step of a GroupQueryAttention file the way deployft's runtime and onnxruntime-genai run it: each
    layer's cache is one buffer of `capacity` positions bound as both past and present (the op writes the new
    token's keys and values into it in place), the step's inputs and its logits bound once."""

    def __init__(self, sess, feed: dict, capacity: int):
        from onnxruntime import OrtValue

        self.sess, self.binding, self._held = sess, sess.io_binding(), []
        for name, value in feed.items():
            if name == "logits_to_keep":  # IO binding cannot bind an overridable initializer: its default, 0
                continue
            if name.startswith("past_key_values."):
                batch, heads, past, width = value.shape
                buffer = np.zeros((batch, heads, capacity, width), dtype=value.dtype)
                buffer[:, :, :past] = value
                shared = OrtValue.ortvalue_from_numpy(buffer)
                self.binding.bind_ortvalue_input(name, shared)
                self.binding.bind_ortvalue_output("present" + name[len("past_key_values"):], shared)
                self._held += [buffer, shared]
            else:
                array = np.ascontiguousarray(value)
                self.binding.bind_cpu_input(name, array)
                self._held.append(array)
        self.logits = np.zeros(sess.run(["logits"], feed)[0].shape, dtype=np.float32)
        self.binding.bind_ortvalue_output("logits", OrtValue.ortvalue_from_numpy(self.logits))

    def __call__(self) -> None:
        self.sess.run_with_iobinding(self.binding)


def _in_place(sessions: dict, feeds: dict, files: dict, past: int) -> dict:
    """An `_InPlaceStep` for every file whose attention is GroupQueryAttention, checked to give the logits of the
    copying step on the same cache."""
    import onnx

    steps = {}
    for name, sess in sessions.items():
        ops = {n.op_type for n in onnx.load(str(files[name]), load_external_data=False).graph.node}
        if "GroupQueryAttention" not in ops or name.endswith(ALL_LOGITS):
            continue
        step = _InPlaceStep(sess, feeds[name], capacity=past + 16)
        step()
        expected = sess.run(["logits"], feeds[name])[0]
        if not np.allclose(step.logits[:, -1], expected[:, -1], atol=1e-3):
            raise SystemExit(f"{name}: the in-place step's logits differ from the copying step's")
        steps[name] = step
    return steps


def _medians(calls: dict, rounds: int, steps: int, meter) -> dict[str, float]:
    """ms per call (p50) of every call, files interleaved round by round; a round the meter rejects (others busy)
    is thrown away and repeated."""
    from deployft.bench.quiet import kept_rounds

    times: dict[str, list[float]] = {name: [] for name in calls}

    def one_round(_kept: int) -> dict[str, list[float]]:
        this_round: dict[str, list[float]] = {name: [] for name in calls}
        for name, call in calls.items():
            for _ in range(2):
                call()
            for _ in range(steps):
                start = time.perf_counter()
                call()
                this_round[name].append(time.perf_counter() - start)
        return this_round

    for this_round in kept_rounds(meter, rounds, one_round):
        for name, values in this_round.items():
            times[name].extend(values)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--past", type=int, default=32, help="cached tokens before the timed step")
    parser.add_argument("--prompts", type=int, nargs="*", default=[64, 256], help="prefill lengths timed")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=15, help="timed decode steps per file per round")
    parser.add_argument("--prefill-steps", type=int, default=3, help="timed prefills per file, length and round")
    parser.add_argument("--max-foreign", type=float, default=0.05,
                        help="largest share of a core other programs may use during a kept round")
    parser.add_argument("--peers", type=Path, default=None,
                        help="folder of the bench's cached peer models (default: BUNDLE/../peer-cache)")
    parser.add_argument("--no-peers", action="store_true", help="time deployft's files only")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.peers is None and not args.no_peers:
        args.peers = args.bundle.parent / "peer-cache"

    import onnx

    from deployft.bench.quiet import RoundMeter

    meter = RoundMeter(max_share=args.max_foreign)

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.bundle.parent) as scratch:
        files = _files(args.bundle, Path(scratch))
        files.update(_peer_files(None if args.no_peers else args.peers))
        head_dim = _head_dim(args.bundle)
        sessions = {name: _session(path, args.threads) for name, path in files.items()}
        for name in ("model_optimized.onnx", "model_quantized.onnx"):
            if name in sessions and "logits_to_keep" in {i.name for i in sessions[name].get_overridable_initializers()}:
                files[name + ALL_LOGITS], sessions[name + ALL_LOGITS] = files[name], sessions[name]
        feeds = {name: _feed(sess, args.past, keep_last=not name.endswith(ALL_LOGITS), head_dim=head_dim)
                 for name, sess in sessions.items()}
        decode = _medians(_runs(sessions, feeds), args.rounds, args.steps, meter)
        in_place = _medians(_in_place(sessions, feeds, files, args.past), args.rounds, args.steps, meter)
        prefill = {n: _medians(_runs(sessions, {name: _feed(sess, 0, n, keep_last=not name.endswith(ALL_LOGITS),
                                                            head_dim=head_dim)
                                                for name, sess in sessions.items()}),
                               args.rounds, args.prefill_steps, meter) for n in args.prompts}
        rows = {name: {"ms_p50": decode[name], "in_place_ms_p50": in_place.get(name),
                       **{f"prefill_{n}_ms_p50": prefill[n][name] for n in args.prompts},
                       "nodes": len(onnx.load(str(path), load_external_data=False).graph.node),
                       "mb": sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6,
                       "top_kernels": _top_kernels(path, args.threads, feeds[name])}
                for name, path in files.items()}
    from deployft.bench.machine import cpu_info

    result = {"command": shlex.join(["python", "benchmarks/decoder_step.py", *sys.argv[1:]]),
              "bundle": str(args.bundle), "threads": args.threads, "past": args.past, "prompts": args.prompts,
              "rounds": args.rounds, "steps": args.steps, "prefill_steps": args.prefill_steps,
              "cpu": cpu_info()["model"] or platform.machine(), "cores": os.cpu_count(),
              "load_before": load_before, "load_after": os.getloadavg()[0], "rounds_judged": meter.summary(),
              "files": rows}
    text = _markdown(args, result)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "decoder_step.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "decoder_step.md").write_text(text)
    print(text)


def _markdown(args, result: dict) -> str:
    rows, fused = result["files"], result["files"]["model_optimized.onnx"]
    base = rows["model.onnx"]["ms_p50"]
    prefill_head = " | ".join(f"prefill {n} ms (p50) | vs fused fp32" for n in args.prompts)
    lines = ["# One decode step and one prefill per file (batch 1)", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['cpu']}, {result['cores']} cores", "",
             f"`{args.bundle}`, decode: one new token after {args.past} cached tokens; prefill: "
             f"{', '.join(map(str, args.prompts))} tokens, empty cache; {args.threads} threads, {args.rounds} rounds "
             f"x {args.steps} decode steps / {args.prefill_steps} prefills, interleaved; load average "
             f"{result['load_before']:.2f} before, {result['load_after']:.2f} after; rounds rejected because other "
             f"programs used over {args.max_foreign:.0%} of a core: {result['rounds_judged']['rounds_rejected']}, "
             f"kept anyway after repeated rejections: {result['rounds_judged']['rounds_dirty']}", "",
             f"| file | nodes | MB | decode ms per step (p50) | vs model.onnx | decode ms in place (p50) | "
             f"{prefill_head} | top decode kernels (ms per step, nodes) |",
             "| --- | --- | --- | --- | --- | --- | " + "--- | --- | " * len(args.prompts) + "--- |"]
    for name, row in rows.items():
        kernels = ", ".join(f"{op} {ms:.1f} ({n})" for op, ms, n in row["top_kernels"])
        prefill = " | ".join(f"{row[f'prefill_{n}_ms_p50']:.1f} | "
                             f"{fused[f'prefill_{n}_ms_p50'] / row[f'prefill_{n}_ms_p50']:.2f}x" for n in args.prompts)
        in_place = "-" if row.get("in_place_ms_p50") is None else f"{row['in_place_ms_p50']:.1f}"
        lines.append(f"| {name} | {row['nodes']} | {row['mb']:.0f} | {row['ms_p50']:.1f} | "
                     f"{base / row['ms_p50']:.2f}x | {in_place} | {prefill} | {kernels} |")
    if any(name.startswith("peer ") for name in rows):
        lines += ["", "`peer` rows are onnxruntime-genai's model-builder files of the same RUN (int8: 8-bit "
                  "MatMulNBits block 32; int4: 4-bit at the block in its name), timed through the same ONNX Runtime "
                  "calls as deployft's files: the graphs compare here, not the two runtimes' loops (bench_generate "
                  "compares those). Their prefill computes every position's logits, as onnxruntime-genai runs them."]
    lines += ["", "`decode ms per step` feeds the cache as an array and gets `present` back as a new one (a copy of "
              "the cache per step); `decode ms in place` binds each layer's cache as one buffer of past + 16 "
              "positions that GroupQueryAttention updates in place, and the logits to a buffer, as deployft's "
              "runtime and onnxruntime-genai decode (-: a file without GroupQueryAttention, or a row that differs from "
              "another only in `logits_to_keep`, which the in-place step does not feed). Each in-place step is "
              "checked to give the copying step's logits first."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
