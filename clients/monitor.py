"""A live terminal view of a session: one line per scan with a progress bar, redrawn in
place on a terminal, or a line per start and end when the output is a file or a pipe.

    databus monitor [--session NAME]
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from typing import TextIO

import databus

_BAR = 30


@dataclasses.dataclass
class ScanLine:
    """What the monitor knows of one scan."""

    key: str
    title: str
    npoints: int
    points: int = 0
    reason: str | None = None
    error: str | None = None
    channels: list[str] = dataclasses.field(default_factory=list)

    def render(self) -> str:
        done = self.points
        if self.npoints:
            filled = min(_BAR, round(_BAR * done / self.npoints))
            bar = f"[{'#' * filled}{'.' * (_BAR - filled)}] {done:>5}/{self.npoints:<5}"
        else:
            bar = f"[{'~' * _BAR}] {done:>5} points"
        state = self.reason or "running"
        return f"{self.title[:44]:<44} {bar} {state}"


def _line(scan: databus.ScanNode) -> ScanLine:
    """A new scan's line, from its info; a title or npoints of the wrong type is left
    out (the scan's name, no bar) rather than stopping the monitor."""
    title = scan.info.get("title")
    try:
        npoints = max(0, int(scan.info.get("npoints") or 0))
    except (TypeError, ValueError, OverflowError):
        npoints = 0
    return ScanLine(scan.db_name, title if isinstance(title, str) else scan.name, npoints)


class Monitor:
    """Follows ``session`` in a background thread and draws its scans on ``out``.
    ``lines`` holds every scan seen, in order; ``wait_idle`` waits for running ones."""

    def __init__(self, session: databus.Session, out: TextIO | None = None) -> None:
        self.session = session
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.lines: dict[str, ScanLine] = {}
        self._drawn = 0
        self._stop = databus.StopHandler()
        self._started = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._follow, name="databus-monitor", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise databus.ReadTimeout("the monitor did not start following the session")

    def _follow(self) -> None:
        for event in self.session.follow(stop_handler=self._stop, started_event=self._started):
            with self._lock:
                self._on(event)

    def _on(self, event: databus.Event) -> None:
        node = event.node
        kind = event.type
        if kind is databus.EventType.NEW_NODE and node.type in ("scan", "scan_group"):
            self.lines[node.db_name] = _line(node)
            self._announce(self.lines[node.db_name], ended=False)
        elif kind is databus.EventType.NEW_DATA:
            line = self.lines.get(node.parent.db_name)
            if line is not None:
                line.points = max(line.points, event.data.first_index + event.data.block_size)
                if node.name not in line.channels:
                    line.channels.append(node.name)
                self._redraw()
        elif kind is databus.EventType.END_SCAN and node.db_name in self.lines:
            line = self.lines[node.db_name]
            line.reason, line.error = str(event.data.reason), event.data.error
            self._announce(line, ended=True)

    def _announce(self, line: ScanLine, *, ended: bool) -> None:
        if self.tty:
            self._redraw()
        else:
            print(
                line.render() if ended else f"{line.title}: started",
                file=self.out,
                flush=True,
            )

    def _redraw(self) -> None:
        if not self.tty:
            return
        lines = [line.render() for line in self.lines.values()]
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{text}\n" for text in lines))
        self.out.flush()
        self._drawn = len(lines)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every scan seen has ended; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(line.reason for line in self.lines.values()):
                    return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self._stop.stop()
        self._thread.join(2)


def main(argv: list[str] | None = None) -> int:
    """``databus monitor``: watch a session until Ctrl-C."""
    import argparse

    from databus.scan import current_session

    parser = argparse.ArgumentParser(prog="databus monitor", description=__doc__)
    parser.add_argument("--session", default=None, help="default: DATABUS_SESSION or demo_session")
    parser.add_argument("--url", default=None)
    args = parser.parse_args(argv)
    bus = databus.connect(args.url)
    monitor = Monitor(bus.session(args.session or current_session()))
    print(f"monitoring {monitor.session.name} on {bus!r} (Ctrl-C to quit)", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        monitor.close()
    return 0
