"""`serve`: run the app with uvicorn until SIGINT / SIGTERM, then drain.

On SIGTERM uvicorn closes the listening socket (new connections are refused), closes idle keep-alive
connections and waits for in-flight requests, streams included, up to `grace_s`; requests still running then are
cancelled, the worker thread stops, and the process exits 0. `/ready` answers 503 from the signal on, so a load
balancer stops routing to the server while it drains. The address is taken before the model loads: a port another
program holds is one `Error:` line at once, not a server that warms up, says it is ready and then fails to bind.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket

from ..errors import UsageError, require
from .config import ServeConfig

logger = logging.getLogger("deployft.serve")


def serve(config: ServeConfig) -> None:
    """Serve `config.bundle` on `config.host:config.port` until stopped.

    Raises:
        MissingDependencyError: fastapi or uvicorn is not installed.
        BundleError, DeviceError: the bundle cannot be loaded on the device.
        UsageError: `config.host:config.port` cannot be listened on (in use, not this machine's address).
    """
    uvicorn = require("uvicorn", "serve")
    from .app import create_app
    from .memory import bound_heap_growth

    listening = listen(config.host, config.port)
    try:
        bound_heap_growth()  # before the model's threads start
        app = create_app(config, start=False)
        _run(uvicorn, app, config, listening)
    finally:
        listening.close()


def _run(uvicorn, app, config: ServeConfig, listening: socket.socket) -> None:
    """Run `app` with uvicorn on the `listening` socket until a signal stops it (SIGTERM drains, then exit 0)."""
    service = app.state.service
    config.warn_if_open()

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if not self.should_exit:
                logger.info("signal %s: refusing new connections, finishing %d in-flight request(s) within %s s",
                            sig, service.inflight, config.grace_s)
            service.ready = False
            super().handle_exit(sig, frame)
            # uvicorn re-raises captured signals after shutting down (the process then dies of SIGTERM);
            # a drained SIGTERM is a clean stop, so the process exits 0
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    settings = uvicorn.Config(app, host=config.host, port=config.port, lifespan="on", log_level="info",
                              timeout_graceful_shutdown=config.grace_s, access_log=False)
    DrainingServer(settings).run(sockets=[listening])


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` (as uvicorn binds one: SO_REUSEADDR, so a server restarted at once can take the
    port back from connections still closing), for uvicorn to listen on.

    Raises:
        UsageError: the port is in use, the host is not an address of this machine, or binding is not allowed.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        if getattr(exc, "errno", None) == errno.EADDRINUSE:
            raise UsageError(f"--port {port} on {host} is in use (another program listens there); pass another "
                             "--port, or stop that program") from exc
        if getattr(exc, "errno", None) == errno.EACCES:
            raise UsageError(f"listening on port {port} needs privileges this user lacks (ports below 1024 do); "
                             "pass a --port of 1024 or more") from exc
        raise UsageError(f"cannot listen on --host {host} --port {port} ({getattr(exc, 'strerror', None) or exc}); "
                         "pass an address of this machine (127.0.0.1, or 0.0.0.0 for every interface) and a free "
                         "--port") from exc
    sock.set_inheritable(True)
    return sock
