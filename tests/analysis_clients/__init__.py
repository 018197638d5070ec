"""What the analysis tests share: the classes ``databus run`` runs (``workers``) and the
look-up of the scan an analysis derived."""

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
