"""The external NeXus/HDF5 file writer: follows sessions and writes every saved scan live.

    databus writer --session demo --root /data [--layout session|scan] [--compression lz4]

Layout ``session`` (default, ESRF style) writes one file per session and day,
``<root>/<session>/<session>_<YYYYMMDD>.h5``, one NXentry ``<number>.1`` per scan; layout
``scan`` writes ``<root>/<session>/<session>_<number>.h5``. Each entry has the NeXus
tree tools expect (``@default`` -> NXdata ``plotselect`` with @signal and @axes,
``instrument`` with an NXpositioner per motor and an NXdetector per detector,
``measurement`` linking every channel, ``scan_info``), and ``writer/progress``: per
channel, the number of points stored, updated with every write.

Live and resumable: an entry is created when its scan is prepared, then the file is in
SWMR mode and data is appended as it arrives, so h5py/silx/h5web can read it while it
grows: points are gathered per channel, stored and flushed at least every ``flush_s``
(one HDF5 write per channel, not one per event: at 1 kHz of events HDF5's per-call cost
would take half a core). Structure changes (a new entry, the end of a scan) close SWMR
briefly. After a crash the writer trusts the file, not its memory: on
restart it cuts every dataset back to its recorded progress and continues from there,
so no point is lost or written twice. A scan whose data expired before the writer came
back is marked (``end_reason``, ``writer/missing``), never left silently short. Points
that will never come (a lossy channel dropped them, the server restarted without them)
are left at the fill value and listed in ``writer/gaps`` as they are reported.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

import databus
from databus.encoding import GAP_DROPPED, GAP_EVICTED, GAP_SERVER_LOST, FileRef

from ._h5clear import clear_status_flags

log = logging.getLogger("databus.writer")

_POSITIONER_PREFIXES = ("axis", "timer")
_HSET_IF_EXISTS = (
    "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], unpack(ARGV)) end"
)
#: Codes of the ``reason`` column of ``writer/gaps`` (its ``reasons`` attribute).
GAP_REASONS = (GAP_DROPPED, GAP_SERVER_LOST, "missing", GAP_EVICTED)
#: Pending bytes of a scan that are stored without waiting for ``flush_s``.
STORE_BYTES = 16 * 2**20


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise ImportError("the file writer needs h5py: pip install 'databus[hdf5]'") from None
    return h5py


def hdf5_name(name: str) -> str:
    """``name`` as a valid HDF5 link name ('/' and leading dots replaced)."""
    clean = name.replace("/", "_").strip()
    if not clean or set(clean) == {"."}:
        clean = "_" + clean
    return clean


def _iso(seconds: float | None) -> str:
    when = datetime.datetime.fromtimestamp(seconds or time.time(), tz=datetime.timezone.utc)
    return when.astimezone().isoformat()


def _compression(kind: str | None) -> dict[str, Any]:
    if kind in (None, "none"):
        return {}
    if kind == "gzip":
        return {"compression": "gzip", "compression_opts": 4}
    if kind == "lz4":
        try:
            import hdf5plugin
        except ImportError:
            raise ImportError(
                "lz4 compression needs hdf5plugin: pip install 'databus[hdf5]'"
            ) from None
        return dict(hdf5plugin.LZ4())
    raise ValueError(f"compression must be 'none', 'gzip' or 'lz4', not {kind!r}")


class _File:
    """One HDF5 file the writer holds: SWMR while data flows, plain append mode while its
    structure changes. ``generation`` counts reopenings (dataset handles go stale)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.h5: Any = None
        self.generation = 0
        self.last_flush = time.monotonic()
        self._lock: Any = None

    def _take_lock(self) -> None:
        """Hold ``.<file>.lock`` while this writer has the file: no two writers write one
        file, and only the lock's holder may repair what a killed writer left."""
        if self._lock is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(self.path.with_name(f".{self.path.name}.lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RuntimeError(f"{self.path} is being written by another writer process") from None
        self._lock = lock

    def structural(self) -> Any:
        """The file, open for structure changes (SWMR off)."""
        h5py = _h5py()
        if self.h5 is not None and self.h5.swmr_mode:
            self.h5.close()
            self.h5 = None
        if self.h5 is None:
            self._take_lock()
            new = not self.path.exists()
            try:
                self.h5 = h5py.File(self.path, "a", libver="latest", locking=False)
            except OSError as exc:
                if "already open for write" not in str(exc):
                    raise
                # A writer was killed while the file was in SWMR mode; we hold the lock,
                # so no writer is alive: repair it as h5clear would, then open it.
                clear_status_flags(self.path)
                log.warning("%s: cleared what a killed writer left in its superblock", self.path)
                self.h5 = h5py.File(self.path, "a", libver="latest", locking=False)
            self.generation += 1
            if new:
                _root_attributes(self.h5, self.path)
        return self.h5

    def live(self) -> Any:
        """The file, in SWMR mode (readers see appended data once flushed)."""
        h5 = self.structural() if self.h5 is None else self.h5
        if not h5.swmr_mode:
            h5.flush()
            h5.swmr_mode = True
        return h5

    def flush(self) -> None:
        if self.h5 is not None:
            self.h5.flush()
            self.last_flush = time.monotonic()

    def close(self) -> None:
        if self.h5 is not None:
            self.h5.close()
            self.h5 = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _root_attributes(h5: Any, path: Path) -> None:
    h5py = _h5py()
    h5.attrs.update(
        {
            "NX_class": "NXroot",
            "creator": f"databus {databus.__version__}",
            "file_name": str(path),
            "file_time": _iso(None),
            "HDF5_Version": h5py.version.hdf5_version,
            "h5py_version": h5py.version.version,
            "NeXus_version": "v2024.02",
        }
    )


@dataclasses.dataclass
class _Channel:
    node: Any
    name: str  # the channel's full name
    short: str  # its HDF5 name
    path: str | None  # where its data lives in the entry (None: lima, linked at the end)
    index: int  # its row in writer/progress
    written: int = 0  # points taken: stored, or pending
    stored: int = 0  # points in its dataset and in writer/progress
    point_shape: tuple[int, ...] | None = None  # its dataset's shape past the first axis
    pending: list[np.ndarray] = dataclasses.field(default_factory=list)
    refs: list[tuple[int, FileRef]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Entry:
    """One scan being written."""

    scan: Any
    file: _File
    name: str
    channels: dict[str, _Channel]
    gaps: set[tuple[int, int, int, int]] = dataclasses.field(default_factory=set)
    handles: dict[str, Any] = dataclasses.field(default_factory=dict)
    generation: int = -1
    failed: str | None = None
    pending_bytes: int = 0

    def dataset(self, path: str) -> Any:
        if self.generation != self.file.generation:
            self.handles.clear()
            self.generation = self.file.generation
        ds = self.handles.get(path)
        if ds is None:
            ds = self.handles[path] = self.file.h5[f"{self.name}/{path}"]
        return ds


class NexusWriter:
    """Writes the saved scans of ``sessions`` under ``root`` as they happen.

    layout: ``session`` (one file per session and day) or ``scan`` (one file per scan).
    compression: ``none``, ``gzip`` or ``lz4`` for frames.
    flush_s: the longest a written point waits before readers can see it.
    """

    def __init__(
        self,
        bus: databus.Bus,
        sessions: Iterable[str],
        root: str | Path,
        layout: str = "session",
        compression: str | None = None,
        flush_s: float = 0.5,
    ) -> None:
        if layout not in ("session", "scan"):
            raise ValueError(f"layout must be 'session' or 'scan', not {layout!r}")
        _h5py()  # fail here, once, rather than on every scan
        self.bus = bus
        self.sessions = list(sessions)
        self.root = Path(root)
        self.layout = layout
        self.compression = _compression(compression)
        self.flush_s = flush_s
        self.stop_handler = databus.StopHandler()
        self._files: dict[Path, _File] = {}
        self._entries: dict[str, _Entry] = {}
        self._decisions: dict[str, bool] = {}
        self._lock = threading.RLock()
        self.written: list[str] = []  # "<file>::<entry>" of every scan finished
        self.errors: list[str] = []

    # ------------------------------------------------------------------ paths

    def location(self, scan: Any) -> tuple[Path, str]:
        """(file, entry name) of ``scan``; see ``_entry_name`` for a number used twice."""
        session = hdf5_name(scan.parent.name)
        if self.layout == "scan":
            path = self.root / session / f"{session}_{scan.number:04d}.h5"
        else:
            created = float(scan._record.get(b"created", time.time()))
            day = datetime.datetime.fromtimestamp(created).strftime("%Y%m%d")
            path = self.root / session / f"{session}_{day}.h5"
        return path, f"{scan.number}.1"

    @staticmethod
    def _entry_name(h5: Any, scan: Any, name: str) -> str:
        """``name`` (``<number>.1``), unless that entry holds another scan of the same
        number (a server restarted without its data counts again from 1): then
        ``<number>.2``, ``<number>.3``... Scans are told apart by their creation time."""
        created = float(scan._record.get(b"created", 0))
        number, k = name.rsplit(".", 1)
        k_int = int(k)
        while name in h5:
            stored = h5[name].get("writer")
            if stored is None or stored.attrs.get("scan_created", created) == created:
                break
            k_int += 1
            name = f"{number}.{k_int}"
        return name

    def _file(self, path: Path) -> _File:
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = _File(path)
        return f

    # ------------------------------------------------------------------ following

    def _wanted(self, node: Any) -> bool:
        """include_filter of the walks: saved scans not already complete in a file."""
        if node.type in ("scan", "scan_group"):
            key = node.db_name
            if key not in self._decisions:
                self._decisions[key] = bool(node.info.get("save", True)) and not self._complete(
                    node
                )
            return self._decisions[key]
        return self._decisions.get(node.parent.db_name, False)

    def _complete(self, scan: Any) -> bool:
        path, name = self.location(scan)
        if not path.exists():
            return False
        with self._lock:
            try:
                f = self._file(path)
                h5 = f.h5 if f.h5 is not None else f.structural()
                name = self._entry_name(h5, scan, name)
                return name in h5 and "end_reason" in h5[name]
            except Exception as exc:
                self._error(f"{path}: cannot read ({exc})")
                return True  # do not touch a file we cannot read

    def run(self, started: threading.Event | None = None) -> None:
        """Follow every session until ``stop_handler.stop()`` (or SIGTERM in ``main``)."""
        self.mark_expired()
        threads = []
        ready = []
        for name in self.sessions:
            event = threading.Event()
            ready.append(event)
            t = threading.Thread(
                target=self._follow, args=(name, event), name=f"writer-{name}", daemon=True
            )
            t.start()
            threads.append(t)
        for event in ready:
            event.wait(10)
        if started is not None:
            started.set()
        for t in threads:
            t.join()
        with self._lock:
            for entry in self._entries.values():
                if entry.failed is None:
                    self._store(entry)
            for f in self._files.values():
                f.close()

    def _follow(self, session: str, started: threading.Event) -> None:
        # From the session's first scan still in Redis: scans that ended while no writer
        # ran are written too; the filter skips those already complete in a file.
        events = self.bus.session(session).follow(
            replay=True,
            include_filter=self._wanted,
            stop_handler=self.stop_handler,
            started_event=started,
        )
        for event in events:
            with self._lock:
                try:
                    self._on(event)
                except Exception as exc:  # one scan's trouble never stops the others
                    scan = (
                        event.node
                        if event.node.type in ("scan", "scan_group")
                        else event.node.parent
                    )
                    self._fail(scan.db_name, exc)
                self._flush_due()

    def _on(self, event: databus.Event) -> None:
        kind = event.type
        if kind is databus.EventType.PREPARED_SCAN:
            self._open_entry(event.node)
        elif kind is databus.EventType.NEW_DATA:
            entry = self._entries.get(event.node.parent.db_name) or self._open_entry(
                event.node.parent
            )
            if entry is not None and entry.failed is None:
                self._write(entry, event.node.name, event.data)
        elif kind is databus.EventType.GAP:
            entry = self._entries.get(event.node.parent.db_name) or self._open_entry(
                event.node.parent
            )
            if entry is not None and entry.failed is None:
                gap = event.data
                self._gap(entry, event.node.name, gap.first_index, gap.block_size, gap.reason)
        elif kind is databus.EventType.END_SCAN:
            entry = self._entries.get(event.node.db_name) or self._open_entry(event.node)
            if entry is not None:
                self._finish(entry, event.data)

    # ------------------------------------------------------------------ entries

    def _open_entry(self, scan: Any) -> _Entry | None:
        """Create the scan's entry, or take up an unfinished one where the file says."""
        key = scan.db_name
        if key in self._entries:
            return self._entries[key]
        scan = scan.refresh()
        path, name = self.location(scan)
        file = self._file(path)
        h5 = file.structural()
        name = self._entry_name(h5, scan, name)
        resumed = name in h5
        group = h5[name] if resumed else self._create_entry(h5, name, scan)
        names = [n.decode() if isinstance(n, bytes) else n for n in group["writer/channels"][()]]
        progress = group["writer/progress"][()]
        channels = {}
        for index, ch_name in enumerate(names):
            node = scan.channels.get(ch_name)
            path_in_entry = group["writer/paths"][index]
            path_in_entry = (
                path_in_entry.decode() if isinstance(path_in_entry, bytes) else path_in_entry
            )
            channels[ch_name] = _Channel(
                node,
                ch_name,
                hdf5_name(ch_name.rsplit(":", 1)[-1]),
                path_in_entry or None,
                index,
                int(progress[index]),
                int(progress[index]),
            )
            if resumed and path_in_entry:  # drop whatever the progress does not vouch for
                ds = group[path_in_entry]
                if ds.shape[0] > progress[index]:
                    ds.resize(int(progress[index]), axis=0)
        entry = _Entry(scan, file, name, channels)
        entry.gaps = {tuple(int(v) for v in row) for row in group["writer/gaps"][()]}
        self._entries[key] = entry
        where = {f"dataset:{c.name}": f"/{name}/{c.path}" for c in channels.values() if c.path}
        self._note(key, {"file": str(path), **where})
        file.live()
        what = "resuming" if resumed else "writing"
        log.info(
            "%s %s -> %s::%s%s",
            what,
            key,
            path,
            name,
            f" from {dict((c.name, c.written) for c in channels.values())}" if resumed else "",
        )
        return entry

    def _create_entry(self, h5: Any, name: str, scan: Any) -> Any:
        h5py = _h5py()
        info = scan.info
        e = h5.create_group(name)
        e.attrs.update({"NX_class": "NXentry", "default": "plotselect"})
        if "default" not in h5.attrs:
            h5.attrs["default"] = name
        e["title"] = str(info.get("title", scan.name))
        e["start_time"] = _iso(float(scan._record.get(b"created", time.time())))
        e["program_name"] = "databus"
        e["program_name"].attrs["version"] = databus.__version__
        e["scan_key"] = scan.key
        _store_info(e.create_group("scan_info"), info)
        instrument = e.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        positioners = instrument.create_group("positioners")
        positioners.attrs["NX_class"] = "NXcollection"
        measurement = e.create_group("measurement")
        measurement.attrs["NX_class"] = "NXcollection"
        names, paths = [], []
        for ch in scan.channels.values():
            short = hdf5_name(ch.short_name)
            controller = hdf5_name(ch.name.split(":")[0])
            group_name = controller if short in ("image", "data") else short
            if short in measurement or (group_name in instrument and group_name != controller):
                short = group_name = f"{controller}_{short}"  # two controllers, one name
            is_axis = ch.name.split(":")[0] in _POSITIONER_PREFIXES
            holder = instrument.require_group(group_name)
            holder.attrs["NX_class"] = "NXpositioner" if is_axis else "NXdetector"
            field = "value" if is_axis else "data"
            names.append(ch.name)
            if ch.desc.kind == "ref":
                paths.append("")  # linked to the detector's own file at the end
                continue
            if ch.desc.kind == "json":
                ds = holder.create_dataset(
                    field, shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(256,)
                )
            else:
                shape = ch.shape
                frame = len(shape) >= 2 or int(np.prod(shape)) * ch.dtype.itemsize >= 65536
                chunks = (
                    (1, *shape)
                    if frame
                    else (max(1, 65536 // max(1, int(np.prod(shape)) * ch.dtype.itemsize)), *shape)
                )
                fill = np.nan if ch.dtype.kind in "fc" else 0
                ds = holder.create_dataset(
                    field,
                    shape=(0, *shape),
                    maxshape=(None, *shape),
                    dtype=ch.dtype,
                    chunks=chunks,
                    fillvalue=fill,
                    **(self.compression if frame else {}),
                )
                if frame:
                    ds.attrs["interpretation"] = "image"
            if ch.unit:
                ds.attrs["units"] = ch.unit
            if is_axis:
                positioners[group_name] = ds
            measurement[short] = ds
            paths.append(ds.name[len(e.name) + 1 :])
        w = e.create_group("writer")
        w.attrs["NX_class"] = "NXcollection"
        w.attrs["scan_created"] = float(scan._record.get(b"created", 0))
        w["channels"] = np.array(names, dtype=h5py.string_dtype())
        w["paths"] = np.array(paths, dtype=h5py.string_dtype())
        w.create_dataset("progress", data=np.zeros(len(names), dtype=np.int64))
        gaps = w.create_dataset(
            "gaps", shape=(0, 4), maxshape=(None, 4), dtype=np.int64, chunks=(64, 4)
        )
        gaps.attrs["columns"] = ["channel", "first", "last", "reason"]
        gaps.attrs["reasons"] = list(GAP_REASONS)
        self._plotselect(e, scan, names, paths, final=False)
        return e

    def _plotselect(
        self, e: Any, scan: Any, names: list[str], paths: list[str], final: bool
    ) -> None:
        """The default plot: the first scalar counter against the scanned motor(s); a
        mesh as a 2D image with both axes once the scan has ended."""
        info = scan.info
        motors = [f"axis:{m}" for m in info.get("motors", [])]
        counters = [
            n
            for n, p in zip(names, paths, strict=True)
            if p
            and n not in motors
            and not n.startswith("timer:")
            and e[p].ndim == 1
            and e[p].dtype.kind in "iuf"
        ]
        if not counters:
            return
        if "plotselect" in e:
            del e["plotselect"]
        nxdata = e.create_group("plotselect")
        nxdata.attrs["NX_class"] = "NXdata"
        signal = counters[0]
        signal_name = hdf5_name(signal.rsplit(":", 1)[-1])
        by_name = dict(zip(names, paths, strict=True))
        shape = info.get("shape")
        if final and info.get("data_dim") == 2 and shape and len(motors) == 2:
            n_slow, n_fast = shape
            data = e[by_name[signal]][()]
            full = np.full(n_slow * n_fast, np.nan)
            full[: len(data)] = data
            nxdata[signal_name] = full.reshape(n_slow, n_fast)
            axes = []
            for motor, count, take in (
                (motors[1], n_slow, slice(None, None, n_fast)),
                (motors[0], n_fast, slice(0, n_fast)),
            ):
                values = e[by_name[motor]][()]
                axis_name = hdf5_name(motor.split(":", 1)[1])
                vals = np.full(count, np.nan)
                picked = values[take][:count]
                vals[: len(picked)] = picked
                nxdata[axis_name] = vals
                axes.append(axis_name)
            nxdata.attrs.update({"signal": signal_name, "axes": axes})
            return
        nxdata[signal_name] = e[by_name[signal]]
        axes = []
        for motor in motors or ["timer:elapsed_time"]:
            if by_name.get(motor):
                axis_name = hdf5_name(motor.split(":", 1)[1])
                nxdata[axis_name] = e[by_name[motor]]
                axes.append(axis_name)
        nxdata.attrs.update({"signal": signal_name, "axes": axes[:1] or ["."]})
        if len(axes) > 1:
            nxdata.attrs["auxiliary_axes"] = axes[1:]

    # ------------------------------------------------------------------ data

    def _write(self, entry: _Entry, channel: str, data: databus.EventData) -> None:
        """Take a NEW_DATA block: references are kept for the end, points are gathered
        and stored by ``_store`` (at least every ``flush_s``, or once ``STORE_BYTES``
        are pending)."""
        ch = entry.channels.get(channel)
        if ch is None:
            raise ValueError(f"channel {channel!r} was not declared when the scan was prepared")
        first, block = data.first_index, data.data
        if ch.path is None:  # lima: remember the references, link them at the end
            index = first
            for ref in block:
                ch.refs.append((index, ref))
                index += len(ref)
            ch.written = ch.stored = index
            entry.dataset("writer/progress")[ch.index] = ch.written
            return
        if first + data.block_size <= ch.written:
            return  # written before a restart
        if first > ch.written:  # points the walk skipped (corrupt entries)
            self._gap(entry, channel, ch.written, first - ch.written, "missing")
        skip = max(0, ch.written - first)
        if isinstance(block, list):  # json records
            block = np.array([json.dumps(r) for r in block[skip:]], dtype=object)
        else:
            block = block[skip:]
            if ch.point_shape is None:
                ch.point_shape = tuple(entry.dataset(ch.path).shape[1:])
            if block.shape[1:] != ch.point_shape:
                raise ValueError(
                    f"channel {channel!r}: points of shape {block.shape[1:]} do not fit "
                    f"its dataset of shape {ch.point_shape}"
                )
        ch.pending.append(block)
        ch.written += len(block)
        entry.pending_bytes += block.nbytes
        if entry.pending_bytes >= STORE_BYTES:
            self._store(entry)

    def _store(self, entry: _Entry) -> None:
        """Write every channel's pending points to its dataset (one write each), then
        ``writer/progress``: a writer killed before this takes them from Redis again."""
        pending = [ch for ch in entry.channels.values() if ch.pending and ch.path]
        if not pending:
            return
        for ch in pending:
            block = ch.pending[0] if len(ch.pending) == 1 else np.concatenate(ch.pending)
            ds = entry.dataset(str(ch.path))
            end = ch.stored + len(block)
            if ds.shape[0] < end:
                ds.resize(end, axis=0)
            ds[ch.stored : end] = block
            ch.stored, ch.pending = end, []
        entry.pending_bytes = 0
        progress = [ch.stored for ch in entry.channels.values()]
        entry.dataset("writer/progress")[:] = np.asarray(progress, dtype=np.int64)

    def _gap(self, entry: _Entry, channel: str, first: int, count: int, reason: str) -> None:
        """Record points ``first .. first+count-1`` that will never come: a row of
        ``writer/gaps`` (kept across restarts), the dataset grown over them (fill value)."""
        ch = entry.channels.get(channel)
        if ch is None:
            raise ValueError(f"channel {channel!r} was not declared when the scan was prepared")
        code = GAP_REASONS.index(reason) if reason in GAP_REASONS else GAP_REASONS.index("missing")
        self._store(entry)  # the points before the gap first
        stop = first + count
        first = max(first, ch.written)  # the part before was written from real points
        if first >= stop:
            return
        row = (ch.index, first, stop - 1, code)
        if row not in entry.gaps:
            entry.gaps.add(row)
            table = entry.dataset("writer/gaps")
            table.resize(len(table) + 1, axis=0)
            table[-1] = row
            log.warning(
                "%s channel %r: points %d..%d will never come (%s)",
                entry.scan.db_name,
                channel,
                first,
                stop - 1,
                reason,
            )
        if ch.path is not None:
            ds = entry.dataset(ch.path)
            if ds.shape[0] < stop:
                ds.resize(stop, axis=0)
        ch.written = ch.stored = stop
        entry.dataset("writer/progress")[ch.index] = stop

    def _note(self, key: str, fields: dict[str, Any]) -> None:
        """Tell readers (DataExpired names the file) and the memory guard (it deletes
        scans still being written last) where a scan goes and when it is written."""
        args = [str(v) for item in fields.items() for v in item]
        try:  # only into a record that exists: never leave a stray, TTL-less hash
            self.bus.redis.eval(_HSET_IF_EXISTS, 1, key, *args)
        except Exception as exc:  # a read-only user: the files are right all the same
            log.warning("%s: cannot note the file in the scan record (%s)", key, exc)

    def _flush_due(self) -> None:
        """Store pending points and flush every file not flushed for ``flush_s``."""
        now = time.monotonic()
        due = [
            f
            for f in self._files.values()
            if f.h5 is not None and now - f.last_flush >= self.flush_s
        ]
        if not due:
            return
        for entry in self._entries.values():
            if entry.file in due and entry.failed is None:
                self._store(entry)
        for f in due:
            f.flush()

    def _finish(self, entry: _Entry, end: databus.ScanEnd) -> None:
        key = entry.scan.db_name
        if entry.failed is None:
            self._store(entry)
        h5 = entry.file.structural()
        e = h5[entry.name]
        reason = f"writer failed: {entry.failed}" if entry.failed else str(end.reason)
        e["end_time"] = _iso(None)
        e["end_reason"] = reason
        if end.error:
            e["end_error"] = end.error
        if str(end.reason) == "lost":  # its keys vanished before it ended: say what is missing
            missing = {c.name: [c.written, None] for c in entry.channels.values()}
            e["writer/missing"] = json.dumps(missing)
        for ch in entry.channels.values():
            if ch.path is None and ch.refs:
                self._link_frames(e, ch)
        names = list(entry.channels)
        paths = [c.path or "" for c in entry.channels.values()]
        try:
            self._plotselect(e, entry.scan, names, paths, final=True)
        except Exception as exc:
            log.warning("%s: no default plot (%s)", key, exc)
        entry.file.flush()
        del self._entries[key]
        self._note(key, {"written": time.time()})
        try:
            ended = float(entry.scan.refresh()._record.get(b"ended", time.time()))
        except databus.UnknownScan:
            ended = time.time()
        self.written.append(f"{entry.file.path}::{entry.name}")
        log.info(
            "finished %s -> %s::%s (%s), %.2f s after the scan ended",
            key,
            entry.file.path,
            entry.name,
            reason,
            time.time() - ended,
        )
        if any(other.file is entry.file for other in self._entries.values()):
            entry.file.live()
        elif self.layout == "scan":
            entry.file.close()

    def _link_frames(self, e: Any, ch: _Channel) -> None:
        """Frames a detector wrote to its own files: an external link when they are one
        dataset from its start, else a virtual dataset; never a copy."""
        h5py = _h5py()
        holder = e["instrument"][hdf5_name(ch.name.split(":")[0])]
        refs = ch.refs
        first_ref = refs[0][1]
        one = all(r.file == first_ref.file and r.dataset == first_ref.dataset for _, r in refs)
        contiguous = all(r.start == i for i, r in refs) and refs[0][0] == 0
        if one and contiguous:
            holder["data"] = h5py.ExternalLink(first_ref.file, first_ref.dataset)
        else:
            node = ch.node
            layout = h5py.VirtualLayout(shape=(ch.written, *node.shape), dtype=node.dtype)
            for index, ref in refs:
                source = h5py.VirtualSource(ref.file, ref.dataset, shape=(ref.stop, *node.shape))
                layout[index : index + len(ref)] = source[ref.start : ref.stop]
            holder.create_virtual_dataset("data", layout, fillvalue=0)
        e["measurement"][ch.short] = h5py.SoftLink(f"{holder.name}/data")

    # ------------------------------------------------------------------ failures

    def _fail(self, key: str, exc: Exception) -> None:
        entry = self._entries.get(key)
        message = f"{key}: {type(exc).__name__}: {exc}"
        self._error(message)
        if entry is not None and entry.failed is None:
            entry.failed = f"{type(exc).__name__}: {exc}"

    def _error(self, message: str) -> None:
        self.errors.append(message)
        log.error("%s", message)

    def mark_expired(self) -> None:
        """Entries left unfinished by an earlier run whose scan is gone from Redis: mark
        them (end_reason and, per channel, the points missing from ``writer/progress``)."""
        for session in self.sessions:
            for path in sorted((self.root / hdf5_name(session)).glob("*.h5")):
                try:
                    h5 = self._file(path).structural()
                    for name, entry in h5.items():
                        if "writer" not in entry or "end_reason" in entry:
                            continue
                        key = entry["scan_key"][()].decode()
                        if self.bus.redis.exists(key):
                            continue  # still in Redis: the walk will resume it
                        progress = entry["writer/progress"][()]
                        channels = [c.decode() for c in entry["writer/channels"][()]]
                        missing = {
                            c: [int(p), None] for c, p in zip(channels, progress, strict=True)
                        }
                        entry["end_reason"] = (
                            "incomplete: the scan expired from Redis before it was written"
                        )
                        entry["end_time"] = _iso(None)
                        entry["writer/missing"] = json.dumps(missing)
                        log.error(
                            "%s::%s: data expired before it was written; missing %s",
                            path,
                            name,
                            missing,
                        )
                except (OSError, RuntimeError, ValueError) as exc:
                    self._error(f"{path}: {exc}")


def _store_info(group: Any, info: dict[str, Any]) -> None:
    """The scan info as datasets: numbers and strings as they are, the rest as JSON."""
    group.attrs["NX_class"] = "NXcollection"
    for key, value in info.items():
        name = hdf5_name(str(key))
        try:
            if isinstance(value, (str, int, float, bool)) or (
                isinstance(value, (list, np.ndarray))
                and np.asarray(value).dtype.kind in "biuf"
                and np.asarray(value).size
            ):
                group[name] = value
                continue
        except (TypeError, ValueError):
            pass
        group[name] = json.dumps(
            value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)
        )


def main(argv: list[str] | None = None) -> int:
    """``databus writer``: write the sessions' scans until SIGTERM or Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="databus writer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--session", action="append", required=True, help="repeat for several")
    parser.add_argument("--root", required=True, help="directory the files go to")
    parser.add_argument("--layout", choices=["session", "scan"], default="session")
    parser.add_argument("--compression", choices=["none", "gzip", "lz4"], default="none")
    parser.add_argument("--url", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    root = Path(args.root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".databus-writer-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        log.error("cannot write to %s: %s", root, exc)
        return 2
    bus = databus.connect(args.url)
    writer = NexusWriter(bus, args.session, root, args.layout, args.compression)
    signal.signal(signal.SIGTERM, lambda *_: writer.stop_handler.stop())
    log.info("writing sessions %s to %s (%s layout)", ", ".join(args.session), root, args.layout)
    try:
        writer.run()
    except KeyboardInterrupt:
        writer.stop_handler.stop()
    log.info("stopped; unfinished scans resume at the next start")
    return 0
