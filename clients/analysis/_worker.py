"""One worker process of an analysis: claims ranges of point indices from the analysis'
point share, reads the asked channels for the range (one read per channel; each event's
data is a view into that block), calls the worker's ``process_event`` per index, and
records the results with the claim in one transaction (``PointShare.record``).

A worker that raises for an event, or returns what cannot be sent, costs that event only:
the error is logged and sent to the reducer with its event number, and the scan goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any

import msgpack

import databus

from .._points import points_when_there
from ._events import Event
from ._parameters import Parameters
from ._payloads import pack_payload

log = logging.getLogger(__name__)

#: A claimed range and its data per stream (or why it could not be read).
_Fetched = tuple[databus.Claim, "dict[str, Any] | str"]
#: How long (s) a worker waits for the other channels' points of a claimed range.
VALUE_WAIT = 10.0


def share_group(analysis: str) -> str:
    """The point share (and results) of analysis ``analysis``."""
    return f"analysis:{analysis}"


def describe(cls: type) -> list[Any]:
    """The parameters a worker class declares (none without ``describe_parameters``)."""
    describe_parameters = getattr(cls, "describe_parameters", None)
    return list(describe_parameters()) if describe_parameters is not None else []


class WorkerRunner:
    """Runs ``worker_class`` on the points of ``channels`` (stream name -> channel name;
    the first one's points are shared) in ``session``'s scans, as member ``consumer`` of
    analysis ``analysis``. ``run(stop)`` until ``stop`` is set; the claim in hand is
    finished first."""

    def __init__(
        self,
        bus: databus.Bus,
        session: str,
        analysis: str,
        worker_class: type,
        channels: Mapping[str, str],
        *,
        consumer: str | None = None,
        batch: int = 16,
        claim_after: float = 30.0,
        first_scan: int | None = None,
    ) -> None:
        if not channels:
            raise ValueError("an analysis reads at least one channel (--channels)")
        self.channels = dict(channels)
        self.parameters = Parameters(bus, analysis, describe(worker_class))
        self.worker = worker_class()
        self.share = bus.session(session).share(
            next(iter(self.channels.values())),
            share_group(analysis),
            consumer=consumer,
            batch=batch,
            claim_after=claim_after,
            first_scan=first_scan,
        )
        self.name = self.share.consumer
        self.events = 0  #: events processed
        self.errors = 0  #: events whose process_event raised, or whose result cannot be sent
        self._started: dict[str, databus.ScanNode] = {}

    def run(self, stop: threading.Event) -> None:
        """Process claims until ``stop`` is set. A reader thread claims the next range and
        reads its data while this one is processed (the reads wait on the server, not on
        the CPU), so one claim is held ahead; both go back to the group if this process
        dies, and the one read ahead is released at a clean stop."""
        ahead: queue.Queue[_Fetched | None] = queue.Queue(maxsize=1)
        reader = threading.Thread(target=self._read_ahead, args=(stop, ahead), daemon=True)
        reader.start()
        try:
            while not stop.is_set() or not ahead.empty():
                try:
                    fetched = ahead.get(timeout=0.2)
                except queue.Empty:
                    self._end_scans()
                    continue
                if fetched is None:
                    break
                claim, blocks = fetched
                if stop.is_set():
                    self.share.release(claim)
                    continue
                self.share.record(claim, self._process(claim, blocks))
        finally:
            stop.set()
            reader.join()
            while not ahead.empty():
                fetched = ahead.get()
                if fetched is not None:
                    self.share.release(fetched[0])
            self._end_scans(all_of_them=True)
            self.share.close()
            self.parameters.close()

    def _read_ahead(self, stop: threading.Event, ahead: queue.Queue[_Fetched | None]) -> None:
        """Claim ranges and read their data, one ahead of the processing."""
        try:
            while not stop.is_set():
                claim = self.share.claim(timeout=0.2)
                if claim is None:
                    continue
                fetched = (claim, self._blocks(claim))
                while True:
                    try:
                        ahead.put(fetched, timeout=0.2)
                        break
                    except queue.Full:
                        if stop.is_set():
                            self.share.release(claim)
                            return
        except Exception:
            log.exception("worker %s cannot claim", self.name)
            ahead.put(None)
            raise

    def _blocks(self, claim: databus.Claim) -> dict[str, Any] | str:
        """The data of every stream for the claimed range, or why it cannot be read."""
        try:
            return {
                stream: points_when_there(claim.scan, name, claim.first, claim.stop - 1, VALUE_WAIT)
                for stream, name in self.channels.items()
            }
        except (databus.DataExpired, databus.NotYetPublished, databus.EndOfData) as exc:
            return f"{type(exc).__name__}: {exc}"

    def _process(self, claim: databus.Claim, blocks: dict[str, Any] | str) -> bytes:
        """The record of one claim: its results and errors, packed."""
        scan = claim.scan
        if scan.key not in self._started:
            self._started[scan.key] = scan
            self._call("on_scan_start", scan)
        results: list[list[Any]] = []
        errors: list[list[Any]] = []
        if isinstance(blocks, str):
            last = claim.stop - 1
            log.error("events %d..%d of %s not processed: %s", claim.first, last, scan.key, blocks)
            self.errors += claim.stop - claim.first
            return _packed(self.name, [], [[i, blocks] for i in claim.indices])
        for offset, index in enumerate(claim.indices):
            event = Event(index, scan, {name: block[offset] for name, block in blocks.items()})
            snapshot = self.parameters.snapshot()
            self.events += 1
            try:
                payload = self.worker.process_event(event, parameters=snapshot.parameters)
                if payload is None:
                    continue
                packed = pack_payload(payload, where=f"event {index} of {scan.key}")
            except Exception as exc:
                self.errors += 1
                why = f"{type(exc).__name__}: {exc}"
                log.error("event %d of %s: %s", index, scan.key, why)
                errors.append([index, why])
                continue
            results.append([index, snapshot.hash, packed])
        return _packed(self.name, results, errors)

    def _end_scans(self, all_of_them: bool = False) -> None:
        """Call ``on_scan_end`` for the scans this worker started that have ended."""
        for key, scan in list(self._started.items()):
            try:
                ended = all_of_them or scan.refresh().state >= databus.ScanState.ENDED
            except databus.UnknownScan:
                ended = True
            if ended:
                del self._started[key]
                self._call("on_scan_end", scan)

    def _call(self, hook: str, scan: databus.ScanNode) -> None:
        method = getattr(self.worker, hook, None)
        if method is None:
            return
        try:
            method(scan, parameters=self.parameters.snapshot().parameters)
        except Exception:
            log.exception("%s of %s failed", hook, scan.key)


def _packed(worker: str, results: list[list[Any]], errors: list[list[Any]]) -> bytes:
    """One claim's record: ``w`` the worker, ``r`` [event, parameters hash, payload],
    ``e`` [event, error]."""
    return msgpack.packb({"w": worker, "r": results, "e": errors}, use_bin_type=True)


def unpack_record(data: bytes) -> tuple[str, list[list[Any]], list[list[Any]]]:
    """(worker, results, errors) of a claim's record."""
    record = msgpack.unpackb(data, raw=False)
    return record["w"], record["r"], record["e"]


def parse_channels(text: str) -> dict[str, str]:
    """``--channels a,xrd=sim_det:image``: stream name -> channel name (a channel is its
    own stream name unless ``NAME=`` renames it); ValueError for none or a repeated name."""
    streams: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        stream, sep, channel = item.partition("=")
        stream, channel = (stream, channel) if sep else (item, item)
        if not stream or not channel or stream in streams:
            raise ValueError(f"--channels: {item!r} is empty or names a stream twice")
        streams[stream] = channel
    if not streams:
        raise ValueError("--channels names at least one channel (a,b or xrd=sim_det:image)")
    return streams
