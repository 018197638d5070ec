"""The seed's ``server.py`` on the bus: a bluesky ``RemoteDispatcher`` fed by the bus's
to-bluesky bridge runs the crystal-mapping callbacks, whose maps go back to the bus (the
seed's ``DB2``) as scans of session ``--session``, which the NeXus writer files next to
their source (``<raw>_processed.h5``). From the repository's root::

    databus bridge to-bluesky --session S --bind tcp://127.0.0.1:5578 --serializer msgpack-numpy
    python -m examples.crystal_mapping.server 127.0.0.1:5578 --background background.npy

Prints ``Start the server ...`` once it listens and a line per crystal map; SIGINT or
SIGTERM stop it (``--maps N``: after N maps), the maps it made published first.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from typing import Any

import numpy as np
from bluesky.callbacks.zmq import RemoteDispatcher

from databus.clients.bluesky import BusPublisher, get_serializer

from .callbacks import ImageProcessor, PeakTracker, TrackLinker
from .peaks import DEFAULTS


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.crystal_mapping.server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("address", help="the bridge's address (host:port or tcp://host:port)")
    parser.add_argument("--background", required=True, help=".npy file of the background frame")
    parser.add_argument("--session", default="crystal_maps", help="the maps' session on the bus")
    parser.add_argument("--data-key", default="image", help="the frames' data key (default image)")
    parser.add_argument(
        "--serializer", choices=("msgpack", "msgpack-numpy"), default="msgpack-numpy"
    )
    parser.add_argument("--prefix", default="", help="the bridge's --prefix")
    for name, value in DEFAULTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--maps", type=int, default=0, help="stop after this many maps (0: never)")
    parser.add_argument("--url", default=None, help="the bus (default: DATABUS_URL or local)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    image = np.load(args.background, allow_pickle=False)  # never unpickle
    db2 = BusPublisher(args.url, session=args.session)
    dispatcher = RemoteDispatcher(
        args.address,
        prefix=args.prefix.encode(),
        deserializer=get_serializer(args.serializer).loads,
    )
    ip = ImageProcessor(args.data_key, subtrahend=image)
    pt = PeakTracker(
        args.data_key,
        diameter=args.diameter,
        percentile=args.percentile,
        separation=args.separation,
        min_intensity=args.min_intensity,
    )
    tl = TrackLinker(search_range=args.search_range, memory=args.memory)
    tl.subscribe(db2)
    pt.subscribe(tl)
    ip.subscribe(pt)
    dispatcher.subscribe(ip)
    maps = 0

    def stop() -> None:
        for task in asyncio.all_tasks(dispatcher.loop):  # its receiving task
            task.cancel()

    def made(name: str, doc: Any) -> None:
        nonlocal maps
        if name == "stop" and tl.crystal_map is not None:
            maps += 1
            print(f"crystal map {maps}: {len(tl.crystal_map.x)} linked peaks", flush=True)
            if maps == args.maps:
                stop()

    tl.subscribe(made)
    for sig in (signal.SIGINT, signal.SIGTERM):
        dispatcher.loop.add_signal_handler(sig, stop)
    dispatcher.loop.call_soon(lambda: print("Start the server ...", flush=True))
    try:
        dispatcher.start()
    except asyncio.CancelledError:  # stopped
        pass
    finally:
        db2.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
