"""Cost of the embedded server's append-only file (AOF): the same figures with it off and on.

    python bench/appendonly.py            # 3 rounds, medians (~30 s here)
    python bench/appendonly.py --quick    # 1 round, smaller data (~7 s)

Starts two private embedded servers (4 GB cap), ``EmbeddedServer(dir, appendonly=False)``
and ``EmbeddedServer(dir, appendonly=True)``, one per mode, kept for the whole run and
reused across rounds. ``appendonly=True`` only adds ``--appendonly yes``, so Valkey's
defaults apply (appendfsync everysec, automatic rewrite at 64 MB and 100 % growth, RDB
preamble); the header prints the live values. Each server's run directory is a temporary
directory on a real disk (``--dir``, default tempfile's: /tmp here, ext4), not /dev/shm, so
the AOF really goes to disk (this VM's disk sustains ~300 MB/s after the first GB). With
everysec the server only write()s to the page cache, a background thread fsyncs; on this VM
frames with the AOF on are bound by that write() (kernel time in the server: fresh page
cache pages), not by the disk: ``--dir /dev/shm`` gives about the same figure.

A round measures both modes, one after the other (off first in even rounds, on first in odd
ones, so drift cancels): point sends/s (one ``send(float)`` per point on 4 float64 channels,
publish.py's run_points), block points/s (1000-point float64 blocks, run_blocks) and frame
MB/s (1024x1024 uint16 frames in one scan, ``scan.end()`` included). Untimed housekeeping
keeps figures independent: each server first gets one frame run (a fresh server pays page
faults, see publish.py); before each timed figure the AOF is compacted (BGREWRITEAOF of the
then empty dataset, as a fresh server starts), no rewrite runs on either server, and
``os.sync()`` has flushed earlier writes, so a figure does not pay for the previous one's
writeback. Each scan's channel keys are deleted after it is measured.

Figures: medians of each mode and the median of the per-round on/off ratios; for the frame
run with the AOF on, also the growth of the AOF on disk (the files its manifest lists, once
any rewrite is done) per frame, and the AOF rewrites and delayed fsyncs (Valkey postponed a
write because the previous second's fsync was still running) during the run. Prints one
table, then as its last line one JSON object of the medians.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
from _server import bench_arguments
from publish import CHANNELS, make_frames, run_blocks, run_points

import databus
from databus._server import EmbeddedServer

MODES = ("off", "on")
# name: (unit, both modes measured, description)
FIGURES: dict[str, tuple[str, bool, str]] = {
    "point_sends_per_s": ("points/s", True, "send(float) x 4 float64 channels"),
    "block_points_per_s": ("points/s", True, "1000-point float64 blocks"),
    "frame_mb_per_s": ("MB/s", True, "1024x1024 uint16 frames, end() included"),
    "aof_bytes_per_frame": ("B", False, "AOF on disk after the frame run / frames"),
    "aof_rewrites": ("", False, "AOF rewrites during the frame run"),
    "aof_delayed_fsyncs": ("", False, "writes postponed for a slow fsync, frame run"),
}


class Side:
    """One embedded server (appendonly off or on) in its own directory, and a bus on it."""

    def __init__(self, stack: contextlib.ExitStack, root: str | None, appendonly: bool) -> None:
        mode = MODES[appendonly]
        self.dir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(dir=root, prefix=f"aof-{mode}-"))
        )
        self.appendonly = appendonly
        server = EmbeddedServer(self.dir, maxmemory=4 * 10**9, appendonly=appendonly)
        state = server.start()
        stack.callback(server.stop)
        self.bus = databus.connect(state.url, prefix="bench")
        stack.callback(self.bus.close)
        #: The server's admin user: AOF rewrites and its configuration.
        self.admin = redis.Redis.from_url(state.admin_url, decode_responses=True)
        stack.callback(self.admin.close)

    def persistence(self) -> dict[str, int]:
        info = self.bus.redis.info("persistence")
        return {k: v for k, v in info.items() if isinstance(v, int)}

    def settle(self, timeout: float = 120.0) -> None:
        """Wait until no AOF rewrite runs nor is scheduled, and none started for 0.3 s (the
        server checks for an automatic rewrite every 100 ms)."""
        if not self.appendonly:
            return
        deadline = time.monotonic() + timeout
        idle_since = None
        while time.monotonic() < deadline:
            info = self.persistence()
            if info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= 0.3:
                return
            time.sleep(0.05)
        raise TimeoutError(f"AOF rewrite still running after {timeout} s in {self.dir}")

    def compact(self) -> None:
        """Rewrite the AOF from the current (emptied) dataset, as a fresh server starts."""
        if self.appendonly:
            self.settle()
            self.admin.bgrewriteaof()
            self.settle()

    def aof_bytes(self) -> int:
        """Size of the files the AOF manifest lists (a finished rewrite's leftovers and a
        running one's temporary file are not the AOF)."""
        aof_dir = self.dir / self.admin.config_get("appenddirname")["appenddirname"]
        for _ in range(50):
            try:
                manifest = (aof_dir / f"{self.aof_name()}.manifest").read_text()
                names = [line.split()[1] for line in manifest.splitlines() if line.strip()]
                return sum((aof_dir / name).stat().st_size for name in names)
            except FileNotFoundError:  # a rewrite replaced the files under us
                time.sleep(0.05)
        raise RuntimeError(f"could not read the AOF manifest in {aof_dir}")

    def aof_name(self) -> str:
        return self.admin.config_get("appendfilename")["appendfilename"]


def _drop(bus: databus.Bus, scan: databus.Scan) -> None:
    bus.redis.delete(*[c.key for c in scan.channels.values()])


def run_frames(side: Side, frames: list[np.ndarray]) -> dict[str, float]:
    """MB/s of one send() per frame in one scan, until end() is acknowledged; with the AOF
    on, also its bytes on disk per frame, rewrites and delayed fsyncs during the run."""
    before = side.persistence() if side.appendonly else {}
    size0 = side.aof_bytes() if side.appendonly else 0
    scan = side.bus.session("bench").create_scan(title="frames")
    img = scan.channel("image", "uint16", (1024, 1024))
    scan.prepare()
    scan.start()
    start = time.perf_counter()
    for frame in frames:
        img.send(frame)
    scan.end()
    elapsed = time.perf_counter() - start
    out = {"frame_mb_per_s": sum(f.nbytes for f in frames) / elapsed / 1e6}
    if side.appendonly:
        side.settle()
        after = side.persistence()
        out["aof_bytes_per_frame"] = (side.aof_bytes() - size0) / len(frames)
        out["aof_rewrites"] = after["aof_rewrites"] - before["aof_rewrites"]
        out["aof_delayed_fsyncs"] = after["aof_delayed_fsync"] - before["aof_delayed_fsync"]
    _drop(side.bus, scan)
    return out


def _filesystem(path: str) -> str:
    """'device, type' of the mount holding ``path`` (best effort)."""
    best, found = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            dev, mnt, fstype = line.split()[:3]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, found = mnt, f"{dev}, {fstype}"
    return found


def main() -> int:
    parser = bench_arguments(__doc__, url=False)
    parser.add_argument(
        "--dir", default=None, help="where the servers' run directories go (default: tempfile's)"
    )
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    points = 50_000 if args.quick else 400_000
    block_points = 200_000 if args.quick else 2_000_000
    nframes = 50 if args.quick else 200
    root = os.path.realpath(args.dir or tempfile.gettempdir())
    fs = _filesystem(root)
    if "tmpfs" in fs:
        print(f"warning: {root} is on tmpfs ({fs}): the AOF never reaches a disk", file=sys.stderr)

    frames = make_frames(nframes)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with contextlib.ExitStack() as stack:
        sides = {m: Side(stack, root, m == "on") for m in MODES}
        config = sides["on"].admin.config_get("*aof*") | sides["on"].admin.config_get("appendfsync")
        for side in sides.values():  # fault in the servers' memory, untimed
            run_frames(side, frames)

        def quiesce() -> None:
            for side in sides.values():
                side.compact()
            os.sync()

        for r in range(rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            for mode in order:
                side = sides[mode]
                quiesce()
                res = {"point_sends_per_s": run_points(side.bus, points)[0]}
                quiesce()
                res["block_points_per_s"] = run_blocks(side.bus, block_points)
                quiesce()
                res.update(run_frames(side, frames))
                results[mode].append(res)

    out: dict[str, float] = {}
    for name, (_, both, _) in FIGURES.items():
        if both:
            off = [r[name] for r in results["off"]]
            on = [r[name] for r in results["on"]]
            out[f"{name}_off"] = statistics.median(off)
            out[f"{name}_on"] = statistics.median(on)
            out[f"{name}_ratio"] = statistics.median(b / a for a, b in zip(off, on, strict=True))
        else:
            out[name] = statistics.median(r[name] for r in results["on"])

    print(
        f"databus append-only bench: {rounds} round(s), medians; {points:,} points and "
        f"{block_points:,} in blocks x {CHANNELS} channels, {nframes} frames 1024x1024 "
        f"uint16 ({frames[0].nbytes} B each)"
    )
    print(
        f"AOF on: appendfsync {config['appendfsync']}, rewrite at "
        f"{config['auto-aof-rewrite-percentage']} % growth / "
        f"{int(config['auto-aof-rewrite-min-size']) / 2**20:g} MiB, rdb preamble "
        f"{config['aof-use-rdb-preamble']}; run dirs in {root} ({fs})"
    )
    print(f"{'figure':<22}{'off':>16}{'on':>16}  {'unit':<9}{'on/off':>7}  what")
    for name, (unit, both, what) in FIGURES.items():
        if both:
            off, on = f"{out[f'{name}_off']:,.2f}", f"{out[f'{name}_on']:,.2f}"
            ratio = f"{out[f'{name}_ratio']:.3f}"
        else:
            off, on, ratio = "-", f"{out[name]:,.2f}", ""
        print(f"{name:<22}{off:>16}{on:>16}  {unit:<9}{ratio:>7}  {what}")
    print(json.dumps({k: round(v, 4) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
