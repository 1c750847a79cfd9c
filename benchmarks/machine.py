"""The two lines every benchmark prints above its tables: the machine (CPU model, cores, torch threads, device,
load) and the date, then the command that made them."""
from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

import torch


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                 if line.startswith("model name")), platform.processor())


def header(script: str, device: str | None = None, note: str = "") -> str:
    """``Machine: ...`` and ``Command: `python SCRIPT ARGS` `` (``note``: e.g. "shared with other jobs")."""
    cores = f"{os.cpu_count()} cores visible" + (f" ({note})" if note else "")
    return (f"Machine: {cpu_model()}, {cores}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{device or 'CPU only'}; load average {os.getloadavg()[0]:.2f}. Date: {datetime.date.today()}.\n"
            f"Command: `python {script} {' '.join(sys.argv[1:])}`\n")
