"""Two kinds of skip, told apart in the test summary.

A skip is a test that did not run. Some skips are right on this kind of machine (no GPU, no
TensorRT, an opt-in soak test): they carry ``MACHINE`` at the start of their reason. Every
other skip (no real face crops, no browser, no torch) means the setup is incomplete: the
test command reports it loudly and fails unless ``EDGE_SMW_ALLOW_SKIPS=1`` says it is meant.
"""

from __future__ import annotations

import pytest

MACHINE = "not for this machine: "


def machine_reason(reason: str) -> str:
    """A skipif reason for a skip that is right where the hardware/library is absent."""
    return MACHINE + reason


def skip_for_machine(reason: str) -> None:
    pytest.skip(machine_reason(reason))


def is_machine_skip(reason: str) -> bool:
    return reason.startswith(MACHINE) or reason.startswith("Skipped: " + MACHINE)
