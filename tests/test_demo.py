"""``edge-smw demo --quick`` end to end, as a user runs it (a real process): every step runs,
the report's last lines name what it wrote and the next command, and that command (``serve``
on the demo's own camera frames) really scores faces."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve_support import REPO, ServeProcess, get_json, wait_until

STEPS = ("data", "train", "evaluate", "export", "runtime", "bench", "heatmaps", "fool", "frames")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("torch", reason="the demo trains: pip install edge-smw[train]")
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "edge_smw.cli.main", "demo", "--quick", "--out", str(out)],
        cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    return {"out": out, "stdout": proc.stdout, "stderr": proc.stderr, "summary": summary,
            "report": (out / "REPORT.md").read_text(encoding="utf-8")}


def test_it_says_at_the_start_how_long_it_takes_and_how_big_the_setup_is(demo: dict) -> None:
    from edge_smw.demo import FIRST_RUN_NOTE, SETUP_SIZE_GB

    first = demo["stderr"].strip().splitlines()[0]
    assert first == FIRST_RUN_NOTE
    assert "minutes" in first and f"{SETUP_SIZE_GB} GB" in first


def test_every_step_ran_and_the_report_shows_each(demo: dict) -> None:
    from edge_smw.artifacts.formats import FP32, INT8_CPU

    summary, report = demo["summary"], demo["report"]
    assert set(summary["seconds"]) == {*STEPS, "total"}
    for heading in ("## Training", "## Export and the parity gates", "## The exported files",
                    "## Quick bench", "## Heat maps", "## A fooling image", "## Files"):
        assert heading in report
    export = demo["out"] / "export"
    assert (export / FP32.file_name).is_file() and (export / INT8_CPU.file_name).is_file()
    assert set(summary["runtime"]) == {FP32.file_name, INT8_CPU.file_name}
    assert "drawings" in report and "not photos of people" in report
    # The report shows the bench's own verdicts; on the quick demo's 15 test crops an
    # agreement gate is "not judged: n too small", never a FAIL.
    gates = summary["bench"]["gates"]
    assert any(g["not_judged"] for g in gates), gates
    for gate in gates:
        assert gate["line"] in report
        assert not (gate["not_judged"] and gate["passed"] is False), gate
    assert (demo["out"] / "heatmaps_check" / "check.md").is_file()
    frames = sorted((demo["out"] / "frames").glob("*.jpg"))
    assert len(frames) == summary["frames"]["count"] > 0


def test_the_last_lines_give_full_paths_and_the_next_command(demo: dict) -> None:
    lines = demo["report"].rstrip().splitlines()
    assert demo["stdout"].rstrip().splitlines()[-1] == lines[-1]  # the CLI prints the report
    command = demo["summary"]["next_command"]
    assert lines[-1].strip() == command
    listed = lines[lines.index("## Files") + 2:]
    paths = [Path(line.split(": ", 1)[1]) for line in listed if line.startswith("- ")]
    assert len(paths) >= 8
    for path in paths:
        assert path.is_absolute() and path.exists(), path
    assert str(demo["out"] / "REPORT.md") in {str(p) for p in paths}


def test_the_printed_serve_command_scores_the_demo_frames(demo: dict) -> None:
    args = shlex.split(demo["summary"]["next_command"])
    assert args[:2] == ["edge-smw", "serve"]
    with ServeProcess([*args[2:], "--threads", "1"]) as proc:
        def latest_faces() -> list | None:
            status, data = get_json(proc.url + "/api/latest")
            return data["faces"] if status == 200 and data.get("faces") else None

        faces = wait_until(latest_faces, 120, what="a scored face from the demo's frames")
    levels = demo["summary"]["data"]["levels"]
    assert faces[0]["level"] in levels
    assert len(faces[0]["probabilities"]) == len(levels)


def test_the_next_command_serves_fp32_when_the_bench_fails_the_int8_file(tmp_path: Path) -> None:
    """An int8 file whose export gate passed on validation but whose answers the bench failed
    on the test crops is not what the demo tells a newcomer to serve; a slow quick-bench
    timing does not count against it."""
    from edge_smw.artifacts.formats import FP32, INT8_CPU
    from edge_smw.bench.config import load_gates
    from edge_smw.demo import INT8_PARITY_GATES, QUICK, _Demo

    assert set(INT8_PARITY_GATES) <= {g.name for g in load_gates().gates}
    demo = _Demo(tmp_path, QUICK, 0, False)
    demo.steps["export"] = {"models": {
        FP32.key: {"file": FP32.file_name, "gate": {"passed": True}},
        INT8_CPU.key: {"file": INT8_CPU.file_name, "gate": {"passed": True}}}}

    def bench(**verdicts):
        demo.steps["bench"] = {"gates": [{"name": k, "passed": v}
                                         for k, v in verdicts.items()]}
        return demo.deployable()

    assert bench() == INT8_CPU.file_name
    assert bench(int8_top1_agreement=True, int8_faster_than_fp32=False) == INT8_CPU.file_name
    assert bench(int8_top1_agreement=None) == INT8_CPU.file_name  # not judged: n too small
    assert bench(int8_top1_agreement=False) == FP32.file_name
    assert bench(int8_accuracy_drop=False) == FP32.file_name
    demo.steps["export"]["models"][INT8_CPU.key]["gate"]["passed"] = False
    assert bench() == FP32.file_name
