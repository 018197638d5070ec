"""``databus demo``: a short simulated beamline session, followed live.

It starts the embedded server if none runs (or uses ``--url``), then runs three scans
while a monitor draws them and an analysis thread plays the online-analysis loop:
  1. an alignment ``ascan`` of robz through the gauss counter, which the analysis stops
     just past the peak by setting the shared channel ``stop_alignment``;
  2. a ``loopscan`` of the diode and the monitor;
  3. a small ``amesh`` with the 2D detector ``sim_det``.
A NeXus writer follows the session too and writes every scan to ``--root`` (default
``./databus_demo``) while it runs. At the end it prints what happened and where the data is.

The live view in the browser (``databus web``) is served while the scans run, its URL
the first line printed: http://127.0.0.1:8000/, or a free port if 8000 is taken
(``--web-port N``, 0 for a free port; ``--no-web`` to go without). The scans start once a
page has opened it, or after ``--wait`` seconds (default 10; 0: at once); with a page
watching they run at a pace a person can follow (count times x``WATCHED_PACE``). Its
pages link the NeXus files for download. ``--serve`` keeps serving it after the scans,
until Ctrl-C.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

import databus
from databus import channels, scan
from databus.hooks import StopOnChannel
from databus.sim import SimDetector, diode, mon, roby, robz, sim_ct_gauss_noise

from .monitor import Monitor
from .web.server import ServerThread, make_app
from .writer import NexusWriter

#: The port the live view is served on when it is free (as ``databus web``'s default).
WEB_PORT = 8000
#: How many times longer each point counts while a page watches, so a person can follow.
WATCHED_PACE = 10


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


def live_view(bus: databus.Bus, session: str, root: Path, port: int) -> ServerThread:
    """The live view of ``session`` served on 127.0.0.1:``port`` (0: a free port; a free
    one too if ``port`` is taken), with the files under ``root`` for download."""
    app = make_app(bus, [session], files=root)
    try:
        server = ServerThread(app, port=port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            raise
        server = ServerThread(app, port=0)
    return server.start()


def run(
    session_name: str = "demo",
    url: str | None = None,
    out: TextIO | None = None,
    root: str = "databus_demo",
    web_port: int | None = WEB_PORT,
    serve: bool = False,
    wait: float = 10.0,
) -> int:
    """Run the demo with its live view on ``web_port`` (None: none; ``serve``: until
    Ctrl-C or SIGTERM after the scans, from the main thread), starting the scans once a
    page opens it or after ``wait`` seconds; the process exit code."""
    out = out or sys.stdout
    bus = databus.connect(url)
    view: ServerThread | None = None
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        if web_port is not None:
            view = live_view(bus, session_name, Path(root), web_port)
            print(f"live view: {view.url}", file=out, flush=True)
        pace = 1
        if view is not None and wait > 0:
            print(
                f"open it in a browser: the scans start when a page opens it, or in {wait:g} s",
                file=out,
                flush=True,
            )
            pace = WATCHED_PACE if view.wait_for_page(wait) else 1
        _scans(bus, session_name, root, out, pace)
        if view is not None:
            after = "" if serve else " (served while the demo ran: --serve keeps it up)"
            print(f"\nlive view: {view.url}{after}", file=out, flush=True)
            if serve:
                _serve(out)
    finally:
        if view is not None:
            view.stop()
        bus.close()
    return 0


def _serve(out: TextIO) -> None:
    """Keep serving the live view until Ctrl-C (SIGINT) or SIGTERM."""
    print("serving it until Ctrl-C", file=out, flush=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _scans(bus: databus.Bus, session_name: str, root: str, out: TextIO, pace: float) -> None:
    """The three scans (each point counting ``pace`` times the usual), followed by the
    monitor, the analysis and the writer; then what happened and where the data is."""
    started = time.monotonic()
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
        align = scan.ascan(
            robz, -5, 5, 500, 0.002 * pace, sim_ct_gauss_noise, diode, mon, run=False
        )
        align.set_watchdog_callback(StopOnChannel("stop_alignment", bus=bus))
        align.run()
        loop = scan.loopscan(50, 0.005 * pace, diode, mon)
        mesh = scan.amesh(
            robz, -1, 1, 6, roby, -1, 1, 4, 0.01 * pace, SimDetector(), sim_ct_gauss_noise
        )
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
        flag.close()

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="databus demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--session", default="demo", help="session name (default: demo)")
    parser.add_argument("--url", default=None, help="server URL (default: DATABUS_URL or embedded)")
    parser.add_argument("--root", default="databus_demo", help="where the NeXus files go")
    web = parser.add_mutually_exclusive_group()
    web.add_argument(
        "--web-port",
        type=int,
        default=WEB_PORT,
        metavar="N",
        help=f"serve the live view on port N (default {WEB_PORT}, a free one if taken; "
        f"0: a free port)",
    )
    web.add_argument("--no-web", action="store_true", help="do not serve the live view")
    parser.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="S",
        help="start the scans when a page opens the live view, or after S seconds "
        "(default 10; 0: at once); watched, they run at a pace to follow",
    )
    parser.add_argument(
        "--serve", action="store_true", help="keep serving the live view after the scans"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.web_port <= 65535:
        parser.error(f"--web-port must be a port number 0..65535, got {args.web_port}")
    if args.serve and args.no_web:
        parser.error("--serve keeps the live view up after the scans: drop --no-web")
    if args.wait < 0:
        parser.error(f"--wait is seconds >= 0 (0: start at once), got {args.wait:g}")
    port = None if args.no_web else args.web_port
    return run(
        args.session, args.url, root=args.root, web_port=port, serve=args.serve, wait=args.wait
    )
