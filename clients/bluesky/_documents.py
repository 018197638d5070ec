"""One bus scan as an event-model 1.24 run: pure, no sockets, no Redis.

``RunDocuments(key, number, created, info, descriptors)`` is fed what a follower delivers
(``data`` for NEW_DATA, ``gap`` for GAP, ``close`` for END_SCAN) and returns the documents
to send, as ``(name, doc)`` pairs, in order. Every document passes
``event_model.schema_validators``.

start
    ``uid``: the ``uid`` in the scan info when the scan came from bluesky, else a uuid5 of
    the scan key and creation time (the same for every bridge, and after a restart);
    ``time`` = creation; ``scan_id`` = scan number; ``plan_name`` = the info's
    ``plan_name`` or ``type``; ``plan_type`` (``LiveTable`` prints it) = ``databus``;
    ``motors``, ``detectors``, ``hints.dimensions`` (one per motor, ``time`` without
    motors), ``num_points`` = ``npoints``; the info's own ``plan_name``, ``plan_type``,
    ``detectors`` and ``hints`` win (a scan that came from bluesky); the whole scan info is
    under ``databus.scan_info`` (event-model forbids ``.`` and ``/`` in nested keys: they
    become ``_``), with the scan ``key``.
data keys
    A channel's data key is its ``attrs["data_key"]`` (a run that came from bluesky), else
    its short name (after the last ``:``, ``axis:robz`` -> ``robz``) when no other channel
    of its stream has that short name, else its full name with ``:`` as ``_``. ``source``
    is ``databus:<scan key>/<channel>``; ``object_keys`` group the keys by
    ``attrs["object_name"]`` or the part of the name before its first ``:``. ``json``
    channels are strings (a record that is not a string as its JSON text).
streams
    A channel whose ``attrs`` has ``stream`` goes to that stream. Otherwise, when the
    info's ``acquisition_chain`` has several top masters, the channels listed under the
    first are ``primary`` and those under each other top master (a group with its own
    length) are a stream named after it. Everything else is ``primary``. A stream's
    descriptor goes right before its first rows (as a RunEngine sends it), or before the
    stop if it has none, so channels declared mid-run (``add_channel``) join their stream
    until then; one declared after its stream's descriptor went gets a stream of its own,
    ``<stream>_<channel>``.
events
    A row (a point index) is sent once every channel of its stream has it: an
    ``event_page`` per run of complete rows, so a follower's block becomes one page, never
    one document per point. ``seq_num`` = index + 1; event uids are
    ``<descriptor uid>/<seq_num>``. ``time`` and ``timestamps`` are when the bridge had the
    row (the bus keeps no per-point time), unless the stream has channels with
    ``attrs["event_field"]`` ``time`` (the event times) and ``timestamps`` (one column per
    data key of its ``attrs["keys"]``), as a run that came from bluesky has.
frames in files
    A ``ref`` channel's data key is ``external: "STREAM:"``: a ``stream_resource`` per
    (file, dataset) (``uri`` ``file://localhost<path>``, ``application/x-hdf5``,
    ``parameters`` ``dataset``, ``chunk_shape`` and ``multiplier`` 1: one frame per row, so
    bluesky's HDF5 consolidator stacks the frames instead of joining their first axes), a
    ``stream_datum`` per reference and run (``indices`` = frames in the file, ``seq_nums``
    = the rows), sent before the page of those rows, whose ``data`` leaves the key out (as
    ophyd-async's detectors do).
    With ``resources="legacy"``: ``external: "FILESTORE:"``, a ``resource`` per (file,
    dataset) (spec ``AD_HDF5`` for ``/entry/data/data``, else ``HDF5_DATASET`` with the
    ``dataset`` in ``resource_kwargs``), a ``datum_page`` per run (``point_number`` = frame
    in the file) and the ``datum_id`` in the page's data (``filled`` False).
gaps
    Rows a channel will never deliver (a lossy channel's dropped points, points a server
    lost) are skipped: ``seq_num`` jumps over them, and the other channels' values of
    those rows are not sent (they stay on the bus). The stop document lists them under
    ``databus.gaps`` (``stream``, ``data_key``, ``first`` index, ``count``, ``reason``);
    ``databus.incomplete`` counts per stream the trailing rows some channels had and others
    never sent (an aborted scan). event-model's stop allows such a key; pages do not
    carry it.
stop
    ``exit_status``: ``success`` for finished and stopped scans (bluesky's ``RE.stop()``),
    ``abort`` for aborted and interrupted ones, ``fail`` for failed and lost ones (and any
    reason this module does not know); ``reason`` = the end reason and error text; a scan
    that came from bluesky (its final info holds the run's ``stop``) keeps that stop's
    ``exit_status`` and ``reason``. ``num_events`` = rows sent per stream; ``databus`` =
    end reason, error, gaps, incomplete.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from databus import Descriptor

from ._layout import (
    chain_streams,
    clean,
    data_key,
    data_keys_of,
    event_field,
    object_of,
    stream_of,
)
from ._resources import Document, FileResources, is_legacy
from ._rows import StreamRows

__all__ = ["RunDocuments"]

#: Names the run uids of bus scans (uuid5 of scan key and creation time).
_NAMESPACE = uuid.UUID("5f0c1f36-6a39-4f8e-9d2b-1f6a4c3e7b21")
_EXIT_STATUS = {
    "finished": "success",
    "stopped": "success",
    "aborted": "abort",
    "interrupted": "abort",
}
_STATUSES = ("success", "abort", "fail")


def _record_text(record: Any) -> str:
    return record if isinstance(record, str) else json.dumps(record, default=str)


class RunDocuments:
    """The documents of one scan (the rules in the module docstring).

    ``resources`` is ``"stream"`` (stream_resource/stream_datum) or ``"legacy"``
    (resource/datum_page); ``clock`` gives the time of rows and documents.
    """

    def __init__(
        self,
        key: str,
        number: int,
        created: float | None,
        info: Mapping[str, Any],
        descriptors: Sequence[Descriptor],
        *,
        resources: str = "stream",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._legacy = is_legacy(resources)
        self.key = key
        self._clock = clock
        self._info = dict(info)
        self._created = created if created is not None else clock()
        bluesky_uid = self._info.get("uid")
        self.uid = (
            bluesky_uid
            if isinstance(bluesky_uid, str) and bluesky_uid
            else str(uuid.uuid5(_NAMESPACE, f"{key}@{self._created!r}"))
        )
        self._number = number
        self._chain = chain_streams(self._info)
        self._desc: dict[str, Descriptor] = {}
        self._stream_of: dict[str, str] = {}
        self._streams: dict[str, StreamRows] = {}
        self._described: set[str] = set()
        self._keys: dict[str, str] = {}
        self._files = FileResources(self.uid, _NAMESPACE, legacy=self._legacy)
        self.opened = False
        for desc in descriptors:
            self.add_channel(desc)

    def add_channel(self, desc: Descriptor) -> None:
        """A channel of the scan (declared before the run opened, or since)."""
        stream = stream_of(desc, self._chain)
        if stream in self._described:
            stream = f"{stream}_{desc.name.replace(':', '_')}"
        self._desc[desc.name] = desc
        self._stream_of[desc.name] = stream
        if stream in self._streams:
            self._streams[stream].join(desc.name)
        else:
            self._streams[stream] = StreamRows([desc.name])

    def _descriptor_uid(self, stream: str) -> str:
        return f"{self.uid}/{stream}"

    def _stream_keys(self, stream: str) -> dict[str, str]:
        """Channel -> data key of a stream's channels (event fields have none)."""
        descs = [self._desc[n] for n in self._streams[stream].channels]
        return data_keys_of([d for d in descs if event_field(d) is None])

    # ------------------------------------------------------------------ start

    def open(self) -> list[Document]:
        """The start document."""
        self.opened = True
        return [("start", self._start())]

    def _start(self) -> dict[str, Any]:
        info = self._info
        motors = [self._motor_key(m) for m in info.get("motors", []) if isinstance(m, str)]
        dimensions = [[[m], "primary"] for m in motors] or [[["time"], "primary"]]
        detectors = info.get("detectors", info.get("counters"))
        if not (isinstance(detectors, list) and all(isinstance(d, str) for d in detectors)):
            objects = {object_of(d) for d in self._desc.values() if event_field(d) is None}
            detectors = sorted(objects - {"axis", "timer"})
        plan_name = info.get("plan_name", info.get("type", "scan"))
        start: dict[str, Any] = {
            "uid": self.uid,
            "time": self._created,
            "scan_id": self._number,
            "plan_name": str(plan_name),
            "plan_type": str(info.get("plan_type", "databus")),
            "motors": motors,
            "detectors": list(detectors),
            "hints": {"dimensions": dimensions},
            "databus": {"key": self.key, "scan_info": clean(info)},
        }
        if isinstance(info.get("hints"), Mapping):
            start["hints"] = clean(info["hints"])
        npoints = info.get("npoints", info.get("num_points"))
        if isinstance(npoints, int) and not isinstance(npoints, bool) and npoints > 0:
            start["num_points"] = npoints
        return start

    def _motor_key(self, motor: str) -> str:
        """The data key of the primary channel of ``motor`` (by name, short name or
        bluesky data key), or ``motor`` itself."""
        if "primary" not in self._streams:
            return motor
        for name, key in self._stream_keys("primary").items():
            if motor in (name, name.rsplit(":", 1)[-1], key):
                return key
        return motor

    def _descriptor(self, stream: str) -> Document:
        self._described.add(stream)
        keys = self._stream_keys(stream)
        self._keys.update(keys)
        external = "FILESTORE:" if self._legacy else "STREAM:"
        data_keys = {}
        object_keys: dict[str, list[str]] = {}
        for name, key in keys.items():
            desc = self._desc[name]
            source = f"databus:{self.key}/{name}"
            data_keys[key] = data_key(desc, source, external if desc.kind == "ref" else None)
            object_keys.setdefault(object_of(desc), []).append(key)
        doc = {
            "uid": self._descriptor_uid(stream),
            "run_start": self.uid,
            "time": self._clock(),
            "name": stream,
            "data_keys": data_keys,
            "object_keys": object_keys,
            "configuration": {},
            "hints": {obj: {"fields": keys} for obj, keys in object_keys.items()},
        }
        return "descriptor", doc

    # ------------------------------------------------------------------ data

    def data(self, channel: str, first: int, payload: Any, count: int) -> list[Document]:
        """Points ``first .. first + count - 1`` of ``channel`` arrived: the documents of
        the rows they complete. KeyError for a channel the scan did not declare."""
        stream = self._stream_of[channel]
        self._streams[stream].add(channel, first, payload, count)
        return self._rows(stream)

    def gap(self, channel: str, first: int, count: int, reason: str) -> list[Document]:
        """Points ``first .. first + count - 1`` of ``channel`` will never come."""
        stream = self._stream_of[channel]
        self._streams[stream].gap(channel, first, count, reason)
        return self._rows(stream)

    def _rows(self, stream: str) -> list[Document]:
        docs: list[Document] = []
        for first, stop, payloads in self._streams[stream].take():
            if stream not in self._described:
                docs.append(self._descriptor(stream))
            docs += self._page(stream, first, stop, payloads)
        return docs

    def _page(self, stream: str, first: int, stop: int, payloads: dict) -> list[Document]:
        docs: list[Document] = []
        descriptor = self._descriptor_uid(stream)
        seq = list(range(first + 1, stop + 1))
        times: list[float] | None = None
        stamps: dict[str, Any] = {}
        data: dict[str, Any] = {}
        filled: dict[str, list[bool]] = {}
        for name, payload in payloads.items():
            desc = self._desc[name]
            field = event_field(desc)
            if field == "time":
                times = payload.tolist()
            elif field == "timestamps":
                columns = desc.attrs.get("keys") or []
                stamps = {k: payload[:, i].tolist() for i, k in enumerate(columns)}
            elif desc.kind == "ref":
                key = self._keys[name]
                refs = self._files.documents(key, desc.shape, descriptor, first, payload)
                docs += refs[0]
                if self._legacy:
                    data[key] = refs[1]
                    filled[key] = [False] * len(seq)
            elif desc.kind == "json":
                data[self._keys[name]] = [_record_text(r) for r in payload]
            elif desc.shape:
                data[self._keys[name]] = list(payload)
            else:
                data[self._keys[name]] = payload.tolist()
        if times is None:
            times = [self._clock()] * len(seq)
        page = {
            "descriptor": descriptor,
            "uid": [f"{descriptor}/{s}" for s in seq],
            "seq_num": seq,
            "time": times,
            "data": data,
            "timestamps": {k: stamps.get(k, times) for k in data},
            "filled": filled,
        }
        docs.append(("event_page", page))
        return docs

    # ------------------------------------------------------------------ stop

    def close(
        self,
        reason: str,
        error: str | None = None,
        ended: float | None = None,
        final_info: Mapping[str, Any] | None = None,
    ) -> list[Document]:
        """The stop document, after the start and the descriptors not sent yet;
        ``final_info`` is the scan info as the scan ended."""
        docs = [] if self.opened else self.open()
        docs += [self._descriptor(s) for s in self._streams if s not in self._described]
        gaps = [
            {
                "stream": stream,
                "data_key": self._keys.get(g.channel, g.channel),
                "first": g.first,
                "count": g.count,
                "reason": g.reason,
            }
            for stream, rows in self._streams.items()
            for g in rows.gaps
        ]
        reason = str(reason)
        stop: dict[str, Any] = {
            "uid": f"{self.uid}/stop",
            "run_start": self.uid,
            "time": ended if ended is not None else self._clock(),
            "exit_status": _EXIT_STATUS.get(reason, "fail"),
            "reason": f"{reason}: {error}" if error else reason,
            "num_events": {s: rows.emitted for s, rows in self._streams.items()},
            "databus": {
                "end_reason": reason,
                "error": error,
                "gaps": gaps,
                "incomplete": {s: rows.incomplete for s, rows in self._streams.items()},
            },
        }
        original = (final_info or {}).get("stop")
        if isinstance(original, Mapping) and original.get("exit_status") in _STATUSES:
            stop["exit_status"] = original["exit_status"]
            stop["reason"] = str(original.get("reason") or "")
        docs.append(("stop", stop))
        return docs
