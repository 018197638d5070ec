"""An unmodified bluesky ``RemoteDispatcher`` with ``LiveTable`` and a recording callback.

Usage: dispatcher.py ADDRESS OUT STOPS [--deserializer pickle|msgpack|msgpack-numpy]
[--fields a,b] [--slow SECONDS] [--prefix P]. Every (name, doc) it gets is appended to OUT as
msgpack-numpy (flushed per document); LiveTable prints the ``fields`` of the primary stream
to stdout; ``--slow`` sleeps that long in every document. Prints READY once its loop runs,
and exits 0 after the STOPS-th stop document.
"""

import argparse
import os
import pickle
import sys
import time

import msgpack
import msgpack_numpy
from bluesky.callbacks import LiveTable
from bluesky.callbacks.zmq import RemoteDispatcher

DESERIALIZERS = {
    "pickle": pickle.loads,  # bluesky's default, what the dispatcher uses when not told
    "msgpack": msgpack.unpackb,
    "msgpack-numpy": msgpack_numpy.unpackb,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("out")
    parser.add_argument("stops", type=int)
    parser.add_argument("--deserializer", default="pickle", choices=sorted(DESERIALIZERS))
    parser.add_argument("--fields", default="")
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--prefix", default="")
    args = parser.parse_args()
    prefix = args.prefix.encode()
    if args.deserializer == "pickle":
        dispatcher = RemoteDispatcher(args.address, prefix=prefix)
    else:
        deserializer = DESERIALIZERS[args.deserializer]
        dispatcher = RemoteDispatcher(args.address, prefix=prefix, deserializer=deserializer)
    out = open(args.out, "wb")  # noqa: SIM115 (open for the whole run)
    stops = 0

    def record(name, doc):
        nonlocal stops
        if args.slow:
            time.sleep(args.slow)
        out.write(msgpack_numpy.packb([name, doc]))
        out.flush()
        if name == "stop":
            stops += 1
            if stops == args.stops:
                out.close()
                sys.stdout.flush()
                os._exit(0)

    if args.fields:
        dispatcher.subscribe(LiveTable(args.fields.split(",")))
    dispatcher.subscribe(record)
    dispatcher.loop.call_soon(lambda: print("READY", flush=True))
    dispatcher.start()


if __name__ == "__main__":
    main()
