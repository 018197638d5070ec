"""``databus web`` (the live view in the browser) against the targets of issue 17, with
Debian's chromium (headless, driven by playwright) as the pages.

    python bench/web.py            # 3 rounds, medians
    python bench/web.py --quick    # one short round

Each round starts ``python -m databus web`` (a process of its own, on a free port, with
DATABUS_URL and a DATABUS_PREFIX of its own) on a private embedded server; this script
publishes.

- send_to_page_ms_p99: one page; a scan of 4 float64 channels at 1 kHz (4 s, planned
  4000 points). The page logs, for every plot message, the last point number it carries
  and when it arrived (``performance.timeOrigin + performance.now()``); the publisher
  notes ``time.time()`` as it sends each point (one clock: same machine). A point's
  latency is the arrival of the first message reaching its number minus its send time;
  the 99th percentile over the points after the first second (the page picks the new
  scan from the scans list, sent 4 times a second).
- frames_per_s_shown: one page; 2 MiB frames (1024 x 1024 uint16) at 50 Hz for 4 s;
  the frames the page drew on its canvas per second, the server at ``--max-fps 25`` (at
  its default of 10 a page draws 10 per second at most: the cap, not the speed).
- server_cpu_per_page: 20 pages open on the 1 kHz scan of 4 channels; the web server
  process's CPU time (user + system, /proc) over the scan, per second, divided by 20.

Prints one table of the medians over the rounds (figures, units, targets), then as its
last line one JSON object with them.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _server import Figure, bench_arguments, bench_server, report, stop_process

import databus

CHROMIUM = "/usr/bin/chromium"
SESSION = "bench_web"
PREFIX = "benchweb"
PAGES = 20
FIGURES: dict[str, Figure] = {
    "send_to_page_ms_p99": ("ms", 50.0, "<="),
    "send_to_page_ms_p50": ("ms", None, "<="),
    "frames_per_s_shown": ("frames/s", 10.0, ">="),
    "server_cpu_per_page": ("cores", 0.02, "<="),
}
LOG_POINTS = """() => { const log = window.benchLog = [];
  window.databusView.onPoints = (h, a, t) => log.push([a.index[a.index.length - 1], t]); }"""


def start_web(url: str, prefix: str, *args: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "DATABUS_URL": url, "DATABUS_PREFIX": prefix}
    proc = subprocess.Popen(
        [sys.executable, "-m", "databus", "web", "--port", "0", "--session", SESSION, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    if "serving" not in line:
        raise RuntimeError(f"databus web did not start: {line}")
    return proc, line.split()[3]


def scalar_scan(bus: databus.Bus, seconds: float, rate: float = 1000.0) -> list[float]:
    """A scan of 4 scalar channels at ``rate`` points/s; the send time of each point."""
    npoints = int(seconds * rate)
    scan = bus.session(SESSION).create_scan(title="web bench scalars", npoints=npoints)
    writers = [scan.channel(f"bench:c{i}", "float64", ()) for i in range(4)]
    scan.prepare()
    scan.start()
    sent, start = [], time.perf_counter()
    for i in range(npoints):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent.append(time.time())
        for w in writers:
            w.send(float(i))
    scan.end()
    return sent


def frame_scan(bus: databus.Bus, seconds: float, rate: float = 50.0) -> float:
    """A scan of 2 MiB frames at ``rate`` per second; its duration."""
    count = int(seconds * rate)
    scan = bus.session(SESSION).create_scan(title="web bench frames", npoints=count)
    image = scan.channel("bench:image", "uint16", (1024, 1024))
    rng = np.random.default_rng(1)
    pool = [rng.integers(0, 4000, (1024, 1024), dtype=np.uint16) for _ in range(4)]
    scan.prepare()
    scan.start()
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        image.send(pool[i % len(pool)])
    scan.end()
    return time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_connected(page) -> None:
    page.wait_for_function("() => window.databusView.connected", timeout=15000)


def latency(browser, url: str, bus: databus.Bus, seconds: float) -> tuple[float, float]:
    page = browser.new_page(viewport={"width": 1600, "height": 900})
    page.goto(url)
    wait_connected(page)
    page.evaluate(LOG_POINTS)
    sent = scalar_scan(bus, seconds)
    time.sleep(0.5)
    log = page.evaluate("() => window.benchLog")
    page.close()
    arrivals = np.array([t for _, t in log])
    reached = np.maximum.accumulate(np.array([i for i, _ in log]))
    lat = []
    for i in range(int(1000 * 1.0), len(sent)):
        k = np.searchsorted(reached, i)
        if k < len(arrivals):
            lat.append(arrivals[k] - 1000 * sent[i])
    return float(np.percentile(lat, 99)), float(np.percentile(lat, 50))


def frames_shown(browser, url: str, bus: databus.Bus, seconds: float) -> float:
    page = browser.new_page()
    page.goto(url)
    wait_connected(page)
    done: list[float] = []
    thread = threading.Thread(target=lambda: done.append(frame_scan(bus, seconds)))
    page.wait_for_timeout(100)
    thread.start()
    page.wait_for_function("() => window.databusView.frame.drawn >= 1", timeout=15000)
    first = page.evaluate("() => [window.databusView.frame.drawn, performance.now()]")
    thread.join()
    last = page.evaluate("() => [window.databusView.frame.drawn, performance.now()]")
    page.close()
    return (last[0] - first[0]) / ((last[1] - first[1]) / 1000)


def cpu_per_page(browser, url: str, pid: int, bus: databus.Bus, seconds: float) -> float:
    context = browser.new_context()
    pages = [context.new_page() for _ in range(PAGES)]
    for page in pages:
        page.goto(url)
    for page in pages:
        wait_connected(page)
    before, t0 = cpu_seconds(pid), time.perf_counter()
    scalar_scan(bus, seconds)
    used = (cpu_seconds(pid) - before) / (time.perf_counter() - t0)
    context.close()
    return used / PAGES


def one_round(url: str, seconds: float, prefix: str) -> dict[str, float]:
    """The figures of one round, on key prefix ``prefix``: a round's pages see none of
    the scans of the rounds before (a page shows the newest scan first)."""
    from playwright.sync_api import sync_playwright

    bus = databus.connect(url, settings=databus.Settings(url=url, prefix=prefix))
    web, page_url = start_web(url, prefix, "--max-fps", "25")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
            p99, p50 = latency(browser, page_url, bus, seconds)
            fps = frames_shown(browser, page_url, bus, seconds)
            cpu = cpu_per_page(browser, page_url, web.pid, bus, seconds)
            browser.close()
    finally:
        stop_process(web, 10)
        bus.close()
    return {
        "send_to_page_ms_p99": p99,
        "send_to_page_ms_p50": p50,
        "frames_per_s_shown": fps,
        "server_cpu_per_page": cpu,
    }


def main() -> int:
    args = bench_arguments(__doc__).parse_args()
    rounds = 1 if args.quick else args.rounds or 3
    seconds = 2.0 if args.quick else 4.0
    if not os.path.exists(CHROMIUM):
        print(f"bench/web.py needs {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 2
    with bench_server(args.url) as url:
        results = [one_round(url, seconds, f"{PREFIX}{i}") for i in range(rounds)]
    out = {name: statistics.median(r[name] for r in results) for name in FIGURES}
    return report(FIGURES, out, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
