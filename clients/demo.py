"""``databus demo``: a short simulated beamline session, followed live.

It starts the embedded server if none runs (or uses ``--url``), then runs three scans
while a monitor draws them and an analysis thread plays the online-analysis loop:
  1. an alignment ``ascan`` of robz through the gauss counter, which the analysis stops
     just past the peak by setting the shared channel ``stop_alignment``;
  2. a ``loopscan`` of the diode and the monitor;
  3. a small ``amesh`` with the 2D detector ``sim_det``.
A NeXus writer follows the session too and writes every scan to ``--root`` (default
``./databus_demo``) while it runs. At the end it prints what happened and where the data is.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import databus
from databus import channels, scan
from databus.hooks import StopOnChannel
from databus.sim import SimDetector, diode, mon, roby, robz, sim_ct_gauss_noise

from .monitor import Monitor
from .writer import NexusWriter


def _analysis(
    session: databus.Session,
    flag: channels.Channel,
    ready: threading.Event,
    stop: databus.StopHandler,
) -> None:
    """Stop the alignment scan once its gauss counts fall under half their maximum (the
    rule of BLISS's data-flow documentation; the counter's background keeps it from
    firing before the peak)."""
    best, done = 0.0, False
    for event in session.follow(stop_handler=stop, started_event=ready):
        if event.type is databus.EventType.NEW_NODE and event.node.type == "scan":
            best, done = 0.0, event.node.info.get("type") != "ascan"
        elif event.type is databus.EventType.NEW_DATA and "gauss" in event.node.name and not done:
            value = float(event.data.data[-1])
            if value > best:
                best = value
            elif value < best / 2:
                flag.value = True
                done = True


def run(
    session_name: str = "demo", url: str | None = None, out=None, root: str = "databus_demo"
) -> int:
    """Run the demo; returns the process exit code."""
    out = out or sys.stdout
    started = time.monotonic()
    bus = databus.connect(url)
    databus.set_default_bus(bus)
    scan.set_session(session_name)
    scan.set_saving(root)
    session = bus.session(session_name)
    print(f"databus demo: session {session_name!r} on {bus!r}", file=out, flush=True)

    writer = NexusWriter(bus, [session_name], root)
    writer_ready = threading.Event()
    writer_thread = threading.Thread(target=writer.run, args=(writer_ready,), daemon=True)
    writer_thread.start()
    writer_ready.wait(10)
    monitor = Monitor(session, out=out)
    flag = channels.Channel("stop_alignment", default_value=False, bus=bus)
    ready, stop = threading.Event(), databus.StopHandler()
    analysis = threading.Thread(target=_analysis, args=(session, flag, ready, stop), daemon=True)
    analysis.start()
    ready.wait(10)
    try:
        align = scan.ascan(robz, -5, 5, 500, 0.002, sim_ct_gauss_noise, diode, mon, run=False)
        align.set_watchdog_callback(StopOnChannel("stop_alignment", bus=bus))
        align.run()
        loop = scan.loopscan(50, 0.005, diode, mon)
        mesh = scan.amesh(robz, -1, 1, 6, roby, -1, 1, 4, 0.01, SimDetector(), sim_ct_gauss_noise)
        monitor.wait_idle(timeout=30)
        deadline = time.monotonic() + 20
        while len(writer.written) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.stop()
        monitor.close()
        analysis.join(2)
        writer.stop_handler.stop()
        writer_thread.join(5)

    print(f"\ndone in {time.monotonic() - started:.1f} s:", file=out)
    for s in (align, loop, mesh):
        assert s.key is not None and s.end_reason is not None  # each has run
        node = bus.scan(s.key)
        sizes = ", ".join(
            f"{c.short_name}{list(c.shape) if c.shape else ''} x{len(c)}"
            for c in node.channels.values()
        )
        print(
            f"  {s.key}  {s.title}: {s.end_reason.value} after {s.npoints_done} points"
            f"{' (' + s.error + ')' if s.error else ''}",
            file=out,
        )
        print(f"      channels: {sizes}", file=out)
    ttl = bus.settings.retention_ttl
    print(
        f"\nThe data is in Redis at {databus._errors.redact(bus.url)} for {ttl / 3600:.0f} h"
        f" (retention TTL). Read it back with:",
        file=out,
    )
    print(
        f"  python -c \"import databus; print(databus.connect().scan('{align.key}')"
        f".channels['simulation:sim_ct_gauss_noise'].get_as_array())\"",
        file=out,
    )
    files = sorted({w.split("::")[0] for w in writer.written})
    print("\nNeXus files (silx view or h5web show each entry's default plot):", file=out)
    for path in files:
        entries = ", ".join(w.split("::")[1] for w in writer.written if w.startswith(path))
        print(f"  {Path(path).resolve()}  entries {entries}", file=out)
    for error in writer.errors:
        print(f"  writer error: {error}", file=out)
    print(
        f"Follow a session live: python examples/follow_session.py --session {session_name}",
        file=out,
    )
    bus.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="databus demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--session", default="demo", help="session name (default: demo)")
    parser.add_argument("--url", default=None, help="server URL (default: DATABUS_URL or embedded)")
    parser.add_argument("--root", default="databus_demo", help="where the NeXus files go")
    args = parser.parse_args(argv)
    return run(args.session, args.url, root=args.root)
