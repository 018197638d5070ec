"""The reducer of an analysis: reads what the workers recorded (``ShareResults``), gives
each event's result to a reducer of its scan exactly once and in event order, whatever
the number of workers (a result waits for the points before it; a range recorded twice,
by a member taken over while slow, is dropped), and calls ``finish`` once every point of
the ended scan is accounted for. What it publishes becomes a derived scan.

One reducer object per scan (``finish`` is called once per scan, and state kept in
``__init__`` as the tutorial does is that scan's). It gets ``scan`` (the source scan's
node) and ``publish(name, value)``: each call appends a point to channel ``name`` of the
derived scan; a mapping returned by ``process_result`` or ``finish`` is published the same
way. ``publish_info(mapping)`` adds to the derived scan's info.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

import databus
from databus._saving import PROCESSED

from ._events import Result
from ._parameters import Parameters
from ._payloads import unpack_payload
from ._worker import share_group, unpack_record

log = logging.getLogger(__name__)

#: How often (s) the scans waiting for their end are looked at.
_CHECK_S = 0.05


class DerivedScan:
    """The scan an analysis publishes for ``source``: created at the first value, in the
    same session, its info naming the source and the analysis; ended by ``end()``."""

    def __init__(self, source: databus.ScanNode, analysis: str) -> None:
        self.source, self.analysis = source, analysis
        self.scan: databus.Scan | None = None
        self._channels: dict[str, databus.ChannelWriter] = {}
        self._info: dict[str, Any] = {}

    def publish_info(self, info: Mapping[str, Any]) -> None:
        """Add ``info`` to the derived scan's info (a mesh's ``shape`` and ``motors`` for
        the writer's default plot, a table of what was found...): the scan is created with
        it, or gets it now. ``type``, ``source`` and ``analysis`` stay the analysis'."""
        self._info.update(info)
        if self.scan is not None:
            self.scan.update_info(self._own_info())

    def _own_info(self) -> dict[str, Any]:
        title = self.source.info.get("title", self.source.key)
        return {
            "title": f"{title} processed",
            "name": f"{self.source.key} processed",
            **self._info,
            "type": PROCESSED,
            "source": self.source.key,
            "analysis": self.analysis,
        }

    def publish(self, name: str, value: Any) -> None:
        """Append ``value`` (a number or an array) to channel ``name``."""
        if self.scan is None:
            session = self.source.parent
            if session is None:  # a scan node always has its session as parent
                raise databus.UnknownScan(f"scan {self.source.key} has no session")
            self.scan = self.source.bus.session(session.name).create_scan(self._own_info())
            self.scan.prepare()
            self.scan.start()
        channel = self._channels.get(name)
        if channel is None:
            array = np.asarray(value)
            channel = self.scan.channel(name, array.dtype, array.shape)
            self._channels[name] = channel
        channel.send(value)

    def publish_all(self, values: Mapping[str, Any] | None) -> None:
        for name, value in (values or {}).items():
            self.publish(name, value)

    def end(self) -> None:
        if self.scan is not None:
            self.scan.end()


class _ScanReduction:
    """One scan being reduced: its reducer, the points accounted for, and the results
    waiting for the points before them (results are given in event order)."""

    def __init__(self, node: databus.ScanNode, reducer: Any, derived: DerivedScan) -> None:
        self.node, self.reducer, self.derived = node, reducer, derived
        self.covered: set[int] = set()  #: points some worker recorded (results or not)
        self.waiting: dict[int, Result] = {}  #: results not yet given, by event
        self.next = 0  #: the first event not yet given (or skipped: no result)
        self.given = 0  #: results given to the reducer
        self.errors: list[tuple[int, str]] = []
        self.checked = 0.0

    def ready(self) -> list[Result]:
        """The results that can be given now: those of the events from ``next`` on whose
        every earlier point is accounted for, in event order."""
        out = []
        while self.next in self.covered:
            result = self.waiting.pop(self.next, None)
            if result is not None:
                out.append(result)
            self.covered.discard(self.next)
            self.next += 1
        return out


class ReducerRunner:
    """Reduces the results of analysis ``analysis`` over ``session``'s scans with a new
    ``reducer_class()`` per scan (None: results are read and dropped, scans still end).
    ``channel`` is the analysis' shared channel (its length says when a scan is all in).
    ``run(stop)`` until ``stop`` is set; ``on_finish(key, reduction)`` is told each end."""

    def __init__(
        self,
        bus: databus.Bus,
        session: str,
        analysis: str,
        reducer_class: type | None,
        channel: str,
        parameters: Parameters,
        on_finish: Callable[[str, _ScanReduction], None] | None = None,
    ) -> None:
        self.bus, self.analysis, self.channel = bus, analysis, channel
        self.reducer_class = reducer_class
        self.parameters = parameters
        self.results = bus.session(session).share_results(share_group(analysis))
        self.scans: dict[str, _ScanReduction] = {}
        self.on_finish = on_finish
        self.finished = 0  #: scans whose finish was called
        self.duplicates = 0  #: results dropped: their event was reduced already

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                for result in self.results.read(timeout=0.1):
                    self._take(result)
                self._finish_ended()
        finally:
            self.results.close()

    def _take(self, recorded: databus.ShareResult) -> None:
        reduction = self._reduction(recorded.scan)
        if reduction is None:
            return
        if recorded.stop <= reduction.next or recorded.first in reduction.covered:
            self.duplicates += recorded.stop - recorded.first  # a range recorded twice
            return
        reduction.covered.update(range(recorded.first, recorded.stop))
        if recorded.data is not None:
            worker, results, errors = unpack_record(recorded.data)
            reduction.errors += [(int(i), str(why)) for i, why in errors]
            for index, digest, packed in results:
                payload = unpack_payload(packed)
                reduction.waiting[index] = Result(index, worker, digest, payload, recorded.scan)
        for result in reduction.ready():
            reduction.given += 1
            self._call(reduction, "process_result", result)

    def _reduction(self, key: str) -> _ScanReduction | None:
        reduction = self.scans.get(key)
        if reduction is None:
            try:
                node = self.bus.scan(key)
            except databus.UnknownScan:
                log.warning("results of scan %s, which is gone, are dropped", key)
                return None
            derived = DerivedScan(node, self.analysis)
            reducer = self.reducer_class() if self.reducer_class is not None else None
            if reducer is not None:
                if not hasattr(reducer, "publish"):
                    reducer.publish = derived.publish
                if not hasattr(reducer, "publish_info"):
                    reducer.publish_info = derived.publish_info
                if not hasattr(reducer, "scan"):
                    reducer.scan = node  # the source scan: its info (a mesh's grid...)
            reduction = self.scans[key] = _ScanReduction(node, reducer, derived)
        return reduction

    def _call(self, reduction: _ScanReduction, method: str, *args: Any) -> None:
        """Call the scan's reducer; publish a mapping it returns; log what it raises."""
        function = getattr(reduction.reducer, method, None)
        if function is None:
            return
        try:
            returned = function(*args, parameters=self.parameters.snapshot().parameters)
        except Exception:
            log.exception("%s of %s failed", method, reduction.node.key)
            return
        if isinstance(returned, Mapping):
            reduction.derived.publish_all(returned)

    def _finish_ended(self) -> None:
        """``finish`` the scans that have ended and whose every point is accounted for."""
        now = time.monotonic()
        for key, reduction in list(self.scans.items()):
            if now - reduction.checked < _CHECK_S:
                continue
            reduction.checked = now
            try:
                node = reduction.node.refresh()
            except databus.UnknownScan:
                node = None
            if node is not None and node.state < databus.ScanState.ENDED:
                continue
            total = len(node.channels[self.channel]) if node is not None else 0
            if node is not None and reduction.next < total:
                continue
            self._call(reduction, "finish")
            reduction.derived.end()
            del self.scans[key]
            self.finished += 1
            self.results.trim()
            if reduction.errors:
                log.warning(
                    "analysis %s of %s: %d events failed (first: event %d, %s)",
                    self.analysis, key, len(reduction.errors), *reduction.errors[0],
                )  # fmt: skip
            if self.on_finish is not None:
                self.on_finish(key, reduction)
