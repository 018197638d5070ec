"""bluesky -> bus without touching the RunEngine: listen to an existing bluesky 0MQ
``Proxy`` and publish every run it carries as a bus scan.

    databus bridge from-bluesky --zmq tcp://PROXY_HOST:PROXY_OUT --session S
        [--prefix B] [--serializer msgpack|msgpack-numpy|pickle] [--url URL]

A SUB socket connects to the proxy's output port (where ``RemoteDispatcher``s connect)
and hands each document to a ``BusPublisher`` (what becomes what: see ``publisher``).
The serializer must be the one the RunEngine's ``Publisher`` was given. The default is
msgpack; ``--serializer pickle`` reads bluesky's own default wire, but unpickling runs
whatever code the sender put in a frame: use it only on a network where every host that
can reach the proxy is trusted. A frame that does not decode is logged and counted.

The bridge starts receiving when it connects: a run whose start went by before that is
not published (its documents are counted as unmapped). SIGINT or SIGTERM stop it: what
it received is published, runs left open end ``interrupted``, and the counts are printed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import zmq

import databus

from .. import _xpub
from ..bridge import argument_parser, serve
from ._serializers import add_wire_arguments, get_serializer
from .publisher import BusPublisher, PublisherStatistics

__all__ = ["FromBluesky", "FromBlueskyStatistics", "main"]

log = logging.getLogger(__name__)

#: How often the receiving loop looks at its stop flag (ms).
POLL_MS = 100


@dataclass(frozen=True)
class FromBlueskyStatistics:
    """What a ``FromBluesky`` bridge did so far."""

    frames: int  #: frames received with the bridge's prefix
    undecodable: int  #: frames that did not split or deserialize (logged)
    publisher: PublisherStatistics  #: what its BusPublisher did with the documents


class FromBluesky:
    """Receives the documents a bluesky ``Proxy`` sends out at ``zmq_address``
    (``tcp://host:port`` or bluesky's ``host:port``) with ``prefix`` (empty: any), decodes
    them with ``serializer`` and publishes them in ``session`` of ``bus`` (None:
    ``databus.connect()``). ``run()`` blocks until ``stop()``; ``start()`` runs it in a
    thread; ``close()`` stops, publishes what was received and lets go of the socket.
    ValueError for a bad address, prefix or serializer."""

    def __init__(
        self,
        zmq_address: str,
        *,
        prefix: bytes = b"",
        serializer: str = "msgpack",
        session: str = "bluesky",
        bus: databus.Bus | None = None,
    ) -> None:
        if not isinstance(prefix, bytes) or b" " in prefix:
            raise ValueError(f"prefix must be bytes without a space, got {prefix!r}")
        self._loads = get_serializer(serializer).loads
        self.address = _xpub.zmq_address(zmq_address)
        self._prefix = prefix
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        try:
            self._socket.connect(self.address)
        except zmq.ZMQError as exc:
            self._socket.close(0)
            self._context.term()
            raise ValueError(
                f"cannot connect to {zmq_address!r} ({exc}): give the proxy's output "
                f"port as tcp://host:port"
            ) from None
        self._socket.setsockopt(zmq.SUBSCRIBE, prefix + b" " if prefix else b"")
        self.publisher = BusPublisher(session=session, bus=bus, wait=True)
        self._stop = threading.Event()
        self._frames = 0
        self._undecodable = 0
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Receive and publish until ``stop()``."""
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(POLL_MS):
                continue
            self._take(self._socket.recv())

    def _take(self, frame: bytes) -> None:
        try:
            prefix, name, payload = frame.split(b" ", 2)
        except ValueError:
            self._bad(f"a frame of {len(frame)} bytes is not 'prefix name document'")
            return
        if self._prefix and prefix != self._prefix:
            return
        self._frames += 1
        try:
            doc = self._loads(payload)
        except Exception as exc:  # whatever the peer sent: logged and counted
            self._bad(f"{name[:40]!r} document does not decode: {type(exc).__name__}: {exc}")
            return
        self.publisher(name.decode(errors="replace"), doc)

    def _bad(self, message: str) -> None:
        self._undecodable += 1
        log.error("from-bluesky: %s", message)

    def start(self) -> None:
        """Run in a thread of its own."""
        self._thread = threading.Thread(target=self.run, name="from-bluesky", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Make ``run()`` return (at most ``POLL_MS`` later)."""
        self._stop.set()

    def close(self) -> None:
        """Stop, publish what was received, end the runs left open and close the socket."""
        self.stop()
        if self._thread is not None:
            self._thread.join()
        self.publisher.close()
        self._socket.close(0)
        self._context.term()

    def statistics(self) -> FromBlueskyStatistics:
        return FromBlueskyStatistics(self._frames, self._undecodable, self.publisher.statistics())


def main(argv: Sequence[str] | None = None) -> int:
    """``databus bridge from-bluesky``: publish a proxy's runs until SIGINT or SIGTERM."""
    parser = argument_parser("from-bluesky", __doc__)
    parser.add_argument("--zmq", required=True, metavar="ADDR", help="the proxy's output port")
    add_wire_arguments(
        parser,
        "only frames with this prefix",
        "as given to the RunEngine's Publisher; pickle only on a trusted network",
    )
    args = parser.parse_args(argv)
    return serve(
        "from-bluesky",
        args.url,
        lambda bus: FromBluesky(
            args.zmq,
            prefix=args.prefix.encode(),
            serializer=args.serializer,
            session=args.session,
            bus=bus,
        ),
        lambda bridge: f"{bridge.address} -> session {args.session!r}",
        _summary,
    )


def _summary(bridge: FromBluesky) -> str:
    stats = bridge.statistics()
    p = stats.publisher
    return (
        f"{stats.frames} frames, {stats.undecodable} undecodable; {p.published} documents "
        f"published, {p.runs_started} runs started, {p.runs_ended} ended; {p.failed} failed, "
        f"{p.unmapped} unmapped, {p.dropped} dropped"
    )
