"""deployft.Predictor against Optimum's ORTModel classes on the same bundle file, same threads, same process.

    generation:      decode tokens/s and time to first token of Predictor.iter_token_ids (greedy) against
                     ORTModelForCausalLM.generate (greedy, timed with a streamer), on the same int8 .onnx
    classification:  texts/s of Predictor.predict against tokenizer + ORTModelForSequenceClassification

Runs alternate between the two (A B A B ...) so machine noise hits both alike; medians are reported.

    python benchmarks/runtime_vs_optimum.py --generate-bundle B1 --classify-bundle B2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

PROMPTS = ["What is the capital of France?", "Tell me a short story about a cat.", "How do bees make honey?",
           "Give me three tips for learning to cook.", "Why is the sky blue?", "What is a good name for a dog?"]


def _session_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return options


class _Clock:
    """A transformers streamer that records when the prompt and each new token arrive."""

    def __init__(self):
        self.stamps: list[float] = []

    def put(self, value):
        self.stamps.append(time.perf_counter())

    def end(self):
        pass


def _ours_generate(predictor, ids: list[int], new_tokens: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in predictor.iter_token_ids(ids, max_new_tokens=new_tokens)]
    return stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)


def _optimum_generate(model, ids: list[int], new_tokens: int) -> tuple[float, float, int]:
    import torch

    clock = _Clock()
    tensor = torch.tensor([ids])
    start = time.perf_counter()
    model.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=new_tokens, do_sample=False,
                   streamer=clock)
    stamps = clock.stamps[1:]  # the first put() is the prompt
    return stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)


def bench_generation(bundle: Path, threads: int, new_tokens: int, rounds: int) -> dict:
    from optimum.onnxruntime import ORTModelForCausalLM

    from deployft.runtime import Predictor

    predictor = Predictor.load(bundle, threads=threads)
    model = ORTModelForCausalLM.from_pretrained(bundle, file_name=predictor.model_file, use_cache=True,
                                                session_options=_session_options(threads),
                                                provider="CPUExecutionProvider")
    chat = predictor.chat_template is not None  # an instruct model: prompt it the way it was trained
    prompts = [predictor.prompt_ids([{"role": "user", "content": p}] if chat else p) for p in PROMPTS]
    runs = {"deployft": [], "optimum": []}
    for ids in prompts[:2]:  # warm-up
        _ours_generate(predictor, ids, 4), _optimum_generate(model, ids, 4)
    for _ in range(rounds):
        for ids in prompts:
            runs["deployft"].append(_ours_generate(predictor, ids, new_tokens))
            runs["optimum"].append(_optimum_generate(model, ids, new_tokens))
    same = all(a[2] == b[2] for a, b in zip(runs["deployft"], runs["optimum"]))
    summary = {name: {"ttft_ms_p50": 1000 * statistics.median(r[0] for r in rs),
                      "decode_tokens_per_s_p50": statistics.median(r[1] for r in rs),
                      "tokens_per_run": statistics.median(r[2] for r in rs)} for name, rs in runs.items()}
    speedup = summary["deployft"]["decode_tokens_per_s_p50"] / summary["optimum"]["decode_tokens_per_s_p50"]
    return {"bundle": str(bundle), "model_file": predictor.model_file, "new_tokens": new_tokens,
            "runs_each": len(runs["deployft"]), "same_token_counts": same, **summary,
            "decode_speedup": speedup}


def _texts(count: int) -> list[str]:
    words = ["a warm and funny film", "the plot was dull", "an uneven but moving story about family",
             "the cast is superb and the ending lands", "tedious, overlong and badly edited"]
    return [" ".join(words[(i + j) % len(words)] for j in range(1 + i % 4)) for i in range(count)]


def bench_classification(bundle: Path, threads: int, count: int, batch_size: int, rounds: int) -> dict:
    import torch
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    from deployft.runtime import Predictor

    predictor = Predictor.load(bundle, threads=threads)
    model = ORTModelForSequenceClassification.from_pretrained(bundle, file_name=predictor.model_file,
                                                              session_options=_session_options(threads),
                                                              provider="CPUExecutionProvider")
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    max_length = predictor.manifest.get("max_length") or 128
    texts = _texts(count)

    def optimum_predict():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            torch.softmax(model(**batch).logits, dim=-1)

    timings = {"deployft": [], "optimum": []}
    predictor.predict(texts[:batch_size]), optimum_predict()  # warm-up
    for _ in range(rounds):
        for name, call in (("deployft", lambda: predictor.predict(texts, batch_size=batch_size)),
                           ("optimum", optimum_predict)):
            start = time.perf_counter()
            call()
            timings[name].append(len(texts) / (time.perf_counter() - start))
    summary = {name: {"texts_per_s_p50": statistics.median(t)} for name, t in timings.items()}
    return {"bundle": str(bundle), "model_file": predictor.model_file, "texts": count, "batch_size": batch_size,
            "rounds": rounds, **summary,
            "throughput_ratio": summary["deployft"]["texts_per_s_p50"] / summary["optimum"]["texts_per_s_p50"]}


def _markdown(result: dict) -> str:
    lines = ["# deployft.Predictor vs Optimum ORTModel (same .onnx, same threads)", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, threads {result['threads']}, "
             f"load average before/after {result['machine']['load_before']} / {result['machine']['load_after']}", ""]
    if gen := result.get("generation"):
        lines += ["## Generation (greedy, KV cache)", "", f"`{gen['model_file']}` of {gen['bundle']}, "
                  f"{gen['new_tokens']} new tokens, {gen['runs_each']} runs each", "",
                  "| loop | time to first token p50 (ms) | decode tokens/s p50 |", "| --- | --- | --- |"]
        for name in ("deployft", "optimum"):
            lines.append(f"| {name} | {gen[name]['ttft_ms_p50']:.1f} | {gen[name]['decode_tokens_per_s_p50']:.1f} |")
        lines += ["", f"Decode speed-up: **{gen['decode_speedup']:.2f}x**", ""]
    if clf := result.get("classification"):
        lines += ["## Classification", "", f"`{clf['model_file']}` of {clf['bundle']}, {clf['texts']} texts, "
                  f"batch {clf['batch_size']}", "", "| predictor | texts/s p50 |", "| --- | --- |"]
        for name in ("deployft", "optimum"):
            lines.append(f"| {name} | {clf[name]['texts_per_s_p50']:.1f} |")
        lines += ["", f"Throughput ratio: **{clf['throughput_ratio']:.2f}x**", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generate-bundle", type=Path)
    parser.add_argument("--classify-bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "machine": {"cpu": platform.processor() or platform.machine(),
                                                   "cores": os.cpu_count(), "load_before": os.getloadavg()[0]}}
    if args.generate_bundle:
        result["generation"] = bench_generation(args.generate_bundle, args.threads, args.new_tokens, args.rounds)
    if args.classify_bundle:
        result["classification"] = bench_classification(args.classify_bundle, args.threads, args.texts,
                                                        args.batch_size, args.rounds * 3)
    result["machine"]["load_after"] = os.getloadavg()[0]
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "runtime_vs_optimum.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "runtime_vs_optimum.md").write_text(_markdown(result) + "\n")
    print(_markdown(result))


if __name__ == "__main__":
    main()
