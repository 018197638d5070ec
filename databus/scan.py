"""The scan runner: BLISS-style step scans over simulated (or any duck-typed) devices,
published through the bus, with watchdog callbacks.

    s = ascan(robz, -5, 5, 500, .001, sim_ct_gauss_noise, save=False, run=False)
    s.set_watchdog_callback(StopAlignmentHook())
    s.run()

A scan publishes one channel per motor (``axis:<name>``), the elapsed time
(``timer:elapsed_time``) and one per counter (``<controller>:<name>``; a detector gives a
frame channel, or a lima channel of file references). The watchdog's ``on_scan_data``
runs after every point; ``StopIteration`` from any callback stops the scan cleanly after
the current point (end reason ``stopped``), any other exception aborts it (``aborted``)
and is re-raised by ``run()``; Ctrl-C ends it as ``interrupted``. Any client can ask a
running scan to stop (``bus.scan(key).request_stop()``, ``databus stop KEY``); the runner
honours it before the next point.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._bus import Bus, default_bus
from ._encoding import ChannelKind
from ._errors import DatabusError
from ._publish import Scan as PublishedScan
from ._saving import scan_file
from ._scan_info import end_info, start_info
from ._states import EndReason
from ._store import keys
from ._store.schema import stop_reason
from ._store.wire import AnyLink, Outage
from ._timing import milliseconds
from .sim import ElapsedTimeCounter, PointContext, SimDetector, SimMotor

__all__ = [
    "Scan",
    "StepScan",
    "WatchdogCallback",
    "a2scan",
    "amesh",
    "ascan",
    "ct",
    "current_saving",
    "current_session",
    "dscan",
    "loopscan",
    "mesh_shape",
    "set_saving",
    "set_session",
    "timescan",
]

log = logging.getLogger(__name__)

_session: str | None = None
_saving_root: Path | None = None


def set_session(name: str | None) -> None:
    """Publish the following scans into session ``name`` (None: back to the default)."""
    global _session
    _session = name


def current_session() -> str:
    """``set_session``'s name, else ``$DATABUS_SESSION``, else ``demo_session``."""
    return _session or os.environ.get("DATABUS_SESSION") or "demo_session"


def set_saving(root: str | os.PathLike[str] | None) -> None:
    """Announce saved scans (``scan_info["filename"]``, as BLISS does) as files under
    ``root``: the files ``databus writer --root ROOT`` (session layout) writes them to.
    None: back to the default."""
    global _saving_root
    _saving_root = None if root is None else Path(root).absolute()


def current_saving() -> Path:
    """``set_saving``'s root, else ``$DATABUS_SAVING_ROOT``, else ``./databus_data``."""
    return _saving_root or Path(os.environ.get("DATABUS_SAVING_ROOT") or "databus_data").absolute()


class WatchdogCallback:
    """Hooks the runner calls. Subclass and override what you need.

    ``StopIteration`` raised from any of them stops the scan cleanly after the current
    point (end reason ``stopped``); any other exception aborts it (``aborted``) and
    ``run()`` re-raises it. ``on_timeout`` is called every ``watchdog_timeout`` seconds
    while no point arrives, from a background thread (or greenlet).
    """

    def __init__(self, watchdog_timeout: float = 1.0) -> None:
        if watchdog_timeout <= 0:
            raise ValueError(f"watchdog_timeout must be > 0 seconds, got {watchdog_timeout!r}")
        self.watchdog_timeout = watchdog_timeout

    @property
    def timeout(self) -> float:
        """``watchdog_timeout``, under BLISS's name for it."""
        return self.watchdog_timeout

    def on_scan_new(self, scan: StepScan, scan_info: dict[str, Any]) -> None:
        """The scan is prepared and about to start."""

    def on_scan_data(
        self, data_events: dict[str, Any], nodes: dict[str, Any], scan_info: dict[str, Any]
    ) -> None:
        """After each point: ``data_events`` maps channel names to this point's values,
        ``nodes`` channel names to the publishing channels."""

    def on_timeout(self) -> None:
        """No point for ``watchdog_timeout`` seconds (repeated while that lasts)."""

    def on_scan_end(self, scan_info: dict[str, Any]) -> None:
        """The scan has ended (whatever the reason)."""


class _HookFailed(Exception):
    """An exception a watchdog callback raised (the scan is aborted, not failed)."""


class StepScan:
    """A step scan: motors go through ``positions`` (one row per point), counters are
    read at each point after ``count_time`` seconds. Built by ``ascan`` and friends;
    ``run()`` publishes it. After a run: ``key``, ``end_reason``, ``error``, ``npoints_done``.
    """

    def __init__(
        self,
        scan_type: str,
        title: str,
        motors: Sequence[SimMotor],
        positions: np.ndarray | None,
        count_time: float,
        counters: Sequence[Any],
        *,
        npoints: int,
        save: bool = True,
        info: dict[str, Any] | None = None,
        restore: bool = False,
        bus: Bus | None = None,
    ) -> None:
        if count_time < 0:
            raise ValueError(f"count_time must be >= 0 seconds, got {count_time!r}")
        self.type, self.title, self.motors = scan_type, title, list(motors)
        self.positions = positions
        self.count_time = float(count_time)
        self.counters = [c for c in counters if not isinstance(c, ElapsedTimeCounter)]
        self.npoints = npoints
        self.save = save
        self._extra_info = dict(info or {})
        self._restore = restore
        self._bus = bus
        self._watchdog: WatchdogCallback | None = None
        self.key: str | None = None
        self.end_reason: EndReason | None = None
        self.error: str | None = None
        self.npoints_done = 0
        self._stop_reason: str | None = None
        self._abort: BaseException | None = None
        self._running = False
        self._last_point = 0.0
        self._started: float | None = None

    def __repr__(self) -> str:
        state = (
            self.end_reason.value if self.end_reason else ("running" if self._running else "new")
        )
        return f"<StepScan {self.title!r} {state} {self.npoints_done}/{self.npoints or '∞'} points>"

    def set_watchdog_callback(self, callback: WatchdogCallback | None) -> None:
        """Call ``callback``'s hooks during the run (None: no more callbacks)."""
        if callback is not None and not isinstance(callback, WatchdogCallback):
            raise TypeError(
                f"a watchdog callback subclasses scan.WatchdogCallback, got {callback!r}"
            )
        self._watchdog = callback

    @property
    def scan_info(self) -> dict[str, Any]:
        """The scan info published with the scan: ours (title, type, npoints, count_time,
        save, motors, counters) and BLISS's (``_scan_info.start_info``)."""
        info: dict[str, Any] = {
            "title": self.title,
            "type": self.type,
            "npoints": self.npoints,
            "count_time": self.count_time,
            "save": self.save,
            "motors": [m.name for m in self.motors],
            "counters": [c.name for c in self.counters],
        }
        specs = [spec[:4] for spec in self._channel_specs()]
        started = self._started if self._started is not None else time.time()
        info.update(start_info(specs, self.motors, started, mesh=self.type.endswith("mesh")))
        for counter in self.counters:
            if isinstance(counter, SimDetector):
                info.update(counter.scan_info(self.motors, self.positions, self.npoints))
        info.update(self._extra_info)
        return info

    def _channel_specs(self) -> list[tuple[str, str, tuple[int, ...], str | None, ChannelKind]]:
        """(name, dtype, shape, unit, kind) of every channel the scan publishes."""
        specs: list[tuple[str, str, tuple[int, ...], str | None, ChannelKind]] = [
            (f"axis:{m.name}", "float64", (), m.unit, "array") for m in self.motors
        ]
        specs.append(("timer:elapsed_time", "float64", (), "s", "array"))
        for c in self.counters:
            if isinstance(c, SimDetector):
                kind: ChannelKind = "ref" if c.mode == "file" else "array"
                specs.append((c.channel_name, c.dtype.str, c.shape, None, kind))
            else:
                specs.append((c.channel_name, c.dtype, (), c.unit, "array"))
        return specs

    def run(self) -> StepScan:
        """Publish the scan point by point; returns once it has ended."""
        if self._running or self.end_reason is not None:
            raise DatabusError(f"{self!r} has already run; build a new scan to run it again")
        bus = self._bus or default_bus()
        self._started = time.time()
        info = self.scan_info
        detectors = [c for c in self.counters if isinstance(c, SimDetector) and c.mode == "file"]
        if detectors:
            info["detector_directories"] = sorted(
                {str(self._detector_dir(d, bus)) for d in detectors}
            )
        session = bus.session(current_session())
        if self.save:
            where = scan_file(current_saving(), session.name, 0, self._started, "session")
            info["filename"] = str(where)
        published = session.create_scan(info)
        self.key = published.key
        writers = {
            name: published.channel(name, dtype, shape, unit=unit, kind=kind)
            for name, dtype, shape, unit, kind in self._channel_specs()
        }
        start_positions = [m.position for m in self.motors]
        self._running = True
        monitor = bus.runner.spawn(
            lambda: self._monitor(bus), f"databus-scan-monitor-{published.number}"
        )
        reason, error, raised = EndReason.FINISHED, None, None
        try:
            for det in detectors:
                det.open_file(self._detector_file(det, bus, published), self.npoints)
            published.prepare()
            self._call("on_scan_new", self, info)
            published.start()
            self._points(published, writers, info)
            if self._stop_reason is not None:
                reason = EndReason.STOPPED
        except StopIteration:
            reason = EndReason.STOPPED
        except _HookFailed as exc:
            reason, raised = EndReason.ABORTED, exc.__cause__
            error = f"{type(raised).__name__}: {raised}"
        except KeyboardInterrupt as exc:
            reason, raised, error = EndReason.INTERRUPTED, exc, "KeyboardInterrupt"
        except BaseException as exc:
            reason, raised, error = EndReason.FAILED, exc, f"{type(exc).__name__}: {exc}"
        finally:
            self._running = False
            monitor.join(2.0)
            for det in detectors:
                det.close_file()
            if self._stop_reason and reason is EndReason.STOPPED and not error:
                error = f"stop requested: {self._stop_reason}"
            info.update(end_info(info, self.motors, time.time()))
            published.end(reason, error=error, info=info)
            self.end_reason, self.error = reason, error
            if self._restore:
                for motor, position in zip(self.motors, start_positions, strict=True):
                    motor.move(position)
        try:
            self._call("on_scan_end", info)
        except _HookFailed as exc:
            raised = raised or exc.__cause__
        if raised is not None:
            raise raised
        return self

    def _points(
        self, published: PublishedScan, writers: dict[str, Any], info: dict[str, Any]
    ) -> None:
        t0 = time.monotonic()
        self._last_point = t0
        elapsed_writer = writers["timer:elapsed_time"]
        index = 0
        while self.npoints == 0 or index < self.npoints:
            if self._stop_reason is not None:
                return
            if self._abort is not None:
                raise self._abort
            positions: dict[str, float] = {}
            if self.positions is not None:
                for motor, target in zip(self.motors, self.positions[index], strict=True):
                    motor.move(target)
                    positions[motor.name] = motor.position
            self._count()
            ctx = PointContext(index, positions, time.monotonic() - t0, self.count_time)
            values: dict[str, Any] = {f"axis:{n}": p for n, p in positions.items()}
            values["timer:elapsed_time"] = ctx.elapsed
            for counter in self.counters:
                values[counter.channel_name] = self._read(counter, ctx)
            for name, value in values.items():
                (elapsed_writer if name == "timer:elapsed_time" else writers[name]).send(value)
            index += 1
            self.npoints_done = index
            self._last_point = time.monotonic()
            self._call("on_scan_data", values, writers, info)

    @staticmethod
    def _read(counter: Any, ctx: PointContext) -> Any:
        if isinstance(counter, SimDetector):
            frame = counter.frame(ctx)
            return counter.store(frame) if counter.mode == "file" else frame
        return counter.read(ctx)

    def _count(self) -> None:
        """Wait ``count_time``, in slices so a stop or abort request is not kept waiting."""
        end = time.monotonic() + self.count_time
        while (left := end - time.monotonic()) > 0:
            if self._stop_reason is not None or self._abort is not None:
                return
            time.sleep(min(left, 0.05))

    def _call(self, hook: str, *args: Any) -> None:
        """Call a watchdog hook; StopIteration passes, other errors become _HookFailed."""
        if self._watchdog is None:
            return
        try:
            getattr(self._watchdog, hook)(*args)
        except StopIteration:
            raise
        except Exception as exc:
            raise _HookFailed(hook) from exc

    def _monitor(self, bus: Bus) -> None:
        """While the scan runs: take stop requests from the control stream, and call
        ``on_timeout`` whenever no point came for ``watchdog_timeout`` seconds."""
        ctl = keys.scan_control(str(self.key))
        cursor: Any = "0-0"
        link = bus.wire.link()  # its own connection: the read blocks
        outage = Outage(f"scan {self.key}: stop requests", revive=bus.revive_server)
        try:
            while self._running:
                cursor = self._watch_once(link, outage, ctl, cursor)
        finally:
            link.close()

    def _watch_once(self, link: AnyLink, outage: Outage, ctl: str, cursor: Any) -> Any:
        """One round of ``_monitor``: read stop requests (blocking up to 0.1 s), then
        call ``on_timeout`` if it is due. Returns the control stream's new cursor."""
        timeout = self._watchdog.watchdog_timeout if self._watchdog else 1.0
        block = milliseconds(min(0.1, timeout))
        try:
            replies = link.read({ctl: cursor}, 16, block)
            outage.over()
        except DatabusError as exc:  # the server went away: keep the watchdog going
            link.reset()
            outage.wait(exc)
            replies = []
        for _, entries in replies:
            for entry_id, fields in entries:
                cursor = entry_id
                self._stop_reason = stop_reason(fields) or self._stop_reason
        if self._watchdog is not None and time.monotonic() - self._last_point > timeout:
            self._last_point = time.monotonic()  # call again after another timeout
            try:
                self._watchdog.on_timeout()
            except StopIteration:
                self._stop_reason = "watchdog timeout"
            except Exception as exc:
                self._abort = _HookFailed("on_timeout")
                self._abort.__cause__ = exc
        return cursor

    @staticmethod
    def _detector_dir(det: SimDetector, bus: Bus) -> Path:
        """Where a file-mode detector writes its frames (named in the scan info's
        ``detector_directories``, the writer's default trusted roots)."""
        return Path(det.directory or (bus.settings.server_dir / "detectors")).absolute()

    def _detector_file(self, det: SimDetector, bus: Bus, published: PublishedScan) -> Path:
        safe = f"{published.session.name}_{published.number}_{det.name}.h5".replace("/", "_")
        return self._detector_dir(det, bus) / safe


#: BLISS's name for a step scan (``bliss.scanning.scan.Scan``), for scripts that use it.
Scan = StepScan


def _run_or_return(scan: StepScan, run: bool) -> StepScan:
    return scan.run() if run else scan


def _titled(name: str, *args: Any) -> str:
    return " ".join(
        [
            name,
            *(
                a.name if hasattr(a, "name") else f"{a:g}" if isinstance(a, float) else str(a)
                for a in args
            ),
        ]
    )


def ascan(
    motor: SimMotor,
    start: float,
    stop: float,
    npoints: int,
    count_time: float,
    *counters: Any,
    save: bool = True,
    run: bool = True,
    bus: Bus | None = None,
) -> StepScan:
    """``npoints`` points of ``motor`` from ``start`` to ``stop`` (absolute)."""
    _check_points(npoints)
    positions = np.linspace(start, stop, npoints)[:, None]
    scan = StepScan(
        "ascan",
        _titled("ascan", motor, start, stop, npoints, count_time),
        [motor],
        positions,
        count_time,
        counters,
        npoints=npoints,
        save=save,
        bus=bus,
        info={"start": [start], "stop": [stop]},
    )
    return _run_or_return(scan, run)


def dscan(
    motor: SimMotor,
    start: float,
    stop: float,
    npoints: int,
    count_time: float,
    *counters: Any,
    save: bool = True,
    run: bool = True,
    bus: Bus | None = None,
) -> StepScan:
    """Like ``ascan`` relative to the current position, which the motor returns to."""
    _check_points(npoints)
    here = motor.position
    positions = here + np.linspace(start, stop, npoints)[:, None]
    scan = StepScan(
        "dscan",
        _titled("dscan", motor, start, stop, npoints, count_time),
        [motor],
        positions,
        count_time,
        counters,
        npoints=npoints,
        save=save,
        restore=True,
        bus=bus,
        info={"start": [here + start], "stop": [here + stop]},
    )
    return _run_or_return(scan, run)


def a2scan(
    m1: SimMotor,
    s1: float,
    e1: float,
    m2: SimMotor,
    s2: float,
    e2: float,
    npoints: int,
    count_time: float,
    *counters: Any,
    save: bool = True,
    run: bool = True,
    bus: Bus | None = None,
) -> StepScan:
    """Two motors moving together, ``npoints`` points."""
    _check_points(npoints)
    positions = np.column_stack([np.linspace(s1, e1, npoints), np.linspace(s2, e2, npoints)])
    scan = StepScan(
        "a2scan",
        _titled("a2scan", m1, s1, e1, m2, s2, e2, npoints, count_time),
        [m1, m2],
        positions,
        count_time,
        counters,
        npoints=npoints,
        save=save,
        bus=bus,
        info={"start": [s1, s2], "stop": [e1, e2]},
    )
    return _run_or_return(scan, run)


def amesh(
    m1: SimMotor,
    s1: float,
    e1: float,
    n1: int,
    m2: SimMotor,
    s2: float,
    e2: float,
    n2: int,
    count_time: float,
    *counters: Any,
    save: bool = True,
    run: bool = True,
    bus: Bus | None = None,
) -> StepScan:
    """A grid: ``m1`` fast over ``n1`` points, ``m2`` slow over ``n2``."""
    _check_points(n1)
    _check_points(n2)
    fast, slow = np.meshgrid(np.linspace(s1, e1, n1), np.linspace(s2, e2, n2))
    positions = np.column_stack([fast.ravel(), slow.ravel()])
    scan = StepScan(
        "amesh",
        _titled("amesh", m1, s1, e1, n1, m2, s2, e2, n2, count_time),
        [m1, m2],
        positions,
        count_time,
        counters,
        npoints=n1 * n2,
        save=save,
        bus=bus,
        info={"start": [s1, s2], "stop": [e1, e2], "data_dim": 2, "shape": [n2, n1]},
    )
    return _run_or_return(scan, run)


def mesh_shape(info: Mapping[str, Any]) -> tuple[int, int] | None:
    """(slow, fast) points of a mesh scan, from its info (``amesh`` records ``data_dim`` 2
    and ``shape`` [slow, fast]); None for any other scan, or a shape that is not two
    positive whole counts (the info comes from any publisher)."""
    shape = info.get("shape")
    if info.get("data_dim") != 2 or not isinstance(shape, (list, tuple)) or len(shape) != 2:
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        return None
    return shape[0], shape[1]


def loopscan(
    npoints: int,
    count_time: float,
    *counters: Any,
    save: bool = True,
    run: bool = True,
    bus: Bus | None = None,
) -> StepScan:
    """``npoints`` counts with no motor."""
    _check_points(npoints)
    scan = StepScan(
        "loopscan",
        _titled("loopscan", npoints, count_time),
        [],
        None,
        count_time,
        counters,
        npoints=npoints,
        save=save,
        bus=bus,
    )
    return _run_or_return(scan, run)


def timescan(
    count_time: float,
    *counters: Any,
    npoints: int = 0,
    save: bool = True,
    run: bool = True,
    bus: Bus | None = None,
) -> StepScan:
    """Counts until stopped (or ``npoints`` of them if not 0)."""
    if npoints < 0:
        raise ValueError(f"npoints must be >= 0 (0: until stopped), got {npoints!r}")
    scan = StepScan(
        "timescan",
        _titled("timescan", count_time),
        [],
        None,
        count_time,
        counters,
        npoints=npoints,
        save=save,
        bus=bus,
    )
    return _run_or_return(scan, run)


def ct(
    count_time: float, *counters: Any, save: bool = False, run: bool = True, bus: Bus | None = None
) -> StepScan:
    """One count of ``count_time`` seconds (not saved unless asked)."""
    scan = StepScan(
        "ct",
        _titled("ct", count_time),
        [],
        None,
        count_time,
        counters,
        npoints=1,
        save=save,
        bus=bus,
    )
    return _run_or_return(scan, run)


def _check_points(npoints: int) -> None:
    if not isinstance(npoints, (int, np.integer)) or npoints < 1:
        raise ValueError(f"npoints must be a whole number >= 1, got {npoints!r}")
