"""`deployft serve`: parse flags, build a ServeConfig, call deployft.serve.serve."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from ..serve.config import API_KEY_ENV, DEVICES, PROVIDERS, ServeConfig
from .options import shown


@click.command("serve")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--host", default=None, show_default=shown(ServeConfig, "host"),
              help="Address to listen on (0.0.0.0 exposes the server to the network).")
@click.option("--port", type=int, default=None, show_default=shown(ServeConfig, "port"), help="TCP port.")
@click.option("--threads", type=int, default=None, show_default="ONNX Runtime's", help="Intra-op CPU threads.")
@click.option("--device", type=click.Choice(list(DEVICES)), default=None, show_default=shown(ServeConfig, "device"))
@click.option("--provider", type=click.Choice(list(PROVIDERS)), default=None,
              show_default=shown(ServeConfig, "provider"),
              help="openvino: the OpenVINO plugin on the CPU (pip install \"deployft[openvino]\").")
@click.option("--model-file", default=None, help="Another .onnx file of the bundle (default: its model_file).")
@click.option("--public-key", type=click.Path(dir_okay=False), default=None,
              help="Serve only if the bundle's manifest is signed by this Ed25519 key (deployft export --sign-key).")
@click.option("--model-name", default=None, show_default="the bundle folder's name",
              help="The model id of the API (/v1/models).")
@click.option("--max-batch-size", type=int, default=None, show_default=shown(ServeConfig, "max_batch_size"),
              help="Most texts or sequences per ONNX Runtime call; 1 turns batching off.")
@click.option("--max-wait-ms", type=float, default=None, show_default=shown(ServeConfig, "max_wait_ms"),
              help="How long the classifier batcher waits to fill a batch (not at all while no other "
                   "request is in flight).")
@click.option("--prefix-cache-mb", type=int, default=None, show_default=shown(ServeConfig, "prefix_cache_mb"),
              help="Generators: memory for prompts' KV caches, so prompts that start the same way resume from "
                   "them (0: off).")
@click.option("--max-queue", type=int, default=None, show_default=shown(ServeConfig, "max_queue"),
              help="Requests allowed to wait; one more is answered 429.")
@click.option("--max-texts", type=int, default=None, show_default=shown(ServeConfig, "max_texts"),
              help="Texts per classification request.")
@click.option("--max-tokens-limit", type=int, default=None, show_default=shown(ServeConfig, "max_tokens_limit"),
              help="Largest max_tokens a completion request may ask for (it also caps the default of a request "
                   "that leaves max_tokens out).")
@click.option("--max-body-bytes", type=int, default=None, show_default=shown(ServeConfig, "max_body_bytes"),
              help="Largest request body.")
@click.option("--request-timeout", "request_timeout_s", type=float, default=None,
              show_default=shown(ServeConfig, "request_timeout_s"), help="Seconds per request before a 504.")
@click.option("--grace", "grace_s", type=float, default=None, show_default=shown(ServeConfig, "grace_s"),
              help="Seconds in-flight requests get after SIGTERM.")
@click.option("--api-key", default=None, show_default=f"${API_KEY_ENV}",
              help="Key clients must send as 'Authorization: Bearer KEY'.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="YAML, TOML or JSON file of options (flags given here win).")
@click.option("--ray", "on_ray", is_flag=True,
              help="Run the app as a Ray Serve deployment (pip install \"deployft[ray]\").")
@click.option("--replicas", type=int, default=None, show_default="1", help="With --ray: replicas of the app.")
@click.option("--min-replicas", type=int, default=None, help="With --ray: autoscale from this many replicas.")
@click.option("--max-replicas", type=int, default=None, help="With --ray: autoscale up to this many replicas.")
@click.option("--ray-address", default=None, show_default="the one ray.init() finds, else a local one",
              help="With --ray: the cluster to join (auto, ray://HOST:10001).")
def serve(bundle, host, port, threads, device, provider, model_file, public_key, model_name, max_batch_size,
          max_wait_ms, prefix_cache_mb, max_queue, max_texts, max_tokens_limit, max_body_bytes, request_timeout_s,
          grace_s, api_key, config_file, on_ray, replicas, min_replicas, max_replicas, ray_address) -> None:
    """Serve BUNDLE over HTTP: the OpenAI API (generators) or /predict (classifiers), /metrics, a playground at /.

    \b
    deployft serve bundles/gen --port 8000
    deployft serve bundles/clf --max-batch-size 32 --max-wait-ms 5 --api-key "$KEY"
    deployft serve bundles/gen --ray --min-replicas 1 --max-replicas 4
    """
    import logging

    from ..configfile import build_config
    from ..serve.server import serve as run

    config = build_config(
        ServeConfig, config_file, bundle=bundle, host=host, port=port, threads=threads, device=device,
        provider=provider, model_file=model_file, public_key=public_key, model_name=model_name,
        max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, prefix_cache_mb=prefix_cache_mb,
        max_queue=max_queue, max_texts=max_texts, max_tokens_limit=max_tokens_limit, max_body_bytes=max_body_bytes,
        request_timeout_s=request_timeout_s, grace_s=grace_s, api_key=api_key,
    )
    logging.basicConfig(level=logging.INFO, format="serve: %(message)s")
    ray_flags = {"--replicas": replicas, "--min-replicas": min_replicas, "--max-replicas": max_replicas,
                 "--ray-address": ray_address}
    if on_ray:
        from ..serve.ray_app import RayScale, serve_on_ray

        serve_on_ray(config, RayScale(replicas, min_replicas, max_replicas, ray_address))
    elif any(v is not None for v in ray_flags.values()):
        raise UsageError(f"{', '.join(k for k, v in ray_flags.items() if v is not None)}: only used with --ray; "
                         "add --ray or leave them out")
    else:
        run(config)
