"""Bus -> bluesky: every scan of a session as an event-model run on bluesky's 0MQ wire.

    databus bridge to-bluesky --session S (--bind ADDR | --connect PROXY_IN)
        [--prefix B] [--serializer pickle|msgpack|msgpack-numpy] [--legacy-resources]
        [--events]
        [--drop-slow] [--url URL]

``--bind tcp://127.0.0.1:5578``: an unmodified ``RemoteDispatcher("127.0.0.1:5578")``
connects to the bridge; ``--connect``: the bridge feeds a bluesky ``Proxy``'s input port.
The frames are those ``bluesky.callbacks.zmq.Publisher`` sends. The default ``msgpack``
suits a dispatcher given ``deserializer=msgpack.unpackb``, ``msgpack-numpy`` one given
``msgpack_numpy.unpackb`` (arrays stay numpy arrays). ``--serializer pickle`` is bluesky's
default wire (the dispatcher's default ``pickle.loads``): off unless asked for, since a
dispatcher that unpickles runs whatever a sender on its network put in a frame. The
documents are described in ``_documents``; what slow and late dispatchers get, in ``_wire``.

A scan that is running when the bridge starts is sent whole, from its start (the bus holds
it). Nothing is dropped by default: a slow dispatcher makes the bridge lag behind the bus;
``--drop-slow`` drops documents for a dispatcher whose queue is full instead (counted).
What could not be converted is logged and counted; the counts are printed at exit.
SIGINT/SIGTERM (or ``close()``) stop the bridge after its current document; the frames it
handed to 0MQ still go out (linger), and a scan it was in the middle of stays without its
stop document (a bridge started again sends running scans from their start).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import databus
from databus import EventType

from ..bridge import argument_parser, serve
from ._documents import RunDocuments
from ._resources import Document, is_legacy
from ._serializers import add_wire_arguments, get_serializer
from ._wire import DocumentSocket

__all__ = ["ToBluesky", "ToBlueskyStatistics", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToBlueskyStatistics:
    """What a ``ToBluesky`` bridge did so far."""

    documents: int  #: documents sent
    events: int  #: events sent (rows of event pages)
    runs: int  #: runs sent to their stop document
    dropped: int  #: documents a slow subscriber lost (``on_slow="drop"`` only)
    failures: int  #: bus events or documents that could not be converted (logged)


class _Scan:
    """A scan being followed: its node, its channels' descriptors, then its run."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.descriptors: list[databus.Descriptor] = []
        self.run: RunDocuments | None = None


class ToBluesky:
    """Follows session ``session`` of ``bus`` (``databus.connect()`` when None) and sends
    each scan's documents to bluesky dispatchers: ``run()`` (blocking) or ``start()`` (a
    thread), ``close()`` to stop. ``statistics()`` counts what it did.

    bind / connect: exactly one address (``tcp://host:port`` or bluesky's ``host:port``).
    serializer: ``msgpack`` (the default), ``msgpack-numpy`` or, only when asked for,
    ``pickle`` (bluesky's default wire: this side only dumps, but every dispatcher
    unpickles what it gets). resources: ``stream`` (stream_resource,
    stream_datum) or ``legacy`` (resource, datum_page). on_slow: ``lag`` or ``drop``; hwm:
    documents queued per subscriber before it counts as full. pages: ``True`` sends
    ``event_page`` documents; ``False`` one ``event`` per row instead, for callbacks that
    take no pages (apstools' ``NXWriter`` and ``SpecWriterCallback`` log "unexpected key
    event_page" and write no data).

    ValueError for a bad address, prefix, serializer or option. A session the bus has
    never had a scan in is logged (a misspelt name shows there) and waited for.
    """

    def __init__(
        self,
        session: str,
        *,
        bind: str | None = None,
        connect: str | None = None,
        prefix: bytes = b"",
        serializer: str = "msgpack",
        resources: str = "stream",
        on_slow: str = "lag",
        hwm: int = 1000,
        pages: bool = True,
        bus: databus.Bus | None = None,
    ) -> None:
        is_legacy(resources)
        self._dumps = get_serializer(serializer).dumps
        self._own_bus = bus is None
        self.bus = bus if bus is not None else databus.connect()
        try:
            self.session = self.bus.session(session)
            known = self.bus.sessions()
            if session not in known:  # a bridge may start before its session: say so, wait
                log.warning(
                    "no session %r on %r yet (it has %s): waiting for its first scan",
                    session,
                    self.bus,
                    ", ".join(known) or "none",
                )
            self.socket = DocumentSocket(
                bind=bind, connect=connect, prefix=prefix, on_slow=on_slow, hwm=hwm
            )
        except BaseException:
            if self._own_bus:
                self.bus.close()
            raise
        self.resources = resources
        self.pages = pages
        self._scans: dict[str, _Scan] = {}
        self._stop = databus.StopHandler()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._counts = {"documents": 0, "events": 0, "runs": 0, "failures": 0}

    @property
    def address(self) -> str:
        """The address the bridge is bound or connected to (the real port for ``:*``)."""
        return self.socket.address

    def statistics(self) -> ToBlueskyStatistics:
        """Counts so far (documents, events, runs, dropped, failures)."""
        return ToBlueskyStatistics(dropped=self.socket.dropped, **self._counts)

    def run(self, started: threading.Event | None = None) -> None:
        """Follow the session and send until ``close()``; ``started`` is set once the
        bridge follows (scans from then on, and those running, will be sent). Errors of
        the bus itself propagate; the socket is closed on the way out."""
        try:
            events = self.session.follow(stop_handler=self._stop, started_event=started)
            for event in events:
                self._on(event)
        finally:
            self.socket.close()
            if self._own_bus:
                self.bus.close()

    def start(self) -> ToBluesky:
        """Run in a thread; returns once the bridge follows the session. If the thread
        fails, the error is logged and ``close()`` raises it."""
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run_thread, args=(started,), name="databus-to-bluesky", daemon=True
        )
        self._thread.start()
        started.wait(10)
        return self

    def _run_thread(self, started: threading.Event) -> None:
        try:
            self.run(started)
        except BaseException as exc:
            log.error("the bridge stopped: %s: %s", type(exc).__name__, exc)
            self._failure = exc
        finally:
            started.set()

    def stop(self) -> None:
        """Ask ``run()`` to return after the current document (from any thread or a
        signal handler)."""
        self._stop.stop()
        self.socket.stop()

    def close(self) -> None:
        """Stop, and wait for ``start()``'s thread to finish sending and close; raises
        what stopped that thread, if anything did."""
        self.stop()
        if self._thread is not None:
            self._thread.join()
        else:
            self.socket.close()
        if self._failure is not None:
            raise self._failure

    def __enter__(self) -> ToBluesky:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- events

    def _on(self, event: databus.Event) -> None:
        node = event.node
        kind = event.type
        try:
            if kind is EventType.NEW_NODE:
                self._on_node(node)
                return
            of_scan = kind in (EventType.PREPARED_SCAN, EventType.END_SCAN)
            scan = self._scans.get(node.db_name if of_scan else node.parent.db_name)
            if scan is None:
                return
            run = self._run(scan)  # the start goes at PREPARED_SCAN
            if kind is EventType.NEW_DATA:
                data = event.data
                self._send(run.data(node.desc.name, data.first_index, data.data, data.block_size))
            elif kind is EventType.GAP:
                gap = event.data
                self._send(run.gap(node.desc.name, gap.first_index, gap.block_size, gap.reason))
            elif kind is EventType.END_SCAN:
                del self._scans[node.db_name]
                end = event.data
                self._send(run.close(str(end.reason), end.error, node.ended, self._final(node)))
                self._counts["runs"] += 1
        except Exception as exc:  # one scan's trouble never stops the bridge
            self._counts["failures"] += 1
            log.error(
                "could not convert %s of %s: %s: %s", kind.name, node, type(exc).__name__, exc
            )

    def _on_node(self, node: Any) -> None:
        """A new scan, or a channel of one (declared before its run opened, or since)."""
        if node.type in ("scan", "scan_group"):
            self._scans[node.db_name] = _Scan(node)
        elif node.parent.db_name in self._scans:
            scan = self._scans[node.parent.db_name]
            scan.descriptors.append(node.desc)
            if scan.run is not None:
                scan.run.add_channel(node.desc)

    @staticmethod
    def _final(node: Any) -> Mapping[str, Any]:
        """The scan info as the scan ended (read again: the end may have added to it)."""
        try:
            return node.info.get_all()
        except databus.DatabusError as exc:
            log.warning("the final info of %s could not be read (%s)", node.db_name, exc)
            return node.info

    def _run(self, scan: _Scan) -> RunDocuments:
        """The scan's run, opened (start and descriptors sent) on first use."""
        if scan.run is None:
            node = scan.node
            scan.run = RunDocuments(
                node.db_name,
                node.number,
                node.created,
                node.info,
                scan.descriptors,
                resources=self.resources,
            )
            self._send(scan.run.open())
        return scan.run

    def _send(self, docs: list[Document]) -> None:
        if not self.pages:
            docs = list(_one_event_per_row(docs))
        for name, doc in docs:
            try:
                payload = self._dumps(doc)
            except Exception as exc:
                self._counts["failures"] += 1
                log.error(
                    "could not serialize a %s document: %s: %s", name, type(exc).__name__, exc
                )
                continue
            if not self.socket.send_document(name, payload):
                return
            self._counts["documents"] += 1
            if name == "event_page":
                self._counts["events"] += len(doc["seq_num"])
            elif name == "event":
                self._counts["events"] += 1


def _one_event_per_row(docs: list[Document]) -> Iterator[Document]:
    """``docs`` with each ``event_page`` as its rows' ``event`` documents (what
    ``event_model.unpack_event_page`` makes; the bridge does not need event-model)."""
    for name, doc in docs:
        if name != "event_page":
            yield name, doc
            continue
        for row, uid in enumerate(doc["uid"]):
            event = {"uid": uid, "descriptor": doc["descriptor"]}
            event.update({field: doc[field][row] for field in ("time", "seq_num")})
            for field in ("data", "timestamps", "filled"):
                if field in doc:
                    event[field] = {key: column[row] for key, column in doc[field].items()}
            yield "event", event


def main(argv: Sequence[str] | None = None) -> int:
    """``databus bridge to-bluesky``: send a session's scans until SIGINT or SIGTERM."""
    parser = argument_parser("to-bluesky", __doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--bind", metavar="ADDR", help="listen for RemoteDispatchers here")
    where.add_argument("--connect", metavar="ADDR", help="a bluesky Proxy's input port")
    add_wire_arguments(
        parser,
        "bytes every frame starts with",
        "pickle (bluesky's default) only when every dispatcher's host is trusted",
    )
    parser.add_argument(
        "--legacy-resources", action="store_true", help="resource/datum instead of stream_*"
    )
    parser.add_argument(
        "--events", action="store_true", help="an event per row instead of event pages"
    )
    parser.add_argument(
        "--drop-slow", action="store_true", help="drop documents for a full subscriber"
    )
    args = parser.parse_args(argv)
    return serve(
        "to-bluesky",
        args.url,
        lambda bus: ToBluesky(
            args.session,
            bind=args.bind,
            connect=args.connect,
            prefix=args.prefix.encode(),
            serializer=args.serializer,
            resources="legacy" if args.legacy_resources else "stream",
            on_slow="drop" if args.drop_slow else "lag",
            pages=not args.events,
            bus=bus,
        ),
        lambda bridge: f"session {args.session!r} -> {bridge.address}",
        _summary,
    )


def _summary(bridge: ToBluesky) -> str:
    stats = bridge.statistics()
    return (
        f"{stats.documents} documents, {stats.events} events, {stats.runs} runs sent; "
        f"{stats.dropped} dropped, {stats.failures} not converted"
    )
