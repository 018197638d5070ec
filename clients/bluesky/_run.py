"""One bluesky run published as one bus scan: its streams' channels declared as their
descriptors come (also mid-run: the SDK allows it until the scan ends), events and event
pages sent as blocks (a page of n rows is one ``send()`` per channel), file references
sent as ``FileRef``s, and the end. Runs in the publisher's worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from databus import ChannelWriter, FileRef, Scan, Session

from ._channels import (
    ChannelSpec,
    channel_name,
    channel_spec,
    end_of,
    event_field_specs,
    motor_keys,
    plain,
    scan_info,
)
from ._files import Unmapped


class Stream:
    """One descriptor's channels: per data key its writer (declared at the key's first
    value when its dtype is only known then), the event time and timestamps."""

    def __init__(self, run: RunScan, descriptor: Mapping[str, Any]) -> None:
        self.run = run
        self.name = str(descriptor.get("name", "primary"))
        data_keys = descriptor.get("data_keys") or {}
        object_keys = descriptor.get("object_keys") or {}
        motors = motor_keys(run.start, object_keys) if self.name == "primary" else set()
        self.specs: dict[str, ChannelSpec] = {}
        self.writers: dict[str, ChannelWriter] = {}
        self.refused: set[str] = set()  # keys without a channel (counted once)
        for key, data_key in data_keys.items():
            try:
                spec = channel_spec(self.name, key, data_key, channel_name(self.name, key, motors))
            except Unmapped as exc:
                run.unmapped(str(exc))
                self.refused.add(key)
                continue
            self.specs[key] = spec
            if spec.dtype is not None or spec.kind == "json":
                self._declare(key, spec)
        self.stamped = [k for k, dk in data_keys.items() if not dk.get("external")]
        time_spec, stamps_spec = event_field_specs(self.name, self.stamped)
        self.time = run.declare(time_spec)
        self.timestamps = None if stamps_spec is None else run.declare(stamps_spec)

    def _declare(self, key: str, spec: ChannelSpec) -> ChannelWriter | None:
        writer = self.run.declare(spec)
        if writer is None:
            self.refused.add(key)
        else:
            self.writers[key] = writer
        return writer

    def writer(self, key: str, first: Any) -> ChannelWriter | None:
        """The writer of ``key``, declared from ``first`` if it waited for a value; None
        for a key without a channel (a key the descriptor did not declare is counted)."""
        writer = self.writers.get(key)
        if writer is not None or key in self.refused:
            return writer
        spec = self.specs.get(key)
        if spec is None:
            self.refused.add(key)
            self.run.unmapped(f"stream {self.name!r}: data key {key!r} is not in its descriptor")
            return None
        return self._declare(key, spec.with_value(first))

    def event(self, doc: Mapping[str, Any]) -> None:
        """One event: one point per channel, or none (see ``_rows``)."""
        stamps = doc.get("timestamps") or {}
        times = np.array([doc.get("time", np.nan)], dtype=np.float64)
        columns = [[stamps.get(k, np.nan)] for k in self.stamped]
        refused = self._rows(doc, times, columns, many=False)
        if refused:
            self.run.unmapped(refused)

    def page(self, doc: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = ()) -> None:
        """An event page of n rows: one block of n points per channel, or none. ``events``:
        the events the page was packed from; if a channel refuses the page, they go one at
        a time, so only the events it refuses are left out."""
        times = np.asarray(doc["time"], dtype=np.float64)
        stamps = doc.get("timestamps") or {}
        nan = [np.nan] * len(times)
        refused = self._rows(doc, times, [stamps.get(k, nan) for k in self.stamped], many=True)
        if refused and events:
            for event in events:
                self.event(event)
        elif refused:
            self.run.unmapped(refused)

    def skip(self, rows: int) -> None:
        """``rows`` rows that will never come (dropped before publishing): a ``dropped``
        gap in every channel of the stream, so the rows after keep their indices. A key
        still waiting for its first value (no channel yet) has nothing to skip."""
        for writer in (*self.writers.values(), self.time, self.timestamps):
            if writer is not None:
                writer.skip(rows)

    def _rows(self, doc: Mapping[str, Any], times: Any, columns: list, many: bool) -> str | None:
        """Send the rows of an event (``many``: of a page) to every channel, or to none:
        every value is converted first, and one a channel refuses (wrong dtype or shape, a
        datum of no mapped resource) leaves them all out, so the stream's channels keep the
        same rows. Returns why, when refused."""
        sends: list[tuple[ChannelWriter, Any]] = []
        for key, value in (doc.get("data") or {}).items():
            if many and not len(value):
                continue
            writer = self.writer(key, value[0] if many else value)
            if writer is None:
                continue
            try:
                sends.append((writer, self._block(writer, value, many)))
            except (ValueError, TypeError) as exc:  # Unmapped, DtypeError, ShapeError...
                return f"stream {self.name!r}: {len(times)} row(s) left out: {key!r} refused: {exc}"
        for writer, block in sends:
            if writer.desc.kind == "array":
                writer.send(block)
            else:
                writer.extend(block)
        if self.time is not None:
            self.time.send(times if many else float(times[0]))
        if self.timestamps is not None:
            block = np.asarray(columns, dtype=np.float64).T.reshape(len(times), len(self.stamped))
            self.timestamps.send(block)
        return None

    def _block(self, writer: ChannelWriter, value: Any, many: bool) -> Any:
        """``value`` as the channel takes it: an array block, or a list of records or
        ``FileRef``s; raises what ``send()`` would."""
        desc = writer.desc
        values = value if many else [value]
        if desc.kind == "ref":
            refs = [self.run.datum_ref(v) for v in values]
            for ref in refs:
                problem = ref.problem()
                if problem:
                    raise ValueError(problem)
            return refs
        if desc.kind == "json":
            return list(values)
        if not many and type(value) is float and desc.dtype == np.float64 and not desc.shape:
            return value  # a Python float takes send()'s fast path
        return desc.block(np.asarray(value) if many else value)


class RunScan:
    """The scan of one run, from its ``start`` document to its ``stop``. ``unmapped`` is
    told (and counts) every part that has no bus equivalent; ``datum`` gives the
    ``FileRef`` of a datum id."""

    def __init__(
        self,
        session: Session,
        start: Mapping[str, Any],
        unmapped: Callable[[str], None],
        datum: Callable[[str], FileRef],
    ) -> None:
        self.start = start
        self.uid = str(start.get("uid"))
        self.unmapped = unmapped
        self.datum_ref = datum
        self.streams: dict[str, Stream] = {}  # by descriptor uid
        self.scan: Scan = session.create_scan(scan_info(start))
        self.scan.prepare()
        self.scan.start()

    def declare(self, spec: ChannelSpec) -> ChannelWriter | None:
        """The channel of ``spec``; None (counted) if the bus refuses it (a name taken)."""
        try:
            return self.scan.channel(
                spec.name,
                spec.dtype,
                spec.shape,
                unit=spec.unit,
                kind=spec.kind,  # type: ignore[arg-type]
                attrs=spec.attrs,
                copy=spec.copy,
            )
        except (ValueError, TypeError) as exc:  # a name taken or refused, attrs msgpack refuses
            self.unmapped(f"run {self.uid}: channel {spec.name!r} not declared: {exc}")
            return None

    def descriptor(self, doc: Mapping[str, Any]) -> Stream:
        """The stream a descriptor declares, its channels declared."""
        stream = self.streams[str(doc["uid"])] = Stream(self, doc)
        return stream

    def stream_datum(self, stream: Stream, key: str, ref: FileRef) -> None:
        """Frames of ``key`` a ``stream_datum`` says are in a file."""
        writer = stream.writer(key, None)
        if writer is None or writer.desc.kind != "ref":
            raise Unmapped(f"stream {stream.name!r}: {key!r} is not an external data key")
        writer.send(ref)

    def stop(self, doc: Mapping[str, Any]) -> None:
        """End the scan with the stop's reason; the stop document goes in its info."""
        reason, error = end_of(doc)
        self.scan.end(reason, error, info={"stop": plain(doc)})
