"""bluesky's document consumers fed through the to-bluesky bridge: TiledWriter stores a bus
scan in a Tiled server started here, apstools' NXWriter writes it as a NeXus file. Each sits
behind an unmodified RemoteDispatcher, with the real peer's own deserializer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import msgpack
import numpy as np
import pytest
from apstools.callbacks import NXWriter
from bluesky.callbacks.tiled_writer import TiledWriter
from bluesky.callbacks.zmq import RemoteDispatcher
from conftest import eventually
from tiled.client import from_uri
from tiled.server import SimpleTiledServer

import databus
from databus import FileRef
from databus.clients.bluesky import ToBluesky

DESERIALIZERS: dict[str, Callable[[bytes], Any]] = {
    "pickle": pickle.loads,  # bluesky's default; the bridge sends pickle only when asked
    "msgpack": msgpack.unpackb,
}

POINTS = 12
FRAME = (6, 5)


class Received:
    """The last callback of a dispatcher: every document name, and the run's stop."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.uid = ""
        self.stopped = threading.Event()

    def __call__(self, name: str, doc: dict) -> None:
        self.names.append(name)
        if name == "start":
            self.uid = doc["uid"]
        elif name == "stop":
            self.stopped.set()


class Refusals:
    """Runs a consumer, keeping what it raised: the dispatcher would only log it."""

    def __init__(self, consumer: Callable[[str, dict], Any]) -> None:
        self.consumer = consumer
        self.refused: list[tuple[str, str]] = []

    def __call__(self, name: str, doc: dict) -> None:
        try:
            self.consumer(name, doc)
        except Exception as exc:
            self.refused.append((name, f"{type(exc).__name__}: {exc}"))


@contextlib.contextmanager
def dispatching(
    address: str, serializer: str, consumer: Callable[[str, dict], Any]
) -> Iterator[tuple[Refusals, Received]]:
    """An unmodified RemoteDispatcher connected to ``address`` in a thread, feeding
    ``consumer`` then a ``Received``; stopped on exit."""
    dispatcher = RemoteDispatcher(address, deserializer=DESERIALIZERS[serializer])
    refusals, received = Refusals(consumer), Received()
    dispatcher.subscribe(refusals)
    dispatcher.subscribe(received)

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # stopped below
            dispatcher.start()  # closes its socket and loop on the way out

    def cancel() -> None:
        for task in asyncio.all_tasks(dispatcher.loop):
            task.cancel()

    thread = threading.Thread(target=run, name="remote-dispatcher", daemon=True)
    thread.start()
    try:
        yield refusals, received
    finally:
        dispatcher.loop.call_soon_threadsafe(cancel)
        thread.join(10)


class BusScan:
    """What one ascan on the bus sent: a motor and a counter; with ``detectors``, also a
    spectrum and frames a detector wrote to an HDF5 file itself (a ref channel). Frames
    inline in the events would not do: TiledWriter refuses 2D arrays in events (pyarrow's
    "Can only convert 1-dimensional array values"), from a RunEngine as from the bridge."""

    def __init__(self, detectors: Path | None = None) -> None:
        self.robz = np.linspace(-1, 1, POINTS)
        self.diode = np.round(1000 * np.exp(-(self.robz**2) / 0.18))
        self.spectra = np.arange(POINTS * 8, dtype="float32").reshape(POINTS, 8)
        self.frames = np.arange(POINTS * FRAME[0] * FRAME[1], dtype="uint16").reshape(
            POINTS, *FRAME
        )
        self.file = None if detectors is None else detectors / "det.h5"
        if self.file is not None:
            with h5py.File(self.file, "w") as f:
                f["entry/data/data"] = self.frames

    def start(self, bus: databus.Bus, session: str) -> Callable[[], None]:
        """Create and start the scan (so the session exists for the bridge); return a
        function that sends every point in blocks and ends the scan."""
        scan = bus.session(session).create_scan(
            type="ascan", title="ascan robz -1 1 11 0.1", motors=["robz"], npoints=POINTS
        )
        robz = scan.channel("axis:robz", "float64", unit="mm")
        diode = scan.channel("simulation:diode", "float64", unit="counts")
        mca = image = None
        if self.file is not None:
            mca = scan.channel("mca:spectrum", "float32", (8,))
            image = scan.channel("lima:image", "uint16", FRAME, kind="ref")
        scan.prepare()
        scan.start()

        def send_all() -> None:
            for block in (slice(0, 5), slice(5, POINTS)):
                robz.send(self.robz[block])
                diode.send(self.diode[block])
                if mca is not None and image is not None:
                    mca.send(self.spectra[block])
                    ref = FileRef(str(self.file), "/entry/data/data", block.start, block.stop)
                    image.send(ref)
            scan.end()

        return send_all


@contextlib.contextmanager
def bridged(
    bus: databus.Bus,
    session: str,
    serializer: str,
    consumer: Callable[[str, dict], Any],
    **options: Any,
) -> Iterator[tuple[ToBluesky, Refusals, Received]]:
    """The to-bluesky bridge bound to a free port, and a dispatcher connected to it."""
    address = "tcp://127.0.0.1:*"
    with ToBluesky(session, bind=address, serializer=serializer, bus=bus, **options) as bridge:
        bridge.start()
        with dispatching(bridge.address, serializer, consumer) as (refusals, received):
            yield bridge, refusals, received
        assert bridge.statistics().failures == 0


@pytest.fixture
def tiled(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """A Tiled server (tiled's own SimpleTiledServer, in a thread, on a free port) that
    may read the detector files under ``tmp_path/detector``; its client."""
    detector = tmp_path / "detector"
    detector.mkdir()
    server = SimpleTiledServer(tmp_path / "tiled", readable_storage=[detector])
    try:
        yield from_uri(server.uri), detector
    finally:
        server.close()


def test_tiled_writer_stores_a_bus_scan_that_reads_back_the_same(bus, tiled):
    client, detector = tiled
    sent = BusScan(detector)
    send_all = sent.start(bus, "tiled")
    with bridged(bus, "tiled", "pickle", TiledWriter(client)) as got:
        send_all()
        bridge, refusals, received = got
        assert received.stopped.wait(30), received.names
    assert refusals.refused == []
    assert "event_page" in received.names and "stream_datum" in received.names
    assert bridge.statistics().events == POINTS
    run = client[received.uid]
    assert run.metadata["start"]["scan_id"] == 1
    assert run.metadata["stop"]["exit_status"] == "success"
    primary = run["primary"]
    np.testing.assert_array_equal(primary["robz"].read(), sent.robz)
    np.testing.assert_array_equal(primary["diode"].read(), sent.diode)
    np.testing.assert_array_equal(primary["spectrum"].read(), sent.spectra)
    np.testing.assert_array_equal(primary["image"].read(), sent.frames)


def test_nxwriter_writes_a_bus_scan_as_nexus(bus, tmp_path, caplog):
    """apstools' NXWriter (seed 004): its ``receiver`` behind the dispatcher; it writes
    the file in a thread after ``stop``, and ``wait_writer()`` waits for it."""
    nxwriter = NXWriter()
    nxwriter.file_name = str(tmp_path / "scan.h5")
    nxwriter.warn_on_missing_content = False
    sent = BusScan()
    send_all = sent.start(bus, "nexus")
    with (
        caplog.at_level(logging.ERROR, logger="apstools"),
        bridged(bus, "nexus", "msgpack", nxwriter.receiver, pages=False) as got,
    ):
        send_all()
        bridge, refusals, received = got
        assert received.stopped.wait(30), received.names
    # its thread marks itself active before it creates the file: once the file is
    # there, wait_writer() cannot return before the thread is done
    assert eventually(lambda: Path(nxwriter.file_name).exists(), timeout=30)
    nxwriter.wait_writer()
    assert refusals.refused == []
    assert received.names == ["start", "descriptor", *["event"] * POINTS, "stop"]
    assert bridge.statistics().events == POINTS
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    with h5py.File(nxwriter.file_name, "r") as f:
        data = f["/entry/data"]
        assert data.attrs["signal"] == "diode"
        assert list(data.attrs["axes"]) == ["robz"]
        np.testing.assert_array_equal(data["robz"][()], sent.robz)
        np.testing.assert_array_equal(data["diode"][()], sent.diode)
        assert f["/entry"].attrs["NX_class"] == "NXentry"
