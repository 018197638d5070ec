"""Frames of a bus channel for CrystFEL / OnDA (msgpack over 0MQ) and karabo-bridge clients.

    databus bridge frames --session S --channel NAME
        (--rep tcp://ADDR | --pub tcp://ADDR [--topic ondaframedata] | --karabo tcp://ADDR)
        [--key detector_data] [--set KEY=VALUE ...] [--from-info KEY=INFO_KEY ...]
        [--from-channel KEY=CHANNEL ...] [--peaks CHANNEL] [--dtype f4|i4] [--group NAME]
        [--consumer NAME] [--from-scan N] [--hwm N] [--source NAME] [--url URL]

``--rep`` serves CrystFEL's ``indexamajig --zmq-input=ADDR --zmq-request=next
--data-format=msgpack``: each request (whatever its text) gets the next frame nobody has
had, as one msgpack map (``_crystfel``). The frames are handed out through the bus's point
share ``--group`` (default ``crystfel``), so several clients, and several bridge processes
with the same group, share the work: no frame is served twice or skipped, across scans, for
as long as the bridge runs. A request that finds no frame waits for one (CrystFEL never
sends a request again); each request is answered once. A bridge restarted with the same
``--consumer`` (default: host and address) serves first the frames it had taken and not
sent; a member that never comes back loses its frames to the others after ``claim_after``.

``--karabo`` serves European XFEL's ``karabo_bridge.Client(ADDR).next()`` the same way
(group ``karabo`` by default): a multipart reply of source metadata, scalars and the frame
with its own dtype (``_karabo``), source ``--source`` (default ``databus/SESSION/CHANNEL``).

``--pub`` publishes every frame of the session's scans to every subscriber as
``[topic, msgpack map]`` (CrystFEL's ``--zmq-subscribe=TOPIC``, OnDA's GUI): a live view, so
a subscriber whose queue (``--hwm`` messages, default 2, plus the kernel's buffers) is full
misses frames (counted as ``dropped``), and frames nobody subscribes to are not sent
(``unheard``); a running scan is published from its first frame.

Frame values: ``--set beam_energy=9300`` (a constant), ``--from-info
detector_distance=distance_mm`` (a scan-info field), ``--from-channel beam_energy=mono:energy``
(a per-point channel at the frame's index), ``--peaks CHANNEL`` (a peak list per point).
CrystFEL reads only ``<f4`` and ``<i4`` images: other dtypes are converted (``--dtype``
forces one), said once in the log. SIGINT/SIGTERM stop the bridge after the frame in hand;
replies already handed to 0MQ still go out (linger), and requests still waiting get none.
"""

from __future__ import annotations

import collections
import logging
import socket as socketlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zmq

import databus
from databus import EventType

from .._arguments import parse_assignments
from .._malloc import keep_freed_memory
from .._xpub import PublishSocket, zmq_address
from ..bridge import argument_parser, serve
from ._crystfel import IMAGE_KEY, FrameEncoder
from ._karabo import karabo_message
from ._values import FrameValues, constant

__all__ = ["FramesBridge", "FramesStatistics", "main"]

log = logging.getLogger(__name__)

Mode = Literal["rep", "pub", "karabo"]
#: How long (ms) closing a socket lets replies already handed to 0MQ go out.
LINGER_MS = 10_000
#: How long (s) a frame made ready waits for a request before it goes back to the share.
HOLD_S = 0.5
#: The karabo image key unless ``key`` names another.
KARABO_IMAGE_KEY = "image.data"


@dataclass(frozen=True)
class FramesStatistics:
    """What a ``FramesBridge`` did so far."""

    served: int  #: frames sent (replies, or published messages)
    requests: int  #: requests received (rep, karabo)
    waiting: int  #: requests waiting for a frame now
    dropped: int  #: published frames a slow subscriber missed (pub)
    unheard: int  #: frames not published: nobody subscribed (pub)
    missing_values: int  #: values or peak lists a frame went without (logged once per key)
    failures: int  #: frames that could not be read or encoded (logged), never sent


class FramesBridge:
    """Serves the frames of ``channel`` in ``session``'s scans at one address, in one
    ``mode`` (see the module docstring). ``run()`` blocks until ``stop()``; ``start()``
    runs it in a thread; ``close()`` stops and lets go of the socket. ValueError (before
    anything is bound) for a bad address, key, value or option."""

    def __init__(
        self,
        session: str,
        channel: str,
        *,
        mode: Mode,
        address: str,
        topic: str = "ondaframedata",
        key: str | None = None,
        constants: Mapping[str, Any] | None = None,
        from_info: Mapping[str, str] | None = None,
        from_channel: Mapping[str, str] | None = None,
        peaks: str | None = None,
        dtype: Literal["f4", "i4"] | None = None,
        group: str | None = None,
        consumer: str | None = None,
        first_scan: int | None = None,
        claim_after: float = 60.0,
        hwm: int = 2,
        source: str | None = None,
        value_wait: float = 5.0,
        bus: databus.Bus | None = None,
    ) -> None:
        if mode not in ("rep", "pub", "karabo"):
            raise ValueError(f"mode must be 'rep', 'pub' or 'karabo', not {mode!r}")
        self.mode, self.channel = mode, channel
        self.topic = topic.encode()
        self.values = FrameValues(
            dict(constants or {}), dict(from_info or {}), dict(from_channel or {}), peaks,
            value_wait,
        )  # fmt: skip
        image_key = key if key is not None else KARABO_IMAGE_KEY if mode == "karabo" else IMAGE_KEY
        self.encoder = FrameEncoder(
            channel,
            image_key=image_key,
            scalar_keys=self.values.keys,
            peak_list_key="peak_list" if peaks is not None else None,
            dtype=dtype,
        )
        self.source = source if source is not None else f"databus/{session}/{channel}"
        self._own_bus = bus is None
        self.bus = bus if bus is not None else databus.connect()
        self._context = zmq.Context()
        self._pub: PublishSocket | None = None
        self._router: zmq.Socket | None = None
        self._share: databus.PointShare | None = None
        try:
            self.session = self.bus.session(session)
            if mode == "pub":
                self._pub = PublishSocket(bind=address, on_slow="drop", idle="skip", hwm=hwm)
                self.address = self._pub.address
            else:
                self._router = self._bind_router(address, hwm)
                self.address = str(self._router.getsockopt_string(zmq.LAST_ENDPOINT))
                self._share = self.session.share(
                    channel,
                    group if group is not None else "crystfel" if mode == "rep" else "karabo",
                    consumer=consumer or f"{socketlib.gethostname()}:{self.address}",
                    claim_after=claim_after,
                    first_scan=first_scan,
                )
        except BaseException:
            self._release()
            raise
        self._waiting: collections.deque[list[bytes]] = collections.deque()
        self._held: tuple[databus.Claim, list[Any]] | None = None
        self._stop = databus.StopHandler()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._train = 0
        self._counts = {"served": 0, "requests": 0, "failures": 0}

    def _bind_router(self, address: str, hwm: int) -> zmq.Socket:
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a client gone raises
        router.setsockopt(zmq.LINGER, LINGER_MS)
        router.setsockopt(zmq.SNDHWM, max(hwm, 2))
        try:
            router.bind(zmq_address(address))
        except zmq.ZMQError as exc:
            router.close(0)
            raise ValueError(
                f"cannot bind to {address!r} ({exc}); give an address such as "
                f"tcp://127.0.0.1:5002 (tcp://127.0.0.1:* picks a free port)"
            ) from None
        return router

    # ------------------------------------------------------------------ public

    def statistics(self) -> FramesStatistics:
        pub = self._pub
        return FramesStatistics(
            served=self._counts["served"],
            requests=self._counts["requests"],
            waiting=len(self._waiting),
            dropped=pub.dropped if pub is not None else 0,
            unheard=pub.unheard if pub is not None else 0,
            missing_values=self.values.missing,
            failures=self._counts["failures"],
        )

    def run(self) -> None:
        """Serve until ``stop()``."""
        if self.mode == "pub":
            self._publish()
        else:
            self._answer()

    def start(self) -> FramesBridge:
        """Run in a thread of its own; returns self."""
        self._thread = threading.Thread(target=self._run_logged, name="frames-bridge", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the frame in hand (from any thread)."""
        self._stop.stop()
        if self._pub is not None:
            self._pub.stop()

    def close(self) -> None:
        """Stop, wait for the thread, let go of the socket (replies handed to 0MQ still go
        out) and of the bus if the bridge made it; re-raises what failed the thread."""
        self.stop()
        if self._thread is not None:
            self._thread.join()
        self._release()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def __enter__(self) -> FramesBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ rep, karabo

    def _run_logged(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            log.exception("frames bridge failed")
            self._failure = exc

    def _answer(self) -> None:
        """Take requests; answer each waiting one with the next frame of the share. Right
        after a reply, the next frame is made ready before its request comes; a frame ready
        for ``HOLD_S`` with no request goes back to the share (another member may serve it)."""
        assert self._router is not None and self._share is not None
        router, share = self._router, self._share
        held_at = ready_until = 0.0
        while not self._stop.stopped:
            now = time.monotonic()
            ready_next = self._held is None and now < ready_until
            self._take_requests(0 if self._waiting or ready_next else 10 if self._held else 50)
            now = time.monotonic()
            if self._held is None and (self._waiting or now < ready_until):
                try:
                    claim = share.claim(timeout=0.05 if self._waiting else 0.0)
                except databus.ServerUnavailable as exc:
                    log.warning("frames wait for the bus: %s", exc)
                    time.sleep(0.5)
                    continue
                if claim is not None:
                    self._held, held_at = self._prepared(claim), now
            if self._held is not None and self._waiting:
                claim, parts = self._held
                if self._reply(router, parts):
                    self._held = None
                    share.done(claim, later=True)  # sent with the claim that follows
                    ready_until = time.monotonic() + HOLD_S
            elif self._held is not None and now - held_at > HOLD_S:
                self._give_back()
        self._give_back()

    def _give_back(self) -> None:
        """Return the frame made ready and not sent to the share."""
        if self._held is not None and self._share is not None:
            self._share.release(self._held[0])
            self._held = None

    def _take_requests(self, timeout_ms: int) -> None:
        assert self._router is not None
        if not self._router.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                message = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._counts["requests"] += 1
            if b"" not in message:
                log.warning("a request without a REQ envelope was ignored: %r", message[:2])
                continue
            cut = message.index(b"") + 1
            envelope, body = message[:cut], message[cut:]
            if self.mode == "karabo" and body != [b"next"]:
                log.warning("karabo request %r is not b'next': answered with an error", body)
                self._reply_once(envelope, [b"Error: bad request, expected b'next'"])
                continue
            self._waiting.append(envelope)

    def _reply(self, router: zmq.Socket, parts: list[Any]) -> bool:
        """Send ``parts`` to the oldest waiting request whose client is still there;
        False if none is."""
        while self._waiting:
            envelope = self._waiting.popleft()
            if self._reply_once(envelope, parts):
                self._counts["served"] += 1
                return True
        return False

    def _reply_once(self, envelope: list[bytes], parts: list[Any]) -> bool:
        assert self._router is not None
        try:
            self._router.send_multipart([*envelope, *parts], copy=False)
            return True
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            log.info("a client left before its reply: the frame goes to the next request")
            return False

    def _prepared(self, claim: databus.Claim) -> tuple[databus.Claim, list[Any]] | None:
        """``claim`` with its reply's parts; None (acknowledged, counted) for a frame that
        cannot be read or encoded: it will never be servable."""
        try:
            return claim, self._message(claim.scan, claim.channel, claim.first)
        except (databus.DataExpired, databus.EndOfData, databus.CorruptEntry, ValueError,
                TypeError, OSError) as exc:  # fmt: skip
            self._counts["failures"] += 1
            log.error("frame %d of %s not served: %s", claim.first, claim.scan.key, exc)
            assert self._share is not None
            self._share.done(claim)
            return None

    def _message(self, scan: databus.ScanNode, channel: databus.ChannelNode, index: int) -> Any:
        """The reply (rep: one part; karabo: parts) or the published message of a frame. A
        frame CrystFEL reads as stored is read straight into its message."""
        scalars = self.values.scalars(scan, index)
        peaks = self.values.peak_list(scan, index)
        if self.mode == "karabo":
            return self._karabo(scan, _frame(channel, index), index, scalars, peaks)
        stored = channel.dtype
        if channel.desc.kind == "array" and stored and self.encoder.sends_as_stored(stored):
            packed, pixels = self.encoder.message(
                channel.shape,
                stored,
                frame_index=index,
                scan_key=scan.key,
                scan_number=scan.number,
                scalars=scalars,
                peaks=peaks,
            )
            channel.read_into(pixels, index)
        else:
            packed = self.encoder.encode(
                _frame(channel, index),
                frame_index=index,
                scan_key=scan.key,
                scan_number=scan.number,
                scalars=scalars,
                peaks=peaks,
            )
        return [packed] if self.mode == "rep" else [self.topic, packed]

    def _karabo(
        self, scan: databus.ScanNode, frame: np.ndarray, index: int, scalars: dict, peaks: Any
    ) -> list[Any]:
        data: dict[str, Any] = {
            self.encoder.image_key: frame,
            self.encoder.frame_index_key: index,
            self.encoder.scan_number_key: scan.number,
            self.encoder.scan_key_key: scan.key,
            **scalars,
        }
        if peaks is not None:
            data.update({"peak_list.fs": peaks.fs, "peak_list.ss": peaks.ss})
            data["peak_list.intensity"] = peaks.intensity
        self._train = max(self._train + 1, _train_id())
        return karabo_message(self.source, data, time.time(), self._train)

    # ------------------------------------------------------------------ pub

    def _publish(self) -> None:
        """Follow the session; publish each frame of the channel to every subscriber."""
        assert self._pub is not None
        for event in self.session.follow(stop_handler=self._stop):
            if event.type is not EventType.NEW_DATA or event.node.name != self.channel:
                continue
            data = event.data
            for offset in range(data.block_size):
                index = data.first_index + offset
                try:
                    parts = self._message(event.node.scan, event.node, index)
                except (databus.DataExpired, databus.EndOfData, ValueError, TypeError,
                        OSError) as exc:  # fmt: skip
                    self._counts["failures"] += 1
                    log.error("frame %d of %s not published: %s", index, event.node.scan.key, exc)
                    continue
                if self._pub.send(parts):
                    self._counts["served"] += 1
                if self._stop.stopped:
                    return

    def _release(self) -> None:
        if self._share is not None:
            self._share.close()
            self._share = None
        if self._router is not None:
            self._router.close()
            self._router = None
        if self._pub is not None:
            self._pub.close()  # kept: its counts stay readable
        self._context.term()
        if self._own_bus:
            self.bus.close()


def _frame(channel: databus.ChannelNode, index: int) -> np.ndarray:
    """Point ``index`` of ``channel``; ValueError unless it is an array."""
    frame = channel.get(index)
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"channel {channel.name!r} has no array points (got {type(frame)})")
    return frame


def _train_id() -> int:
    """A train ID that grows across restarts of the bridge: microseconds since 2020."""
    return int((time.time() - 1_577_836_800) * 1e6)


def main(argv: Sequence[str] | None = None) -> int:
    """``databus bridge frames ...`` (see the module docstring)."""
    parser = argument_parser("frames", __doc__)
    parser.add_argument("--channel", required=True, help="the frames' channel (e.g. sim_det:image)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--rep", metavar="ADDR", help="answer CrystFEL's REQ (--zmq-request)")
    where.add_argument("--pub", metavar="ADDR", help="publish to SUBs (--zmq-subscribe, OnDA)")
    where.add_argument("--karabo", metavar="ADDR", help="answer karabo_bridge.Client's next()")
    parser.add_argument("--topic", default="ondaframedata", help="--pub's topic")
    parser.add_argument("--key", default=None, help="the image's key (default detector_data)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--from-info", action="append", default=[], metavar="KEY=INFO_KEY")
    parser.add_argument("--from-channel", action="append", default=[], metavar="KEY=CHANNEL")
    parser.add_argument("--peaks", default=None, metavar="CHANNEL", help="peak lists per point")
    parser.add_argument("--dtype", choices=("f4", "i4"), default=None, help="image type sent")
    parser.add_argument("--group", default=None, help="the point share (crystfel / karabo)")
    parser.add_argument("--consumer", default=None, help="this member's name in the group")
    parser.add_argument("--from-scan", type=int, default=None, help="a new group's first scan")
    parser.add_argument("--hwm", type=int, default=2, help="frames queued per client")
    parser.add_argument("--source", default=None, help="karabo source name")
    args = parser.parse_args(argv)
    keep_freed_memory()
    mode: Mode = "rep" if args.rep else "pub" if args.pub else "karabo"
    address = args.rep or args.pub or args.karabo

    def build(bus: databus.Bus) -> FramesBridge:
        constants = {k: constant(v) for k, v in parse_assignments("--set", args.set).items()}
        return FramesBridge(
            args.session,
            args.channel,
            mode=mode,
            address=address,
            topic=args.topic,
            key=args.key,
            constants=constants,
            from_info=parse_assignments("--from-info", args.from_info),
            from_channel=parse_assignments("--from-channel", args.from_channel),
            peaks=args.peaks,
            dtype=args.dtype,
            group=args.group,
            consumer=args.consumer,
            first_scan=args.from_scan,
            hwm=args.hwm,
            source=args.source,
            bus=bus,
        )

    def banner(bridge: FramesBridge) -> str:
        return f"frames of {args.channel} in session {args.session}: {mode} at {bridge.address}"

    def summary(bridge: FramesBridge) -> str:
        s = bridge.statistics()
        return (
            f"{s.served} frames served, {s.requests} requests ({s.waiting} unanswered), "
            f"{s.dropped} dropped, {s.unheard} unheard, {s.missing_values} values missing, "
            f"{s.failures} failures"
        )

    return serve("frames", args.url, build, banner, summary)
