"""Publish a simulated alignment scan to the bus and show what Redis holds afterwards.

    python examples/publish_scan.py [--session NAME] [--points N] [--url URL]

With no URL (and no DATABUS_URL) it starts the embedded server. Each point moves a
simulated motor, reads a noisy gaussian counter, a monitor, and a 512x512 detector frame.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import databus
from databus._encoding import decode_entries


def frame(rng: np.random.Generator, position: float, size: int = 512) -> np.ndarray:
    """A detector frame: flat background, a powder ring whose intensity follows the peak."""
    y, x = np.ogrid[:size, :size]
    radius = np.hypot(x - size / 2, y - size / 2)
    ring = 400 * np.exp(-((radius - size / 4) ** 2) / 50) * np.exp(-(position**2) / 2)
    return rng.poisson(20 + ring).astype(np.uint16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--session", default="demo_session")
    parser.add_argument("--points", type=int, default=50)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()

    bus = databus.connect(args.url)
    rng = np.random.default_rng()
    positions = np.linspace(-5, 5, args.points)
    info = {
        "title": f"ascan robz -5 5 {args.points} 0.01",
        "type": "ascan",
        "npoints": args.points,
        "count_time": 0.01,
        "motors": ["robz"],
        "counters": ["sim_ct_gauss_noise", "mon"],
        "start": [-5.0],
        "stop": [5.0],
    }
    started = time.perf_counter()
    with bus.session(args.session).create_scan(info) as scan:
        robz = scan.channel("axis:robz", "float64", unit="mm")
        gauss = scan.channel("simulation:sim_ct_gauss_noise", "float64")
        mon = scan.channel("simulation:mon", "int32")
        image = scan.channel("sim_det:image", "uint16", (512, 512))
        scan.prepare()
        scan.start()
        for pos in positions:
            robz.send(pos)
            gauss.send(1000 * np.exp(-(pos**2) / 2) + rng.normal(0, 10))
            mon.send(int(rng.poisson(10_000)))
            image.send(frame(rng, pos))
    elapsed = time.perf_counter() - started

    print(f"published {scan.key} ({scan.end_reason.value}) in {elapsed:.2f} s on {bus!r}")
    stored = bus.scan(scan.key).channels
    for name, writer in scan.channels.items():
        desc = stored[name].desc
        entries = bus.redis.xrange(writer.key)
        blocks = [b for b in decode_entries(desc, writer.key, entries) if not isinstance(b, int)]
        last = blocks[-1].data[-1]
        shown = f"frame {last.shape} max {last.max()}" if np.ndim(last) else f"{last:.6g}"
        memory = bus.redis.memory_usage(writer.key, samples=0)
        print(
            f"  {name:<32} {len(writer):>5} points in {len(entries) - 1:>3} entries, "
            f"{memory / 1e3:>9.1f} kB, last = {shown}"
        )
    ttl = bus.redis.ttl(scan.key)
    print(f"kept in Redis for {ttl / 3600:.1f} h (retention TTL); see `databus server status`")
    bus.close()


if __name__ == "__main__":
    main()
