"""DataLoader worker counts that fit the machine: never more workers than the cores this process may run on."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask: a container's or taskset's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # platforms without affinity (macOS)
        return os.cpu_count() or 1


def loader_workers(requested: int) -> int:
    """``requested`` DataLoader workers capped at :func:`usable_cores` (what torch's DataLoader warns above)."""
    return max(0, min(int(requested), usable_cores()))
