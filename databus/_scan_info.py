"""The keys BLISS puts in a scan's ``scan_info`` (the schema blissdata 2.x documents): the
identity every published scan gets, and for the runner's step scans the acquisition chain,
the devices, the channels by full name, default plots, positioners and times. Readers
written for BLISS (Flint, the Nexus writer, PyMca, ewoks, DAMNIT) look these up by name.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sim import SimMotor

#: (name, dtype, shape, unit) of a published channel.
ChannelSpec = tuple[str, str, tuple[int, ...], str | None]


def identity(session: str, number: int, key: str) -> dict[str, Any]:
    """The keys that name a scan in every scan's info, as BLISS sets them from its creation:
    ``scan_nb``, ``session_name`` and ``node_name`` (its key on the bus)."""
    return {"scan_nb": number, "session_name": session, "node_name": key}


def iso_now(timestamp: float) -> str:
    """``timestamp`` (unix seconds) as BLISS writes times: ISO 8601, local time with offset."""
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat()


def _device(channel: str) -> str:
    return channel.split(":", 1)[0]


def _short(channel: str) -> str:
    return channel.rsplit(":", 1)[-1]


def channels_info(specs: Sequence[ChannelSpec]) -> dict[str, dict[str, Any]]:
    """``scan_info["channels"]``: full name -> ``dim`` (0 scalar, 1 spectrum, 2 image),
    ``display_name`` and ``unit``, in publishing order."""
    out: dict[str, dict[str, Any]] = {}
    for name, _, shape, unit in specs:
        entry: dict[str, Any] = {"dim": len(shape), "display_name": _short(name)}
        if unit:
            entry["unit"] = unit
        out[name] = entry
    return out


def chain_info(
    specs: Sequence[ChannelSpec], motors: Sequence[SimMotor]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``acquisition_chain`` and ``devices`` of a step scan: the motors' ``axis`` master
    on top (the ``timer`` for scans without motors) triggering the timer, which triggers
    the counters' controllers."""
    by_device: dict[str, list[str]] = {}
    for name, *_ in specs:
        by_device.setdefault(_device(name), []).append(name)
    top = "axis" if motors else "timer"
    counters = [d for d in by_device if d not in ("axis", "timer")]
    devices: dict[str, Any] = {d: {"name": d, "channels": chans} for d, chans in by_device.items()}
    devices["timer"]["triggered_devices"] = counters
    if motors:
        devices["axis"]["triggered_devices"] = ["timer"]

    def by_dim(names: list[str], dim: int) -> list[str]:
        return [n for n, _, shape, _ in specs if n in names and len(shape) == dim]

    master = by_device[top]
    others = [n for n, *_ in specs if n not in master]
    chain = {
        "top_master": top,
        "devices": [top, *(["timer"] if motors else []), *counters],
        "scalars": by_dim(others, 0),
        "spectra": by_dim(others, 1),
        "images": by_dim(others, 2),
        "master": {
            "scalars": by_dim(master, 0),
            "spectra": by_dim(master, 1),
            "images": by_dim(master, 2),
        },
    }
    return {top: chain}, devices


def plots_info(specs: Sequence[ChannelSpec], motors: Sequence[SimMotor], mesh: bool) -> list:
    """Default plots as BLISS describes them: the scalar counters against the first motor
    (elapsed time without motors), a scatter for a mesh, and each image."""
    scalars = [n for n, _, shape, _ in specs if not shape and _device(n) not in ("axis", "timer")]
    images = [n for n, _, shape, _ in specs if len(shape) == 2]
    x = f"axis:{motors[0].name}" if motors else "timer:elapsed_time"
    plots: list[dict[str, Any]] = []
    if mesh and len(motors) >= 2:
        y = f"axis:{motors[1].name}"
        items = [{"kind": "scatter", "x": x, "y": y, "value": v} for v in scalars]
        plots.append({"kind": "scatter-plot", "items": items})
    elif scalars:
        items = [{"kind": "curve", "x": x, "y": y} for y in scalars]
        plots.append({"kind": "curve-plot", "items": items})
    plots += [{"kind": "image-plot", "items": [{"kind": "image", "image": i}]} for i in images]
    return plots


def positioners(motors: Sequence[SimMotor], when: str) -> dict[str, Any]:
    """``positioners_<when>`` (and its dial twin: simulated motors have no offset) and
    the units, as BLISS records them at the start and end of a scan."""
    where = {m.name: m.position for m in motors}
    out: dict[str, Any] = {f"positioners_{when}": where, f"positioners_dial_{when}": dict(where)}
    if when == "start":
        out["positioners_units"] = {m.name: m.unit for m in motors}
    return out


def start_info(
    specs: Sequence[ChannelSpec], motors: Sequence[SimMotor], started: float, mesh: bool
) -> dict[str, Any]:
    """The BLISS keys a scan has from its creation (``instrument``: the simulated beamline
    has no instrument metadata; ``scan_meta_categories`` names the categories present)."""
    chain, devices = chain_info(specs, motors)
    return {
        "channels": channels_info(specs),
        "acquisition_chain": chain,
        "devices": devices,
        "plots": plots_info(specs, motors, mesh),
        "positioners": positioners(motors, "start"),
        "instrument": {},
        "scan_meta_categories": ["positioners", "instrument"],
        "start_time": iso_now(started),
        "start_timestamp": started,
        "publisher": "databus",
    }


def end_info(info: dict[str, Any], motors: Sequence[SimMotor], ended: float) -> dict[str, Any]:
    """The keys BLISS adds when a scan ends: end time and the positioners at the end."""
    where = {**info.get("positioners", {}), **positioners(motors, "end")}
    return {"end_time": iso_now(ended), "end_timestamp": ended, "positioners": where}
