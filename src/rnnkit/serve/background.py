"""The server in a thread of this process, for notebooks, tests and benchmarks: `serving`."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

from rnnkit.errors import RnnkitError


@contextlib.contextmanager
def serving(runs: dict[str, str | os.PathLike], limits=None, token: str | None = None,
            port: int = 0) -> Iterator[tuple[str, object]]:  # fmt: skip
    """Serve ``runs`` (name -> run folder) on 127.0.0.1:``port`` (0: a free one) while the
    block runs; yields (the base URL, the application)."""
    import uvicorn

    from rnnkit.predictor import load
    from rnnkit.serve.app import create_app

    app = create_app({name: load(path) for name, path in runs.items()}, limits, token)
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="rnnkit-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RnnkitError(f"the server did not start on port {port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
