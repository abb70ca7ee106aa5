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
import os
import signal
import socket

from ..errors import UsageError, require
from .config import ServeConfig

logger = logging.getLogger("deployft.serve")

BACKLOG = 2048
"""Connections the listening sockets queue before the server accepts them (uvicorn's default)."""


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
        for sock in listening:
            sock.close()


def _run(uvicorn, app, config: ServeConfig, listening: list[socket.socket]) -> None:
    """Run `app` with uvicorn on the `listening` sockets until a signal stops it (SIGTERM drains, then exit 0)."""
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
    logger.info("listening on %s (Ctrl+C or SIGTERM stops it)", ", ".join(map(address_text, listening)))
    DrainingServer(settings).run(sockets=listening)


def listen(host: str, port: int) -> list[socket.socket]:
    """Sockets listening on `host:port`, bound as asyncio binds them for uvicorn: one per address the host resolves
    to (`localhost`: 127.0.0.1 and ::1), an IPv6 one IPv6-only, SO_REUSEADDR on POSIX (a server restarted at once
    takes the port back from connections still closing). They listen at once, so a second server started while
    this one loads its model finds the port taken. Port 0 takes a free port, the same one on every address.

    Raises:
        UsageError: the port is in use, the host is not an address of this machine, or binding is not allowed.
    """
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"--host {host} is not a name or address this machine can listen on "
                         f"({getattr(exc, 'strerror', None) or exc}); pass 127.0.0.1, or 0.0.0.0 for every "
                         "interface") from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            if os.name == "posix":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            sock.listen(BACKLOG)
            port = sock.getsockname()[1]
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise _bind_error(exc, host, port) from exc
    return sockets


def _bind_error(exc: OSError, host: str, port: int) -> UsageError:
    if exc.errno == errno.EADDRINUSE:
        return UsageError(f"--port {port} on {host} is in use (another program listens there); pass another --port, "
                          "or stop that program")
    if exc.errno == errno.EACCES:
        return UsageError(f"listening on port {port} needs privileges this user lacks (ports below 1024 do); pass a "
                          "--port of 1024 or more")
    return UsageError(f"cannot listen on --host {host} --port {port} ({exc.strerror or exc}); pass an address of this "
                      "machine (127.0.0.1, or 0.0.0.0 for every interface) and a free --port")


def address_text(sock: socket.socket) -> str:
    """`http://127.0.0.1:8000` (`http://[::1]:8000`) of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"
