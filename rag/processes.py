"""Which process holds a claim or runs a job, checkable by other processes of the same machine.

Writers' claims (`rag.documents`) and workers (`rag.jobs`) name their process by pid and start time, so a crashed
holder is known at once on its own machine instead of after its lease; elsewhere only the lease decides.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def machine() -> str:
    """This machine and pid namespace (boot id / namespace): a process id is checked only where it means the same
    process; empty where /proc cannot tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def started(pid: int) -> str | None:
    """When a process started (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields[19]
