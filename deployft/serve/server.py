"""`serve`: run the app with uvicorn until SIGINT / SIGTERM, then drain.

On SIGTERM uvicorn closes the listening socket (new connections are refused), closes idle keep-alive
connections and waits for in-flight requests, streams included, up to `grace_s`; requests still running then are
cancelled, the worker thread stops, and the process exits 0. `/ready` answers 503 from the signal on, so a load
balancer stops routing to the server while it drains.
"""

from __future__ import annotations

import logging
import signal

from ..errors import require
from .config import ServeConfig

logger = logging.getLogger("deployft.serve")


def serve(config: ServeConfig) -> None:
    """Serve `config.bundle` on `config.host:config.port` until stopped.

    Raises:
        MissingDependencyError: fastapi or uvicorn is not installed.
        BundleError, DeviceError: the bundle cannot be loaded on the device.
    """
    uvicorn = require("uvicorn", "serve")
    from .app import create_app
    from .memory import bound_heap_growth

    bound_heap_growth()  # before the model's threads start
    app = create_app(config, start=False)
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
    DrainingServer(settings).run()
