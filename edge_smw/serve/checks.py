"""One check for serve's number settings (frame rate, cool-down, disk floor).

NaN passes every ``<`` and ``>`` test and infinity passes ``> 0``, so a plain range test lets
both through (``--fps nan`` played a whole folder at once); every float setting goes here.
"""

from __future__ import annotations

import math

from edge_smw.errors import InputError


def check_number(value: float, name: str, *, positive: bool = False, unit: str = "") -> float:
    """``value`` if it is finite and >= 0 (``positive``: > 0), else one line naming ``name``."""
    low_ok = value > 0 if positive else value >= 0
    if not (math.isfinite(value) and low_ok):
        bound = "more than 0" if positive else "0 or more"
        raise InputError(f"{name} must be a finite number, {bound}{unit}, got {value:g}")
    return value
