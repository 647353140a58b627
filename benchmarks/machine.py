"""What a benchmark ran on, for the header line of its table."""

from __future__ import annotations

import os
import platform
import subprocess


def cpu_description() -> str:
    """CPU model (from ``lscpu`` where available) and the number of cores."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"
