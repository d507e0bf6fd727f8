"""The runtime's bookkeeping threads (the SQLite writer, the log writer) give way to the event loop.

They do work no request waits for: writing the run history, writing log lines. When one of them
and the event loop want the same core (one core per serving process, or a benchmark pinning the
server to one), the scheduler shares it between them in slices of a few milliseconds, and a
request the loop has in hand waits for the slice to end. On Linux each thread has its own nice
value: these threads run BOOKKEEPING_NICE steps below the process, so the loop takes the core
whenever it has work, and they still get about a tenth of it when it is busy (what they need
under the heaviest load measured: ~6 % for the run history of 13,000 requests a second).
"""

from __future__ import annotations

import os
import sys
import threading

__all__ = ["BOOKKEEPING_NICE", "give_way_to_event_loop"]

#: How many nice steps below its process a bookkeeping thread runs (19 is the lowest priority).
BOOKKEEPING_NICE = 10


def give_way_to_event_loop() -> None:
    """Lower the calling thread's scheduling priority by BOOKKEEPING_NICE (Linux; elsewhere, nothing).

    Called by the thread itself when it starts. Lowering a priority needs no privilege; a
    failure (a sandbox without the system call) leaves the thread as it was.
    """
    if sys.platform != "linux":  # elsewhere the call would set the nice value of the whole process
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + BOOKKEEPING_NICE))
    except OSError:
        pass
