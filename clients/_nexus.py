"""The NeXus tree of a scan, as plain functions over h5py groups: names made valid (and
one to one), the entry with its instrument, measurement, scan info and writer groups,
the default plot. No following, storing or resuming here (``writer.py`` does that), so
each function can be tried on an in-memory file (``h5py.File(..., driver="core")``).
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import databus
from databus._encoding import GAP_DROPPED, GAP_EVICTED, GAP_SERVER_LOST
from databus._saving import hdf5_name

#: Channel prefixes that are motors (NXpositioner, under ``instrument/positioners``).
POSITIONER_PREFIXES = ("axis", "timer")
#: Codes of the ``reason`` column of ``writer/gaps`` (its ``reasons`` attribute).
GAP_REASONS = (GAP_DROPPED, GAP_SERVER_LOST, "missing", GAP_EVICTED, "expired")


def h5py_module() -> Any:
    """h5py, or an ImportError naming the extra to install."""
    try:
        import h5py
    except ImportError:
        raise ImportError("the file writer needs h5py: pip install 'databus[hdf5]'") from None
    return h5py


def h5_text(text: str) -> str:
    """``text`` for a string dataset (HDF5 strings hold no NUL: shown as ``\\0``)."""
    return text.replace("\0", "\\0")


def free_name(group: Any, name: str) -> str:
    """``name``, or ``name_2``, ``name_3``... : the first one ``group`` has not."""
    candidate, k = name, 1
    while candidate in group:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def iso(seconds: float | None) -> str:
    """``seconds`` (unix; None: now) as a local ISO 8601 time, as NeXus wants."""
    when = datetime.datetime.fromtimestamp(seconds or time.time(), tz=datetime.timezone.utc)
    return when.astimezone().isoformat()


def root_attributes(h5: Any, path: Path) -> None:
    """The NXroot attributes of a new file at ``path``."""
    h5py = h5py_module()
    h5.attrs.update(
        {
            "NX_class": "NXroot",
            "creator": f"databus {databus.__version__}",
            "file_name": str(path),
            "file_time": iso(None),
            "HDF5_Version": h5py.version.hdf5_version,
            "h5py_version": h5py.version.version,
            "NeXus_version": "v2024.02",
        }
    )


def create_entry(h5: Any, name: str, scan: Any, compression: dict[str, Any]) -> Any:
    """Entry ``name`` of ``h5`` for ``scan`` (a ``ScanNode``): title, times, ``scan_info``,
    ``instrument`` and ``measurement`` with an empty extensible dataset per channel
    (frames chunked one per chunk, with ``compression``), ``writer`` (channels, paths,
    progress, gaps) and the default plot."""
    info = scan.info
    e = h5.create_group(name)
    e.attrs.update({"NX_class": "NXentry", "default": "plotselect"})
    if "default" not in h5.attrs:
        h5.attrs["default"] = name
    e["title"] = h5_text(str(info.get("title", scan.name)))
    e["start_time"] = iso(scan.created)
    e["program_name"] = "databus"
    e["program_name"].attrs["version"] = databus.__version__
    e["scan_key"] = hdf5_name(scan.key)
    store_info(e.create_group("scan_info"), info)
    instrument = e.create_group("instrument")
    instrument.attrs["NX_class"] = "NXinstrument"
    positioners = instrument.create_group("positioners")
    positioners.attrs["NX_class"] = "NXcollection"
    measurement = e.create_group("measurement")
    measurement.attrs["NX_class"] = "NXcollection"
    names = list(scan.channels)
    paths = [channel_dataset(e, ch, compression) for ch in scan.channels.values()]
    w = e.create_group("writer")
    w.attrs["NX_class"] = "NXcollection"
    w.attrs["scan_created"] = scan.created or 0.0
    channel_table(w, names, paths, np.zeros(len(names), dtype=np.int64))
    gaps = w.create_dataset(
        "gaps", shape=(0, 4), maxshape=(None, 4), dtype=np.int64, chunks=(64, 4)
    )
    gaps.attrs["columns"] = ["channel", "first", "last", "reason"]
    gaps.attrs["reasons"] = list(GAP_REASONS)
    plotselect(e, info, names, paths, final=False)
    return e


def channel_dataset(e: Any, ch: Any, compression: dict[str, Any]) -> str:
    """The empty extensible dataset of channel ``ch`` (a ``ChannelNode``) in entry ``e``,
    under ``instrument`` (NXpositioner or NXdetector) and linked from ``measurement``
    (frames chunked one per chunk, with ``compression``); its path in ``e``, or "" for a
    ref channel (its frames are linked from the detector's file at the end)."""
    h5py = h5py_module()
    instrument, measurement = e["instrument"], e["measurement"]
    is_axis = ch.name.split(":")[0] in POSITIONER_PREFIXES
    field = "value" if is_axis else "data"
    group_name, short = slot(instrument, measurement, ch.name, field)
    holder = instrument.require_group(group_name)
    holder.attrs["NX_class"] = "NXpositioner" if is_axis else "NXdetector"
    if ch.desc.kind == "ref":
        return ""
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
            **(compression if frame else {}),
        )
        if frame:
            ds.attrs["interpretation"] = "image"
    if ch.unit:
        ds.attrs["units"] = h5_text(ch.unit)
    ds.attrs["channel"] = hdf5_name(ch.name)
    if is_axis:
        instrument["positioners"][group_name] = ds
    measurement[short] = ds
    return str(ds.name[len(e.name) + 1 :])


def channel_table(w: Any, names: list[str], paths: list[str], progress: Any) -> None:
    """The ``writer`` group's per-channel rows, (re)written whole: ``channels`` (full
    names), ``paths`` (datasets in the entry, "" for none) and ``progress`` (points
    stored)."""
    h5py = h5py_module()
    for name in ("channels", "paths", "progress"):
        if name in w:
            del w[name]
    w["channels"] = np.array([hdf5_name(n) for n in names], dtype=h5py.string_dtype())
    w["paths"] = np.array(paths, dtype=h5py.string_dtype())
    w.create_dataset("progress", data=np.asarray(progress, dtype=np.int64))


def plotselect(
    e: Any, info: dict[str, Any], names: list[str], paths: list[str], final: bool
) -> None:
    """The default plot: the first scalar counter against the scanned motor(s); a
    mesh as a 2D image with both axes once the scan has ended. ``names`` are the
    channels' full names, ``paths`` their datasets in ``e`` ("" for none)."""
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
    detectors = {str(d) for d in info.get("detectors") or []}  # a bluesky run's detectors first
    counters.sort(key=lambda n: n.rsplit(":", 1)[-1] not in detectors)
    if "plotselect" in e:
        del e["plotselect"]
    nxdata = e.create_group("plotselect")
    nxdata.attrs["NX_class"] = "NXdata"
    signal = counters[0]
    signal_name = free_name(nxdata, hdf5_name(signal.rsplit(":", 1)[-1]))
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
            axis_name = free_name(nxdata, hdf5_name(motor.split(":", 1)[1]))
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
            axis_name = free_name(nxdata, hdf5_name(motor.split(":", 1)[1]))
            nxdata[axis_name] = e[by_name[motor]]
            axes.append(axis_name)
    nxdata.attrs.update({"signal": signal_name, "axes": axes[:1] or ["."]})
    if len(axes) > 1:
        nxdata.attrs["auxiliary_axes"] = axes[1:]


def slot(instrument: Any, measurement: Any, channel: str, field: str) -> tuple[str, str]:
    """(group in ``instrument``, name in ``measurement``) for ``channel``: its short name
    (frames: its controller's), prefixed with the controller when another controller has
    it, then ``_2``, ``_3``... until both are free."""
    controller, _, rest = channel.rpartition(":")
    short = hdf5_name(rest)
    controller = hdf5_name(controller.split(":")[0]) if controller else short
    group = controller if short in ("image", "data") else short
    taken = f"{group}/{field}" in instrument or short in measurement
    if taken or (group in instrument and group != controller):
        group = short = f"{controller}_{short}"  # two controllers, one name
    base_group, base_short, k = group, short, 1
    while f"{group}/{field}" in instrument or short in measurement or group == "positioners":
        k += 1
        group, short = f"{base_group}_{k}", f"{base_short}_{k}"
    return group, short


def store_info(group: Any, info: dict[str, Any]) -> None:
    """The scan info as datasets: numbers and strings as they are, the rest as JSON."""
    group.attrs["NX_class"] = "NXcollection"
    for key, value in info.items():
        name = hdf5_name(str(key))
        try:
            if (
                (isinstance(value, str) and "\0" not in value)
                or isinstance(value, (int, float, bool))
                or (
                    isinstance(value, (list, np.ndarray))
                    and np.asarray(value).dtype.kind in "biuf"
                    and np.asarray(value).size
                )
            ):
                group[name] = value
                continue
        except (TypeError, ValueError):
            pass
        group[name] = json.dumps(
            value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)
        )
