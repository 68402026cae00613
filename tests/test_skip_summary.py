"""The test command counts skips by reason, and fails when tests did not run for want of
setup (no real face crops, no browser) unless EDGE_SMW_ALLOW_SKIPS=1 says it is meant."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent('''
    import pytest
    from tests.skips import machine_reason

    @pytest.mark.skipif(True, reason=machine_reason("no GPU here"))
    def test_gpu():
        pass

    def test_data():
        if {missing!r}:
            pytest.skip("real face crops not found (probe)")

    def test_runs():
        assert True
''')


def _run(tmp_path: Path, *, missing: bool, allow: bool) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import (pytest_collectreport, pytest_runtest_logreport,  # noqa\n"
        "                            pytest_sessionfinish, pytest_terminal_summary)\n")
    (tmp_path / "test_probe.py").write_text(PROBE.format(missing=missing))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("EDGE_SMW_ALLOW_SKIPS", None)
    if allow:
        env["EDGE_SMW_ALLOW_SKIPS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120, check=False)


def test_missing_data_fails_the_run_and_says_how_to_get_it(tmp_path: Path) -> None:
    done = _run(tmp_path, missing=True, allow=False)
    assert done.returncode == 1, done.stdout
    out = done.stdout
    assert "skips by reason" in out
    assert "1 skipped, right on this machine" in out and "no GPU here" in out
    assert "1 skipped because the setup is incomplete" in out
    assert "edge-smw data smiles" in out and "EDGE_SMW_ALLOW_SKIPS=1" in out


def test_allowed_skips_pass_and_machine_skips_alone_pass(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    allowed = _run(tmp_path / "a", missing=True, allow=True)
    assert allowed.returncode == 0, allowed.stdout
    assert "these skips are allowed" in allowed.stdout
    machine_only = _run(tmp_path / "b", missing=False, allow=False)
    assert machine_only.returncode == 0, machine_only.stdout
    assert "setup is incomplete" not in machine_only.stdout
