"""``databus replay``: publish the scans of a capture again, as new scans of a session.

    databus replay FILE --session S2 [--speed 1|10|max] [--scan N ...] [--partial] [--url URL]

Each captured scan becomes a new scan of S2 (its own number; its info as captured, with
``replayed_from``: file, session, scan number and key it came from), made with the public
publisher API: its channels declared as captured, prepared and started, its points sent
in the blocks they came in, its gaps made with ``ChannelWriter.skip`` (readers get a GAP;
its reason is ``dropped`` whatever the original's was), file references sent as they were,
and ended with the captured reason, error and final info (a scan that was ``lost`` ends
``interrupted``: publishers cannot end a scan ``lost``). ``--speed 1`` keeps the captured
pace (``10``: ten times faster), ``max`` publishes as fast as the bus takes it. A scan the
capture stopped before its end (or a killed capture's last ones) ends ``interrupted``.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import databus
from databus._scan_info import identity

from .._malloc import keep_freed_memory
from ._files import CaptureReader, read_capture
from ._format import (
    ChannelDeclared,
    PointsLost,
    PointsSent,
    Record,
    ScanCut,
    ScanEnded,
    ScanStarted,
    StateChanged,
)
from ._pace import Pace, check_speed, parse_speed
from .dranspose import is_cbors, replay_cbors

#: The scan-info keys a publisher sets itself (number, session, key): not replayed.
IDENTITY_KEYS = frozenset(identity("", 0, ""))
#: The scan-info key naming a replayed scan's source.
REPLAYED_FROM = "replayed_from"


def _replayable_info(info: dict[str, Any]) -> dict[str, Any]:
    """A captured scan's info without the keys the publisher of its replay sets anew."""
    return {k: v for k, v in info.items() if k not in IDENTITY_KEYS}


@dataclasses.dataclass
class _Open:
    """A scan being replayed: the publisher's scan, its channels, its source."""

    scan: databus.Scan
    at: float  # the captured scan's start, in seconds since the capture began
    source: dict[str, Any]
    writers: dict[str, databus.ChannelWriter] = dataclasses.field(default_factory=dict)


class Replay:
    """Publishes the scans of capture ``path`` again as new scans of ``session`` on
    ``bus``: see ``replay()``; ``run()`` does it, ``stop()`` (another thread, a signal)
    ends the scans in progress as ``interrupted`` and returns. ``reader`` is the open
    capture (its ``incomplete_bytes`` after a ``partial_ok`` run)."""

    def __init__(
        self,
        bus: databus.Bus,
        path: str | Path,
        session: str,
        *,
        speed: float | None = 1.0,
        scans: Sequence[int] | None = None,
        partial_ok: bool = False,
    ) -> None:
        self.speed = check_speed(speed)
        self.session = bus.session(session)
        self.path = str(Path(path).resolve())
        self._wanted = None if scans is None else set(scans)
        self.reader: CaptureReader = read_capture(path, partial_ok=partial_ok)
        if self._wanted is not None:
            held = self.reader.scans()
            missing = sorted(self._wanted - set(held))
            if missing:
                self.reader.close()
                raise ValueError(
                    f"{path} holds no scan {', '.join(map(str, missing))}; it holds scans "
                    f"{', '.join(map(str, sorted(held))) or 'none'}"
                )
        self._stopped = threading.Event()
        self._open: dict[str, _Open] = {}
        self._numbers: list[int] = []
        self._pace = Pace(self.speed, sleep=self._stopped.wait)

    def stop(self) -> None:
        """End the replay at the next record (or at once, if it waits for its pace)."""
        self._stopped.set()

    def run(self) -> list[int]:
        """Replay; the numbers of the new scans, in the order they were created."""
        try:
            with self.reader:
                for record in self.reader:
                    if self._stopped.is_set():
                        break
                    self._replay(record)
        except BaseException as exc:
            self._end_all(f"the replay failed: {type(exc).__name__}: {exc}")
            raise
        self._end_all(
            "the replay was stopped"
            if self._stopped.is_set()
            else "the capture ended before this scan did"
        )
        return list(self._numbers)

    def _end_all(self, why: str) -> None:
        for scan in list(self._open.values()):
            if scan.scan.state is not databus.ScanState.ENDED:
                scan.scan.end("interrupted", error=why)
        self._open.clear()

    def _replay(self, record: Record) -> None:
        if isinstance(record, ScanStarted):
            if self._wanted is None or record.number in self._wanted:
                self._pace.wait(record.at)
                self._start(record)
            return
        scan = self._open.get(record.scan)
        if scan is None:
            return  # a scan not asked for
        self._pace.wait(scan.at + record.t)
        if isinstance(record, ChannelDeclared):
            d = record.descriptor
            scan.writers[record.name] = scan.scan.channel(
                record.name,
                d.get("dtype"),
                d.get("shape") or (),
                unit=d.get("unit"),
                kind=d.get("kind", "array"),
                lossy=bool(d.get("lossy")),
                attrs=d.get("attrs") or None,
                copy=False,  # arrays are read-only views of the file: sent without a copy
            )
        elif isinstance(record, StateChanged):
            if record.state == "prepared":
                scan.scan.prepare()
            else:
                scan.scan.start()
        elif isinstance(record, (PointsSent, PointsLost)):
            writer = scan.writers[record.channel]
            if record.first > len(writer):  # points the capture never saw (skipped entries)
                writer.skip(record.first - len(writer))
            if isinstance(record, PointsLost):
                writer.skip(record.count)
            elif isinstance(record.data, list):
                writer.extend(record.data)
            else:
                writer.send(record.data)
        elif isinstance(record, ScanEnded):
            self._end(scan, record)
        elif isinstance(record, ScanCut):
            scan.scan.end("interrupted", error="the capture stopped before the scan ended")
            del self._open[record.scan]

    def _start(self, record: ScanStarted) -> None:
        source = {
            "file": self.path,
            "session": record.session,
            "scan": record.number,
            "key": record.scan,
        }
        info = {**_replayable_info(record.info), REPLAYED_FROM: source}
        scan = self.session.create_scan(info)
        self._open[record.scan] = _Open(scan, record.at, source)
        self._numbers.append(scan.number)

    def _end(self, scan: _Open, record: ScanEnded) -> None:
        reason, error = record.reason, record.error
        if reason == databus.EndReason.LOST.value:
            reason, error = "interrupted", f"the original scan was lost: {error}"
        info = {**_replayable_info(record.info), REPLAYED_FROM: scan.source}
        scan.scan.end(reason, error, info=info)
        del self._open[record.scan]


def replay(
    bus: databus.Bus,
    path: str | Path,
    session: str,
    *,
    speed: float | None = 1.0,
    scans: Sequence[int] | None = None,
    partial_ok: bool = False,
) -> list[int]:
    """Publish the scans of capture ``path`` (those numbered ``scans``: None for all) as
    new scans of ``session`` on ``bus``, at ``speed`` times the captured pace (None: as
    fast as the bus takes them); the new scans' numbers, in order. Returns once every scan
    has ended (its points acknowledged by the server).

    Raises ``CaptureError`` for a file that is no capture, of a newer version, or corrupt
    (naming the byte offset; scans in progress then end ``interrupted``), or that a killed
    capture left without its closing record unless ``partial_ok``; ``ValueError`` for a
    bad ``speed`` or a scan number the capture does not hold (before anything is sent).
    """
    return Replay(bus, path, session, speed=speed, scans=scans, partial_ok=partial_ok).run()


def main(argv: Sequence[str] | None = None) -> int:
    """``databus replay``; exit 2 for what it refuses, 1 if the replay failed."""
    parser = argparse.ArgumentParser(
        prog="databus replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", help="a capture made by databus capture, or a dranspose dump")
    parser.add_argument("--session", required=True, help="the session to publish into")
    parser.add_argument("--speed", default="1", help="1 (default), 10... or max")
    parser.add_argument(
        "--scan", type=int, nargs="+", action="extend", metavar="N", help="captured numbers"
    )
    parser.add_argument(
        "--partial", action="store_true", help="a killed capture: up to its last record"
    )
    parser.add_argument("--url", default=None, help="the bus (default: DATABUS_URL or local)")
    args = parser.parse_args(argv)
    keep_freed_memory()
    try:
        speed = parse_speed(args.speed)
        dump = is_cbors(args.file)
        if dump and (args.scan or args.partial):
            raise ValueError("--scan and --partial are for databus captures, not dranspose dumps")
        bus = databus.connect(args.url)
    except (ValueError, OSError, databus.DatabusError) as exc:
        print(f"databus replay: error: {exc}", file=sys.stderr)
        return 2
    if dump:
        return _replay_dump(bus, args.file, args.session, speed)
    try:
        try:
            job = Replay(
                bus,
                args.file,
                args.session,
                speed=speed,
                scans=args.scan,
                partial_ok=args.partial,
            )
        except (ValueError, OSError, databus.DatabusError) as exc:
            print(f"databus replay: error: {exc}", file=sys.stderr)
            return 2
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: job.stop())
        started = time.monotonic()
        try:
            numbers = job.run()
        except (ValueError, OSError, databus.DatabusError) as exc:
            print(f"databus replay: error: {exc}", file=sys.stderr)
            return 1
    finally:
        bus.close()
    seconds = time.monotonic() - started
    print(
        f"replay: {len(numbers)} scan(s) of {args.file} into session {args.session} as "
        f"scan(s) {', '.join(map(str, numbers)) or '-'} in {seconds:.3f} s",
        flush=True,
    )
    if job.reader.incomplete_bytes:
        print(
            f"replay: the last {job.reader.incomplete_bytes} bytes of {args.file} were an "
            f"incomplete record (the capture was killed while writing it), left out",
            flush=True,
        )
    elif not job.reader.complete:
        print(f"replay: {args.file} has no closing record (the capture was killed)", flush=True)
    return 0


def _replay_dump(bus: databus.Bus, path: str, session: str, speed: float | None) -> int:
    """``databus replay`` of a dranspose dump (``dranspose.replay_cbors``)."""
    started = time.monotonic()
    try:
        numbers = replay_cbors(bus, path, session, speed=speed)
    except (ValueError, OSError, databus.DatabusError) as exc:
        print(f"databus replay: error: {exc}", file=sys.stderr)
        return 1
    finally:
        bus.close()
    print(
        f"replay: {len(numbers)} series of the dranspose dump {path} into session {session} "
        f"as scan(s) {', '.join(map(str, numbers)) or '-'} in "
        f"{time.monotonic() - started:.3f} s",
        flush=True,
    )
    return 0
