"""Sizes on disk, as people write them: `800GB`, `1.5 TB`, `2TiB` (decimal and binary units), and back."""
from __future__ import annotations

import math
import re

UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50}


def parse_size(text) -> int:
    """Bytes of `800GB`, `1.5 TB`, `2TiB` or a plain number of bytes; ValueError for anything else."""
    if isinstance(text, bool):
        raise ValueError(text)
    if isinstance(text, (int, float)):
        value, unit = float(text), "b"
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        if not match or match[2].lower() not in {**UNITS, "": 1}:
            raise ValueError(text)
        value, unit = float(match[1]), match[2].lower() or "b"
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return int(value * UNITS[unit])


def format_size(count: float) -> str:
    """Decimal units, as disks are sold: 12.76 GB, 1.53 TB, 830.2 MB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if count >= scale:
            return f"{count / scale:.{1 if unit == 'MB' else 2}f} {unit}"
    return f"{count / 1e3:.1f} kB"
