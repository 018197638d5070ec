"""``databus capture``: write what the bus carries for a session's scans to a file, as it
flows (the format: ``_format.py``, ``docs/capture-format.md``).

    databus capture --session S [--scan N ...] [--follow] [--embed-refs] -o FILE [--url URL]

Without ``--scan`` and ``--follow``: every scan of the session still in the bus. ``--scan``
names scans by number. ``--follow`` adds the scans running now and every scan created
later, until SIGINT or SIGTERM. Without ``--follow`` the command returns once the scans it
captures have ended. Records are written as the scans' events come (by a thread, which
hands them to the system whenever it has caught up), so a capture killed outright is
readable up to its last complete record (``databus replay --partial``); memory stays
bounded (nothing of a scan is held, at most ``QUEUE_BYTES`` wait to be written).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import databus
from databus._errors import redact

from .._malloc import keep_freed_memory
from ._files import BackgroundWriter, CaptureWriter
from ._format import (
    ChannelDeclared,
    PointsLost,
    PointsSent,
    ScanCut,
    ScanEnded,
    ScanStarted,
    StateChanged,
    split_block,
)

log = logging.getLogger(__name__)

#: Least time between two reads of a scan's log while it is prepared but not started.
STATE_CHECK_S = 0.05
_STATES = ((databus.ScanState.PREPARED, "prepared"), (databus.ScanState.STARTED, "started"))


@dataclasses.dataclass(frozen=True)
class CaptureStatistics:
    """What a capture wrote: ``scans`` taken up, ``ended`` of them, data ``points``,
    ``bytes`` of the file, ``unembedded`` frames of file references that could not be
    read (with ``embed_refs``: the references are written alone), ``seconds`` since it
    began."""

    scans: int
    ended: int
    points: int
    bytes: int
    unembedded: int
    seconds: float


@dataclasses.dataclass
class _Scan:
    """A scan being captured."""

    key: str
    origin: float  # monotonic time of its ``scan`` record
    states: set[str] = dataclasses.field(default_factory=set)
    checked: float = 0.0  # monotonic time its log was last read for states

    def t(self) -> float:
        return time.monotonic() - self.origin


class Capture:
    """Follows ``session``'s scans on ``bus`` and writes them to the new file ``path``.

    ``scans``: the numbers to capture (None: every scan in the bus now, or with ``follow``
    none of the ended ones); ``follow``: also the scans running now and every scan created
    later, until ``stop()``; ``embed_refs``: read the frames a ref channel's ``FileRef``s
    name and write them too. ``run()`` captures, ``stop()`` (from another thread or a
    signal handler) ends it cleanly: scans not ended get a ``cut`` record.

    Raises ``UnknownScan`` naming the scans asked for that the bus no longer holds (or
    when, without ``follow``, there is nothing to capture), ``ValueError`` for an empty
    ``scans``, ``FileExistsError`` if ``path`` exists.
    """

    def __init__(
        self,
        bus: databus.Bus,
        session: str,
        path: str | os.PathLike[str],
        *,
        scans: Sequence[int] | None = None,
        follow: bool = False,
        embed_refs: bool = False,
    ) -> None:
        self.bus = bus
        self.session = bus.session(session)
        self.follow = follow
        self.embed_refs = embed_refs
        present = {node.number: node for node in self.session.scans()}
        self._present = {node.db_name for node in present.values()}
        if scans is not None:
            if not scans:
                raise ValueError("scans=[] selects no scan: pass None to capture every scan")
            missing = sorted(set(scans) - set(present))
            if missing:
                held = ", ".join(map(str, sorted(present))) or "none"
                raise databus.UnknownScan(
                    f"session {session!r} has no scan {', '.join(map(str, missing))} in the "
                    f"bus (expired, evicted or never made); it holds scans: {held}"
                )
            targets = {present[n].db_name for n in scans}
        elif follow:
            targets = {n.db_name for n in present.values() if n.state < databus.ScanState.ENDED}
        else:
            targets = set(self._present)
            if not targets:
                raise databus.UnknownScan(
                    f"session {session!r} has no scan in the bus: nothing to capture "
                    f"(--follow waits for new ones)"
                )
        self._targets = targets
        self._remaining = set(targets)
        self._scans: dict[str, _Scan] = {}
        self._stop = databus.StopHandler()
        self._points = 0
        self._ended = 0
        self._unembedded = 0
        source = {
            "session": session,
            "scans": None if scans is None else sorted(set(scans)),
            "follow": follow,
            "embed_refs": embed_refs,
            "url": redact(bus.url),
            "prefix": bus.settings.prefix,
            "host": socket.gethostname(),
        }
        self._file = CaptureWriter(path, source, databus.__version__)
        self.path = self._file.path

    def _takes(self, key: str) -> bool:
        """Whether scan ``key`` is captured."""
        return key in self._targets or (self.follow and key not in self._present)

    def _wanted(self, node: Any) -> bool:
        scan = node if isinstance(node, databus.ScanNode) else node.scan
        return self._takes(scan.db_name)

    def _unwanted_scan(self, node: Any) -> bool:
        return isinstance(node, databus.ScanNode) and not self._takes(node.db_name)

    def stop(self) -> None:
        """End the capture after the read in progress (within 0.1 s): thread- and
        signal-safe."""
        self._stop.stop()

    def run(self) -> CaptureStatistics:
        """Capture until the scans have ended (or, with ``follow``, until ``stop()``),
        then close the file; the statistics of what was written. Call it once."""
        self._writer = BackgroundWriter(self._file)
        try:
            if self._remaining or self.follow:
                events = self.session.follow(
                    replay=True,
                    include_filter=self._wanted,
                    exclude_children=self._unwanted_scan,
                    stop_handler=self._stop,
                )
                for event in events:
                    self._on(event)
                    if self._stop.stopped or not (self._remaining or self.follow):
                        break
        finally:
            try:
                for scan in self._scans.values():
                    self._writer.write(ScanCut(scan.key, scan.t()))
            finally:
                self._writer.close()
        return self.statistics()

    def statistics(self) -> CaptureStatistics:
        return CaptureStatistics(
            len(self._scans) + self._ended,
            self._ended,
            self._points,
            self._file.bytes,
            self._unembedded,
            time.monotonic() - self._file.origin,
        )

    # ------------------------------------------------------------------ events

    def _on(self, event: databus.Event) -> None:
        kind, node = event.type, event.node
        if kind is databus.EventType.NEW_NODE and isinstance(node, databus.ScanNode):
            self._started(node)
            return
        scan = self._scans[(node if isinstance(node, databus.ScanNode) else node.scan).db_name]
        if kind is databus.EventType.NEW_NODE:
            self._writer.write(ChannelDeclared(scan.key, scan.t(), node.desc.as_dict()))
        elif kind is databus.EventType.PREPARED_SCAN:
            self._states(scan, node)
        elif kind is databus.EventType.NEW_DATA:
            if "started" not in scan.states and time.monotonic() - scan.checked > STATE_CHECK_S:
                self._states(scan, node.scan)
            self._data(scan, node, event.data)
        elif kind is databus.EventType.GAP:
            gap = event.data
            self._writer.write(
                PointsLost(
                    scan.key, scan.t(), node.name, gap.first_index, gap.block_size, gap.reason
                )
            )
        elif kind is databus.EventType.END_SCAN:
            if "started" not in scan.states:
                self._states(scan, node)
            end = event.data
            info = dict(node.info)
            self._writer.write(ScanEnded(scan.key, scan.t(), str(end.reason), end.error, info))
            del self._scans[scan.key]
            self._remaining.discard(scan.key)
            self._ended += 1

    def _started(self, node: databus.ScanNode) -> None:
        now = time.monotonic()
        scan = _Scan(node.db_name, now)
        self._scans[scan.key] = scan
        self._writer.write(
            ScanStarted(
                scan.key,
                0.0,
                self.session.name,
                node.number,
                dict(node.info),
                node.created,
                now - self._file.origin,
                node.state < databus.ScanState.ENDED,
            )
        )

    def _states(self, scan: _Scan, node: databus.ScanNode) -> None:
        """A ``state`` record for each state the scan's log shows that is not written yet
        (the walk announces PREPARED and STARTED as one PREPARED_SCAN)."""
        scan.checked = time.monotonic()
        reached = node.state_times()
        for state, name in _STATES:
            if state in reached and name not in scan.states:
                scan.states.add(name)
                self._writer.write(StateChanged(scan.key, scan.t(), name))

    def _data(self, scan: _Scan, node: databus.ChannelNode, data: databus.EventData) -> None:
        first, count, t = data.first_index, data.block_size, scan.t()
        self._points += count
        if node.desc.kind == "array":
            for at, part in split_block(data.data, first):
                self._writer.write(PointsSent(scan.key, t, node.name, at, len(part), part))
            return
        frames = None
        if node.desc.kind == "ref" and self.embed_refs:
            try:
                frames = node.get(first, first + count - 1)
            except (databus.DatabusError, OSError, ValueError) as exc:
                self._unembedded += count
                log.warning(
                    "scan %s channel %r: frames %d..%d not embedded: %s",
                    scan.key,
                    node.name,
                    first,
                    first + count - 1,
                    exc,
                )
        self._writer.write(PointsSent(scan.key, t, node.name, first, count, data.data, frames))


def main(argv: Sequence[str] | None = None) -> int:
    """``databus capture``; exit 2 for what it refuses to start with, 1 if it failed."""
    parser = argparse.ArgumentParser(
        prog="databus capture",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--session", required=True)
    parser.add_argument(
        "--scan", type=int, nargs="+", action="extend", metavar="N", help="scan numbers"
    )
    parser.add_argument("--follow", action="store_true", help="also new scans, until SIGINT")
    parser.add_argument(
        "--embed-refs", action="store_true", help="write the frames file references name"
    )
    parser.add_argument("-o", "--output", required=True, help="the capture file (must be new)")
    parser.add_argument("--url", default=None, help="the bus (default: DATABUS_URL or local)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    keep_freed_memory()
    try:
        bus = databus.connect(args.url)
    except (ValueError, databus.DatabusError) as exc:
        print(f"databus capture: error: {exc}", file=sys.stderr)
        return 2
    try:
        try:
            capture = Capture(
                bus,
                args.session,
                args.output,
                scans=args.scan,
                follow=args.follow,
                embed_refs=args.embed_refs,
            )
        except (ValueError, OSError, databus.DatabusError) as exc:
            print(f"databus capture: error: {exc}", file=sys.stderr)
            return 2
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: capture.stop())
        what = "new scans too, until SIGINT" if args.follow else "until they end"
        print(f"capture: session {args.session} into {capture.path} ({what})", flush=True)
        try:
            stats = capture.run()
        except Exception as exc:
            log.error("capture stopped: %s: %s", type(exc).__name__, exc)
            return 1
    finally:
        bus.close()
    unembedded = f", {stats.unembedded} frames not embedded" if stats.unembedded else ""
    print(
        f"capture: {stats.scans} scan(s) ({stats.ended} ended), {stats.points} points, "
        f"{stats.bytes / 1e6:.1f} MB in {stats.seconds:.2f} s{unembedded}",
        flush=True,
    )
    return 0
