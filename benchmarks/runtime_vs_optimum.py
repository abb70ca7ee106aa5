"""deployft.Predictor against Optimum's ORTModel classes on the same bundle file, same threads, same process.

    generation:      decode tokens/s and time to first token of Predictor.iter_token_ids (greedy) against
                     ORTModelForCausalLM.generate (greedy, timed with a streamer), on the same .onnx; both run
                     exactly --new-tokens tokens (end tokens do not stop either loop; unequal counts abort)
                     and the greedy tokens of both are compared
    classification:  texts/s of Predictor.predict against tokenizer + ORTModelForSequenceClassification, both
                     given the same texts in the same order (sorted by length, so both pad alike), with the
                     share of identical top-1 labels

Runs alternate between the two (A B A B ...) so machine noise hits both alike; medians are reported. A round
counts only if other programs left the CPU alone during it (deployft.bench.quiet.RoundMeter); rejected rounds
are repeated and counted in the result.

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

from deployft.bench.quiet import RoundMeter, kept_rounds

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


def _ours_generate(predictor, ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    start, stamps, tokens = time.perf_counter(), [], []
    for token in predictor.iter_token_ids(ids, max_new_tokens=new_tokens, ignore_eos=True):
        stamps.append(time.perf_counter())
        tokens.append(int(token))
    return stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0]), tokens


def _optimum_generate(model, ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    import copy

    import torch

    config = copy.deepcopy(model.generation_config)
    # an end id past the vocabulary is never generated: the loop runs to max_new_tokens and, unlike
    # min_new_tokens, leaves the real end token's logit alone, as iter_token_ids(ignore_eos=True) does
    config.update(max_new_tokens=new_tokens, min_new_tokens=None, do_sample=False,
                  eos_token_id=[model.config.vocab_size], pad_token_id=model.generation_config.pad_token_id or 0)
    clock = _Clock()
    tensor = torch.tensor([ids])
    start = time.perf_counter()
    out = model.generate(tensor, attention_mask=torch.ones_like(tensor), generation_config=config, streamer=clock)
    stamps = clock.stamps[1:]  # the first put() is the prompt
    return stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0]), out[0, len(ids):].tolist()


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

    def run_round():
        pairs = [(_ours_generate(predictor, ids, new_tokens), _optimum_generate(model, ids, new_tokens))
                 for ids in prompts]
        for ours, theirs in pairs:
            if len(ours[2]) != new_tokens or len(theirs[2]) != new_tokens:
                raise SystemExit(f"unequal runs: deployft made {len(ours[2])} tokens, optimum {len(theirs[2])}, "
                                 f"{new_tokens} asked")
        return lambda: [(runs["deployft"].append(a), runs["optimum"].append(b)) for a, b in pairs]

    meter = RoundMeter()
    for record in kept_rounds(meter, rounds, lambda _kept: run_round()):
        record()
    agree = [sum(x == y for x, y in zip(a[2], b[2])) for a, b in zip(runs["deployft"], runs["optimum"])]
    summary = {name: {"ttft_ms_p50": 1000 * statistics.median(r[0] for r in rs),
                      "decode_tokens_per_s_p50": statistics.median(r[1] for r in rs)} for name, rs in runs.items()}
    speedup = summary["deployft"]["decode_tokens_per_s_p50"] / summary["optimum"]["decode_tokens_per_s_p50"]
    return {"bundle": str(bundle), "model_file": predictor.model_file, "new_tokens": new_tokens,
            "tokens_per_run": new_tokens, "runs_each": len(runs["deployft"]),
            "greedy_token_agreement": sum(agree) / (new_tokens * len(agree)), **summary,
            "decode_speedup": speedup, "rounds": meter.summary()}


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
    # the same batches on both sides: sorted by token length once (Predictor would sort them itself)
    texts = sorted(_texts(count), key=lambda t: len(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]))

    def optimum_predict() -> list[int]:
        labels = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            labels += torch.softmax(model(**batch).logits, dim=-1).argmax(-1).tolist()
        return labels

    def ours_predict() -> list[int]:
        return [predictor.labels.index(p.label) for p in predictor.predict(texts, batch_size=batch_size)]

    timings = {"deployft": [], "optimum": []}
    same = [a == b for a, b in zip(ours_predict(), optimum_predict())]  # also the warm-up

    def run_round():
        measured = {}
        for name, call in (("deployft", ours_predict), ("optimum", optimum_predict)):
            start = time.perf_counter()
            call()
            measured[name] = len(texts) / (time.perf_counter() - start)
        return lambda: [timings[name].append(value) for name, value in measured.items()]

    meter = RoundMeter()
    for record in kept_rounds(meter, rounds, lambda _kept: run_round()):
        record()
    summary = {name: {"texts_per_s_p50": statistics.median(t)} for name, t in timings.items()}
    return {"bundle": str(bundle), "model_file": predictor.model_file, "texts": count, "batch_size": batch_size,
            "same_order": True, "top1_agreement": sum(same) / len(same), "rounds": meter.summary(), **summary,
            "throughput_ratio": summary["deployft"]["texts_per_s_p50"] / summary["optimum"]["texts_per_s_p50"]}


def _rounds_text(rounds: dict) -> str:
    return (f"{rounds['rounds_kept']} clean rounds kept, {rounds['rounds_rejected']} rejected (other programs above "
            f"{rounds['max_other_share']:.0%} of a core), {rounds['rounds_dirty']} kept under load")


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
        lines += ["", f"Decode speed-up: **{gen['decode_speedup']:.2f}x**; greedy tokens identical at "
                  f"{gen['greedy_token_agreement']:.1%} of positions; {_rounds_text(gen['rounds'])}", ""]
    if clf := result.get("classification"):
        lines += ["## Classification", "", f"`{clf['model_file']}` of {clf['bundle']}, {clf['texts']} texts, "
                  f"batch {clf['batch_size']}", "", "| predictor | texts/s p50 |", "| --- | --- |"]
        for name in ("deployft", "optimum"):
            lines.append(f"| {name} | {clf[name]['texts_per_s_p50']:.1f} |")
        lines += ["", f"Throughput ratio: **{clf['throughput_ratio']:.2f}x**; same top-1 label on "
                  f"{clf['top1_agreement']:.1%} of texts; {_rounds_text(clf['rounds'])}", ""]
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
