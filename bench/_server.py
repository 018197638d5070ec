"""The server a bench runs against: the one named by --url, or a private embedded one."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from databus._server import EmbeddedServer


@contextlib.contextmanager
def bench_server(url: str | None) -> Iterator[str]:
    """Yield ``url``, or the URL of an embedded server (4 GB cap) started for the bench
    in a temporary directory and stopped afterwards."""
    if url is not None:
        yield url
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(Path(tmp), maxmemory=4 * 10**9)
        try:
            yield server.start().url
        finally:
            server.stop()
