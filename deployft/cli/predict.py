"""`deployft predict`: classify texts or complete prompts with a BUNDLE (ONNX Runtime, no torch)."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from ..runtime.ray_predict import FORMATS, RayPredictConfig
from ..tasks import get_task
from .options import shown

GENERATION_FLAGS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop")
"""Parameters only a generator uses."""
SAMPLING_FLAGS = ("top_k", "top_p", "seed")
"""Parameters only sampling uses (--temperature above 0); greedy decoding would ignore them."""
FILE_FLAGS = ("output_path", "column", "progress")
"""Parameters only --input uses."""


@click.command("predict")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("texts", nargs=-1)
@click.option("--input", "input_path", type=click.Path(dir_okay=False),
              help="A .jsonl or .csv file to predict row by row (column text, or prompt for generators); "
                   "with --ray also .parquet.")
@click.option("--output", "output_path", type=click.Path(),
              help="Where --input predictions go, as JSONL (needed with --input); with --ray a folder.")
@click.option("--column", default=None, help="The text column of --input (default: text, or prompt then text).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per text (default: a classifier prints label<TAB>score<TAB>text lines, "
                   "with tab, newline, carriage return and backslash in them written as \\t, \\n, \\r, \\\\).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--provider", type=click.Choice(["default", "openvino"]), default="default", show_default=True,
              help="openvino: the OpenVINO plugin on the CPU (pip install \"deployft[openvino]\"); a dynamic int8 "
                   "deployable file is swapped for the fused fp32 file unless --model-file is given.")
@click.option("--threads", type=int, default=None, help="Intra-op CPU threads (default: ONNX Runtime's).")
@click.option("--model-file", default=None, help="Another .onnx file of the bundle (default: its model_file).")
@click.option("--public-key", type=click.Path(dir_okay=False), default=None,
              help="Ed25519 public key (PEM): refuse the bundle unless its manifest signature matches.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 decodes greedily.")
@click.option("--top-k", type=int, default=None)
@click.option("--top-p", type=float, default=None)
@click.option("--seed", type=int, default=None,
              help="Seed of sampling (--temperature above 0). Each text or row samples from its own generator "
                   "seeded with it, as it would alone (with an fp32 file; an int8 file computes a batch slightly "
                   "differently from one row, so a nearly tied token can differ): identical prompts give identical "
                   "samples. Leave it out for different samples.")
@click.option("--stop", multiple=True, help="A string that ends generation (repeatable).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar for --input.")
@click.option("--ray", "on_ray", is_flag=True,
              help="Predict --input on Ray Data, one Predictor per worker (pip install \"deployft[ray]\").")
@click.option("--workers", type=int, default=None, show_default=shown(RayPredictConfig, "workers"),
              help="With --ray: Ray actors, each with its own Predictor.")
@click.option("--ray-address", default=None, show_default="the one ray.init() finds, else a local one",
              help="With --ray: the cluster to join (auto, HOST:6379, or ray://HOST:10001 for a .parquet --input "
                   "the cluster's nodes can read).")
@click.option("--output-format", type=click.Choice(FORMATS), default=None,
              show_default=shown(RayPredictConfig, "output_format"),
              help="With --ray: the file written into the --output folder, predictions.jsonl or .parquet.")
def predict(bundle, texts, input_path, output_path, column, as_json, device, provider, threads, model_file, public_key,
            batch_size, max_new_tokens, temperature, top_k, top_p, seed, stop, progress, on_ray, workers, ray_address,
            output_format) -> None:
    """Predict with BUNDLE: label and score per TEXT, or the completion of each prompt (streamed).

    \b
    deployft predict bundles/clf "a warm, funny film" "a dull one"
    deployft predict bundles/gen "What is the capital of France?" --max-new-tokens 32
    deployft predict bundles/clf --input reviews.csv --output preds.jsonl
    deployft predict bundles/clf --input reviews.parquet --output preds/ --ray --workers 4
    """
    from ..errors import UsageError
    from ..runtime import GenerationOptions, Predictor

    if bool(input_path) == bool(texts):
        raise UsageError("pass either TEXT arguments or --input FILE (with --output FILE), not both or neither")
    if input_path and not output_path:
        raise UsageError("--input needs --output FILE.jsonl to write the predictions to")
    ray_flags = {"--workers": workers, "--ray-address": ray_address, "--output-format": output_format}
    if not on_ray and any(v is not None for v in ray_flags.values()):
        raise UsageError(f"{', '.join(k for k, v in ray_flags.items() if v is not None)}: only used with --ray; "
                         "add --ray or leave them out")
    if on_ray and not input_path:
        raise UsageError("--ray predicts a file: pass --input FILE and --output FOLDER instead of TEXT arguments")
    _refuse_unused_flags(click.get_current_context(), bool(input_path), _bundle_task(bundle, public_key))
    options = GenerationOptions(max_new_tokens, temperature, top_k, top_p, seed, stop)
    if on_ray:
        _predict_on_ray(bundle, input_path, output_path, column, output_format, batch_size, workers, threads,
                        device, provider, model_file, public_key, ray_address, options, progress)
        return
    if input_path:
        from ..runtime.files import check_file_job

        check_file_job(input_path, output_path, batch_size)  # before the bundle is loaded: nothing is wasted
    predictor = Predictor.load(bundle, device=device, threads=threads, model_file=model_file, public_key=public_key,
                               provider=provider)
    if device == "auto":
        click.echo(f"device auto: running on {predictor.device}", err=True)
    if provider == "openvino":
        run = predictor.runtime
        click.echo(f"provider openvino: {predictor.model_file}, precision {run.precision}, "
                   f"threads {run.threads or 'default'}, cache {run.cache_dir or 'off'}", err=True)
    if input_path:
        from ..runtime.files import predict_file

        rows = predict_file(predictor, input_path, output_path, column, batch_size, options, progress)
        click.echo(f"wrote {rows} prediction(s) to {output_path}", err=True)
    elif not get_task(predictor.task).generates:
        _print_labels(predictor.predict(list(texts), batch_size=batch_size), texts, as_json)
    else:
        _print_completions(predictor, texts, options, as_json)


def _predict_on_ray(bundle, input_path, output_path, column, output_format, batch_size, workers, threads,
                    device, provider, model_file, public_key, address, options, progress) -> None:
    from ..configfile import build_config
    from ..runtime.ray_predict import predict_on_ray

    config = build_config(RayPredictConfig, None, bundle=bundle, input=input_path, output=output_path,
                          column=column, output_format=output_format, batch_size=batch_size, workers=workers,
                          threads=threads, device=device, provider=provider, model_file=model_file,
                          public_key=public_key, address=address,
                          options=options, progress=progress)
    rows = predict_on_ray(config)
    click.echo(f"wrote {rows} prediction(s) to {config.output_file}", err=True)


def _print_labels(predictions, texts, as_json: bool) -> None:
    for text, prediction in zip(texts, predictions):
        if as_json:
            click.echo(json.dumps({"text": text, **asdict(prediction)}, ensure_ascii=False))
        else:
            click.echo(f"{_tab_field(prediction.label)}\t{prediction.score:.4f}\t{_tab_field(text)}")


def _tab_field(text: str) -> str:
    """`text` as one field of a tab-separated line: backslash, tab, newline and carriage return escaped."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _print_completions(predictor, texts, options, as_json: bool) -> None:
    settings = asdict(options)
    for text in texts:
        if as_json:
            completion = predictor.generate(text, **settings)
            click.echo(json.dumps({"prompt": text, "completion": completion}, ensure_ascii=False))
            continue
        for piece in predictor.stream(text, **settings):
            click.echo(piece, nl=False)
        click.echo()


def _bundle_task(bundle, public_key) -> str | None:
    """The task the bundle's manifest names, read before any loading to refuse flags it would not use; its
    signature (with a public key) and digest are checked first, as loading checks them."""
    from pathlib import Path

    from ..runtime.integrity import check_manifest, signed_manifest

    manifest = signed_manifest(Path(bundle), public_key)
    check_manifest(Path(bundle), manifest)
    return manifest.get("task")


def _refuse_unused_flags(ctx: click.Context, from_file: bool, task: str | None) -> None:
    """Refuse a flag given on the command line that this run would ignore, naming it."""
    from click.core import ParameterSource

    from ..errors import UsageError
    from ..tasks import TASKS

    flags = {p.name: "/".join(p.opts + p.secondary_opts) for p in ctx.command.params}
    given = [name for name in flags if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)]
    unused = [] if from_file else [n for n in given if n in FILE_FLAGS]
    if unused:
        raise UsageError(f"{', '.join(flags[n] for n in unused)}: only used with --input FILE; pass --input or "
                         "leave them out")
    if from_file and "as_json" in given:
        raise UsageError("--json prints the results of TEXT arguments; --input always writes JSON lines to "
                         "--output: leave --json out")
    generates = get_task(task).generates if task in TASKS else None
    unused = [n for n in given if n in GENERATION_FLAGS] if generates is False else []
    if unused:
        raise UsageError(f"{', '.join(flags[n] for n in unused)}: generation settings, and the bundle is a {task} "
                         "bundle that only classifies; leave them out")
    sampling = [n for n in given if n in SAMPLING_FLAGS]
    if generates and sampling and not ctx.params["temperature"]:
        raise UsageError(f"{', '.join(flags[n] for n in sampling)}: sampling settings, and --temperature 0 decodes "
                         "greedily; pass --temperature > 0 to sample, or leave them out")
    if generates and not from_file and "batch_size" in given:
        raise UsageError("--batch-size: TEXT prompts are completed one at a time; leave it out, or pass the "
                         "prompts in an --input file to generate them in batches")
