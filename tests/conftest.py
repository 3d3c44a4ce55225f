"""Suite-wide hooks."""

import sys
import threading


def pytest_sessionfinish(session, exitstatus):
    """Name the threads still alive when the suite ends: a leaked daemon thread that holds
    tensors at interpreter exit can abort the process after every test has passed."""
    alive = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if alive:
        print(f"\nthreads alive at session end: {sorted(alive)}", file=sys.stderr)
