"""The serve app as a Ray Serve deployment: `deployft serve BUNDLE --ray --replicas N`, or `serve run`.

Each replica builds the same FastAPI app as `deployft serve` (`create_app`) inside its own process, so every
replica loads the bundle once, runs its own batching worker and answers the same routes; Ray Serve's proxy
spreads requests over the replicas, and its autoscaler moves their number between `--min-replicas` and
`--max-replicas`. The application for `serve run` (`pip install "deployft[ray]"`):

    serve run deployft.serve.ray_app:build_app bundle=bundles/gen replicas=2
    DEPLOYFT_BUNDLE=bundles/gen serve run deployft.serve.ray_app:app
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import typing
from dataclasses import dataclass, fields

from ..errors import UsageError, reraise_as, require
from ..runtime.ray_predict import check_bundle, worker_error
from .config import ServeConfig

logger = logging.getLogger("deployft.serve")

APP_NAME = "deployft"
BUNDLE_ENV = "DEPLOYFT_BUNDLE"
"""The environment variable `deployft.serve.ray_app:app` reads the BUNDLE folder from."""


@dataclass
class RayScale:
    """How many replicas of the app Ray Serve runs, and on which cluster."""

    replicas: int | None = None
    """A fixed number of replicas (default 1 when no autoscaling bound is given)."""
    min_replicas: int | None = None
    """Autoscaling: the fewest replicas kept running."""
    max_replicas: int | None = None
    """Autoscaling: the most replicas started under load."""
    address: str | None = None
    """Ray cluster to join (`auto`, `ray://host:10001`); default: the one ray.init() finds, else a local instance."""

    def __post_init__(self) -> None:
        for name in ("replicas", "min_replicas", "max_replicas"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UsageError(f"{name} must be an integer >= 1, got {value!r}; "
                                 f"pass --{name.replace('_', '-')} with a value above 0")
        autoscaled = self.min_replicas is not None or self.max_replicas is not None
        if autoscaled and self.replicas is not None:
            raise UsageError("--replicas fixes the number of replicas and --min-replicas / --max-replicas "
                             "autoscale it; pass one or the other")
        if autoscaled and (self.min_replicas or 1) > (self.max_replicas or self.min_replicas):
            raise UsageError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas}); "
                             "pass --min-replicas at most --max-replicas")

    def deployment_options(self, config: ServeConfig) -> dict:
        """`serve.deployment` options: the replica count or autoscaling bounds, CPUs, in-flight requests and
        grace per replica."""
        options: dict = {
            "ray_actor_options": {"num_cpus": config.threads or 1},
            # each replica's own bounded queue answers overload with 429 (Ray Serve's default of a few
            # requests per replica would starve the batcher and queue the rest, unbounded, in Ray's router)
            "max_ongoing_requests": config.max_batch_size + config.max_queue,
            "graceful_shutdown_timeout_s": config.grace_s,
        }
        if self.min_replicas is None and self.max_replicas is None:
            options["num_replicas"] = self.replicas or 1
        else:
            low = self.min_replicas or 1
            options["autoscaling_config"] = {"min_replicas": low, "max_replicas": self.max_replicas or low,
                                             "initial_replicas": low}
        return options


def application(config: ServeConfig, scale: RayScale | None = None):
    """The Ray Serve application of `config.bundle` (pass it to `serve.run`).

    Raises:
        MissingDependencyError: Ray Serve is not installed (`pip install "deployft[ray]"`).
        BundleError: the bundle or its model file cannot be used (checked here, before any replica loads it).
    """
    require("fastapi", "serve")
    serve = require("ray.serve", "ray")
    check_bundle(config.bundle, config.model_file)
    scale = scale or RayScale()

    def build_asgi_app():  # runs in each replica, so each loads the bundle in its own process
        from .app import create_app
        from .memory import bound_heap_growth

        bound_heap_growth()
        return create_app(config, start=False)  # the app's lifespan starts and stops the worker

    @serve.ingress(build_asgi_app)
    class DeployftReplica:
        """One replica of the deployft app."""

    deployment = serve.deployment(name=APP_NAME, **scale.deployment_options(config))(DeployftReplica)
    return deployment.bind()


def serve_on_ray(config: ServeConfig, scale: RayScale) -> None:
    """Run the app on Ray Serve at `config.host:config.port` until SIGINT / SIGTERM, then remove it.

    On exit only this application is deleted (its replicas drain), so Serve keeps running for a joined cluster's
    other applications; a local Ray instance started here goes down with this process's `ray.shutdown()`.

    Raises:
        MissingDependencyError: Ray Serve or fastapi is not installed.
        UsageError: Ray cannot be started or joined.
    """
    ray = require("ray", "ray")
    serve = require("ray.serve", "ray")
    app = application(config, scale)
    started = not ray.is_initialized()
    if started:
        with reraise_as(UsageError, f"cannot start or join Ray at {scale.address or 'a local instance'} "
                                    "({reason}); pass --ray-address of a running cluster or leave it out"):
            ray.init(address=scale.address, include_dashboard=False)
    config.warn_if_open()
    serve.start(http_options={"host": config.host, "port": config.port})
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        except Exception as exc:  # Ray Serve wraps what a replica raised in its own error, with the traceback
            raise worker_error(exc, f"starting the replicas of {config.bundle}") from exc
        logger.info("serving %s on Ray Serve at http://%s:%s", config.bundle, config.host, config.port)
        stop.wait()
        logger.info("stopping: removing the application from Ray Serve")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        serve.delete(APP_NAME)
        if started:
            ray.shutdown()


def build_app(args: dict[str, str]):
    """Ray Serve's application builder: `serve run deployft.serve.ray_app:build_app bundle=PATH [key=value ...]`.

    Keys are ServeConfig fields (bundle, model_name, max_batch_size, threads, ...) and RayScale's replicas,
    min_replicas, max_replicas; values are converted to the field's type.
    """
    values = dict(args)
    if "bundle" not in values:
        raise UsageError("build_app needs bundle=PATH; run: serve run deployft.serve.ray_app:build_app bundle=PATH")
    scale = {name: values.pop(name) for name in ("replicas", "min_replicas", "max_replicas") if name in values}
    config = ServeConfig(**_typed(ServeConfig, values))
    return application(config, RayScale(**_typed(RayScale, scale)))


def _typed(cls, values: dict[str, str]) -> dict:
    """`values` as `cls`'s field types, converted as a config file's values are (`deployft.configfile`)."""
    from ..configfile import convert_value

    hints, known = typing.get_type_hints(cls), {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UsageError(f"unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return {name: convert_value(value, hints[name], known[name], "build_app arguments", "{name}={value}")
            for name, value in values.items()}


def __getattr__(name: str):
    """`app`: the application of the bundle in $DEPLOYFT_BUNDLE, built when `serve run` asks for it."""
    if name != "app":
        raise AttributeError(f"module 'deployft.serve.ray_app' has no attribute {name!r}")
    if not os.environ.get(BUNDLE_ENV):
        raise UsageError(f"{BUNDLE_ENV} is not set; set it to a BUNDLE folder, or run "
                         "serve run deployft.serve.ray_app:build_app bundle=PATH")
    return application(ServeConfig(bundle=os.environ[BUNDLE_ENV]))
