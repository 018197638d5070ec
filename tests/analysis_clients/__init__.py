"""What the analysis tests share: the classes ``databus run`` runs (``workers``), dranspose
dumps made by dranspose (``dumps``), the look-up of the scan an analysis derived, and the
reading of what ``databus run`` prints."""

import ast
import threading
import time

import databus


def derived_scan(bus, source, *, session, analysis="*", timeout=60.0):
    """The ended scan analysis ``analysis`` published in ``session`` for scan ``source``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, found = bus.find_scans(session=session, source=source, analysis=analysis)
        for key in found:
            node = bus.scan(key)
            if node.state >= databus.ScanState.ENDED:
                return node
        time.sleep(0.1)
    raise AssertionError(f"no derived scan of {source} ended within {timeout} s")


def lines_until(proc, text, deadline):
    """What ``proc`` printed up to its first line holding ``text`` (or ``deadline``), read by
    a thread: a selector would not see lines already in the pipe's buffer."""
    lines: list[str] = []
    done = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(max(0.0, deadline - time.monotonic()))
    seen = "".join(lines)
    if text not in seen:
        raise AssertionError(f"no line with {text!r}:\n{seen}")
    return seen


def logged_deltas(output):
    """The deltas the tutorial's reducer logs at finish (``delta were [...]``)."""
    logged = next(line for line in output.splitlines() if "delta were" in line)
    listed = logged.split("delta were ", 1)[1].replace("np.float64(", "(")
    return ast.literal_eval(listed)
