"""``BusPublisher``: a RunEngine callback that publishes every run as a bus scan.

    RE.subscribe(BusPublisher(session="demo"))

The RunEngine's thread only puts each document on a bounded queue; one worker thread
publishes them, in order, through the SDK. Creating a scan, declaring a channel and
ending a scan are each a round trip to the server, and a server that is gone makes them
wait for its reconnection: a plan never waits for any of it. The worker publishes the
events of one descriptor waiting behind each other as one page (a flood of single
events costs one ``send()`` per channel and page). When the queue is full (the server
is gone or slower than the plan) events and event pages are dropped, logged and
counted, and their rows become ``dropped`` gaps of their stream's channels (readers get
GAP events there; later rows keep their indices); the other documents (a run's start,
descriptors, resources, stop) always go in, so every run keeps its frame and its end.
Nothing is ever raised into the plan (``statistics()`` counts it all). A run whose stop
never came ends ``interrupted`` at ``close()``. Each run is a scan of its own, keyed by
its start ``uid`` (nested runs and several run keys at once are several scans).

What goes where: the start document is the scan info (with ``title``, ``type``,
``npoints``... for databus' own tools: ``_channels.scan_info``); each descriptor's data
keys become channels as it comes, also mid-run (``_channels`` gives the names: ``det``,
``axis:motor``, ``baseline:motor``..., with ``attrs["stream"]`` and the data key's
description), and the event ``time``/``timestamps`` are channels of their stream;
events and event pages become blocks; ``resource``/``datum`` (area detectors' HDF5) and
``stream_resource``/``stream_datum`` (ophyd-async) become ``FileRef``s on ``ref``
channels (``_files``); the stop ends the scan (success: finished, abort: stopped,
fail: failed with the stop's reason), with the stop document in the final info.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import event_model

import databus
from databus import FileRef

from ._files import FileSource, Unmapped, datum_ref, resource_source, stream_datum_ref
from ._files import stream_resource_source as stream_source
from ._run import RunScan, Stream

log = logging.getLogger(__name__)

#: Documents waiting for the worker before the callback drops them.
MAX_QUEUE = 100_000
#: Waiting events of one descriptor the worker publishes together, as one event page.
COALESCE = 1000
_CLOSE: tuple[str, Mapping[str, Any]] = ("", {})
#: The documents a full queue drops (counted); every other one goes in beyond the limit.
_DATA = frozenset(("event", "event_page"))


@dataclasses.dataclass(frozen=True)
class PublisherStatistics:
    """Counters of a ``BusPublisher`` (``statistics()``)."""

    #: Documents the callback was given.
    received: int
    #: Documents published on the bus.
    published: int
    #: Documents dropped because the queue was full (the plan never waits).
    dropped: int
    #: Documents that could not be published: the server refused or was gone, or a run's
    #: scan could not be created; each is logged.
    failed: int
    #: Parts of documents with no bus equivalent (an unknown resource spec, a datum
    #: of an unknown resource, a value a channel refuses); each is logged.
    unmapped: int
    #: Runs started (a scan created) and ended on the bus.
    runs_started: int
    runs_ended: int
    #: Documents waiting in the queue now, and the most that waited.
    queued: int
    peak_queued: int


class BusPublisher:
    """Publishes the documents it is called with (``cb(name, doc)``) as bus scans in
    ``session``, on the bus at ``url`` (None: ``DATABUS_URL`` or the embedded server) or
    on ``bus``. ``max_queue``: documents that may wait for the worker; when they are that
    many the callback drops the next events and pages, or with ``wait`` waits for room
    (for a bridge, whose socket buffers meanwhile; never for a RunEngine). Connecting is the only
    thing that raises (``ServerUnavailable``, ``InvalidURL``...): construct it
    before the plan runs. ``close()`` (or a ``with`` block) ends it."""

    def __init__(
        self,
        url: str | None = None,
        session: str = "bluesky",
        *,
        bus: databus.Bus | None = None,
        max_queue: int = MAX_QUEUE,
        wait: bool = False,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, not {max_queue}")
        self._own_bus = bus is None
        self.bus = databus.connect(url) if bus is None else bus
        self.session = self.bus.session(session)
        self._queue = _Documents(max_queue)
        self._counts = dict.fromkeys(
            ("received", "published", "dropped", "failed", "unmapped", "started", "ended"), 0
        )
        self._peak = 0
        self._wait = wait
        self._runs: dict[str, RunScan | None] = {}  # by start uid; None: no scan (failed)
        self._streams: dict[str, Stream | None] = {}  # by uid; None: its run has no scan
        self._sources: dict[str, FileSource] = {}  # (stream) resource uid -> file
        self._keys: dict[str, str] = {}  # stream resource uid -> its data key
        self._datums: dict[str, FileRef] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="databus-bluesky", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<BusPublisher session={self.session.name!r} runs={len(self._runs)}>"

    # ------------------------------------------------------------- the callback

    def __call__(self, name: str, doc: Mapping[str, Any]) -> None:
        """Queue one document; never raises, and never blocks unless made to ``wait``."""
        self._counts["received"] += 1
        if name in _DATA:
            size = self._queue.put((name, doc), self._wait)
        else:  # a run's frame (start, descriptors, resources, stop) is never dropped
            size = self._queue.control((name, doc))
        if size > self._peak:
            self._peak = size
        elif size < 0:
            self._queue.lost(doc.get("descriptor"), _rows(name, doc))
            self._counts["dropped"] += 1
            if self._counts["dropped"] == 1 or self._counts["dropped"] % 10_000 == 0:
                log.error(
                    "bluesky -> bus: the queue is full (%d documents): %d dropped so far",
                    self._queue.limit,
                    self._counts["dropped"],
                )

    def statistics(self) -> PublisherStatistics:
        c = self._counts
        return PublisherStatistics(
            c["received"],
            c["published"],
            c["dropped"],
            c["failed"],
            c["unmapped"],
            c["started"],
            c["ended"],
            len(self._queue),
            self._peak,
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every document queued so far is handled; False if ``timeout``
        (seconds; None: for ever) ran out first."""
        done = threading.Event()
        self._queue.control(("", {"flush": done}))
        return done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Publish what is queued, end the scans of runs that never stopped (as
        ``interrupted``: their stop never came), stop the worker and close a bus it
        opened. ``timeout``: how long to wait for the worker (seconds)."""
        if self._closed:
            return
        self._closed = True
        self._queue.control(_CLOSE)
        self._thread.join(timeout)
        if self._own_bus:
            self.bus.close()

    def __enter__(self) -> BusPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the worker

    def _work(self) -> None:
        while True:
            name, doc = self._queue.get()
            if name == "":
                if "flush" in doc:
                    doc["flush"].set()
                    continue
                if "lost" in doc:
                    self._skip(doc["lost"].descriptor, self._queue.taken(doc["lost"]))
                    continue
                self._end_unstopped()
                return
            if name == "event":
                events = self._queue.take_events(doc, COALESCE)
                if len(events) > 1:
                    self._handle_page(events)
                    continue
            self._handle(name, doc)

    def _skip(self, descriptor: Any, rows: int) -> None:
        """Announce ``rows`` rows of ``descriptor``'s stream the full queue dropped: each of
        its channels gets a ``dropped`` gap there, so readers see them and later rows keep
        their indices."""
        stream = self._streams.get(descriptor)
        if stream is None:
            return
        try:
            stream.skip(rows)
        except Exception as exc:  # its run ended meanwhile: the drops stay counted
            log.error("bluesky -> bus: %d dropped rows not announced: %s", rows, exc)

    def _handle_page(self, events: list[Mapping[str, Any]]) -> None:
        """Events of one descriptor with the same keys, published as one event page: a
        flood then costs one ``send()`` per channel and page, not per event."""
        try:
            page = event_model.pack_event_page(*events)  # type: ignore[arg-type]  # (Mapping)
        except Exception:  # not one page after all: one at a time
            for doc in events:
                self._handle("event", doc)
            return
        self._handle("event_page", page, events)

    def _handle(
        self, name: str, doc: Mapping[str, Any], events: list[Mapping[str, Any]] | None = None
    ) -> None:
        """Publish one document (a page packed from ``events``: counted as those)."""
        count = len(events) if events else 1
        try:
            self._publish(name, doc, events or ())
            self._counts["published"] += count
        except Unmapped as exc:
            self._unmapped(f"{name}: {exc}")
        except _NoScan:  # its run's start failed, and was logged
            self._counts["failed"] += count
        except Exception as exc:  # the plan goes on: logged and counted
            self._counts["failed"] += count
            log.error("bluesky -> bus: %s %s not published: %s", name, _uid(doc), exc)

    def _unmapped(self, message: str) -> None:
        self._counts["unmapped"] += 1
        log.warning("bluesky -> bus: %s", message)

    def _publish(
        self, name: str, doc: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        if name == "start":
            self._start(doc)
        elif name == "descriptor":
            if doc.get("run_start") in self._runs:  # (if its scan failed: events count failed)
                self._streams[doc["uid"]] = None
            self._streams[doc["uid"]] = self._run(doc.get("run_start")).descriptor(doc)
        elif name in ("event", "event_page"):
            stream = self._stream(doc.get("descriptor"))
            if name == "event":
                stream.event(doc)
            else:
                stream.page(doc, events)
        elif name == "resource":
            self._sources[doc["uid"]] = resource_source(doc)
        elif name in ("datum", "datum_page"):
            self._datum(name, doc)
        elif name == "stream_resource":
            self._sources[doc["uid"]] = stream_source(doc)
            self._keys[doc["uid"]] = str(doc.get("data_key"))
        elif name == "stream_datum":
            stream = self._stream(doc.get("descriptor"))
            source = self._source(doc.get("stream_resource"))
            key = self._keys[doc["stream_resource"]]
            stream.run.stream_datum(stream, key, stream_datum_ref(source, doc))
        elif name == "stop":
            self._stop(doc)
        else:
            raise Unmapped(f"unknown document name {name!r}")

    def _start(self, doc: Mapping[str, Any]) -> None:
        uid = str(doc["uid"])
        self._runs[uid] = None
        self._runs[uid] = RunScan(self.session, doc, self._unmapped, self._datum_ref)
        self._counts["started"] += 1

    def _run(self, uid: Any) -> RunScan:
        if uid not in self._runs:
            raise Unmapped(f"run {uid!r} was never started here (its start was not seen)")
        run = self._runs[uid]
        if run is None:
            raise _NoScan(uid)
        return run

    def _stream(self, uid: Any) -> Stream:
        if uid not in self._streams:
            raise Unmapped(f"descriptor {uid!r} was never seen")
        stream = self._streams[uid]
        if stream is None:
            raise _NoScan(uid)
        return stream

    def _source(self, uid: Any) -> FileSource:
        if uid not in self._sources:
            raise Unmapped(f"resource {uid!r} was never seen, or is not mapped")
        return self._sources[uid]

    def _datum(self, name: str, doc: Mapping[str, Any]) -> None:
        source = self._source(doc.get("resource"))
        if name == "datum":
            self._datums[doc["datum_id"]] = datum_ref(source, doc.get("datum_kwargs") or {})
            return
        kwargs = doc.get("datum_kwargs") or {}
        for i, datum_id in enumerate(doc["datum_id"]):
            one = {k: v[i] for k, v in kwargs.items()}
            self._datums[datum_id] = datum_ref(source, one)

    def _datum_ref(self, datum_id: Any) -> FileRef:
        ref = self._datums.pop(datum_id, None) if isinstance(datum_id, str) else None
        if ref is None:
            raise Unmapped(f"datum {datum_id!r} is unknown (its resource was not mapped)")
        return ref

    def _stop(self, doc: Mapping[str, Any]) -> None:
        uid = str(doc.get("run_start"))
        try:
            run = self._run(uid)
        finally:
            self._runs.pop(uid, None)
        for key in run.streams:
            self._streams.pop(key, None)
        run.stop(doc)
        self._counts["ended"] += 1

    def _end_unstopped(self) -> None:
        for uid, run in list(self._runs.items()):
            if run is None:
                continue
            log.warning("bluesky -> bus: run %s never stopped; its scan ends interrupted", uid)
            try:
                run.scan.end("interrupted", "the publisher closed before the run's stop")
                self._counts["ended"] += 1
            except Exception as exc:
                self._counts["failed"] += 1
                log.error("bluesky -> bus: run %s: %s", uid, exc)
        self._runs.clear()


class _Documents:
    """The documents waiting for the worker: at most ``limit`` (control items go in
    beyond it). Putting takes no lock (``deque.append`` is atomic); the worker sleeps
    on an event only when the queue is empty, and is woken only then."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[tuple[str, Mapping[str, Any]]] = deque()
        self._ready = threading.Event()
        self._lost_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: tuple[str, Mapping[str, Any]], wait: bool) -> int:
        """Queue ``item``; the queue's length then, or -1 if it was full (and ``wait``
        False; with ``wait`` it polls every millisecond for room)."""
        while len(self._items) >= self.limit:
            if not wait:
                return -1
            time.sleep(0.001)
        return self.control(item)

    def control(self, item: tuple[str, Mapping[str, Any]]) -> int:
        """Queue ``item`` whatever the length."""
        self._items.append(item)
        if not self._ready.is_set():
            self._ready.set()
        return len(self._items)

    def take_events(self, first: Mapping[str, Any], limit: int) -> list[Mapping[str, Any]]:
        """``first`` (an event) and the events of its descriptor, with the same keys,
        already waiting right behind it: at most ``limit``, never waiting for more (the
        worker alone takes items, so a peek then a pop see the same item)."""
        events = [first]
        keys = (first.get("data") or {}).keys()
        items = self._items
        while items and len(events) < limit:
            name, doc = items[0]
            if name != "event" or doc.get("descriptor") != first.get("descriptor"):
                break
            if (doc.get("data") or {}).keys() != keys:
                break
            events.append(items.popleft()[1])
        return events

    def lost(self, descriptor: Any, rows: int) -> None:
        """Queue (beyond the limit) that ``rows`` rows of ``descriptor`` were dropped: one
        small item per run of drops, so a full queue grows by little."""
        with self._lost_lock:
            try:
                name, doc = self._items[-1]
            except IndexError:
                name, doc = "x", {}
            marker = doc.get("lost") if name == "" else None
            if marker is not None and marker.descriptor == descriptor and not marker.taken:
                marker.rows += rows
                return
        self.control(("", {"lost": _Lost(descriptor, rows)}))

    def taken(self, marker: _Lost) -> int:
        """The rows of ``marker``, which the worker took: no drop is added to it after."""
        with self._lost_lock:
            marker.taken = True
            return marker.rows

    def get(self) -> tuple[str, Mapping[str, Any]]:
        """The oldest item, waiting for one."""
        while True:
            try:
                return self._items.popleft()
            except IndexError:
                self._ready.clear()
                if not self._items:  # (a put after the clear sets the event again)
                    self._ready.wait()


def _rows(name: str, doc: Mapping[str, Any]) -> int:
    """Rows of an event (one) or an event page."""
    return 1 if name == "event" else len(doc.get("time") or ())


@dataclasses.dataclass
class _Lost:
    """Rows of one descriptor dropped in a row, as one queue item; ``taken`` once the
    worker has read it (drops after that make a new one)."""

    descriptor: Any
    rows: int
    taken: bool = False


class _NoScan(Exception):
    """A document of a run whose scan could not be created (counted, not logged again)."""


def _uid(doc: Mapping[str, Any]) -> str:
    """A document's uid for a log line."""
    return str(doc.get("uid") or doc.get("datum_id") or "")[:36]
