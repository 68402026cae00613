"""Shared fixtures: real face crops from ../shared, and one small trained + exported model.

The model is trained once per session on a slice of the real SMILEsmileD crops; tests that
need it skip (with the reason) where the shared data is absent.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from tests.skips import is_machine_skip

REPO = Path(__file__).resolve().parents[1]
SMILES_LEVELS = ("not_smiling", "smiling")
ALLOW_SKIPS = "EDGE_SMW_ALLOW_SKIPS"
# The user's own cache holds a SMILEsmileD download (`edge-smw data smiles`)...
USER_SMILES_CACHE = (Path(os.environ["EDGE_SMW_CACHE"]) if os.environ.get("EDGE_SMW_CACHE")
                     else Path.home() / ".cache" / "edge-smw") / "smiles"
# ...while feature and backbone caches of the tests survive between runs here.
os.environ.setdefault("EDGE_SMW_CACHE", str(REPO / ".pytest_cache" / "edge-smw-cache"))


def has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def smiles_dir() -> Path:
    """Real face crops through the project's one resolver ($EDGE_SMW_SMILES_DIR,
    ../shared/data/smilesmiled, the user cache); never downloads (scripts/test.sh does)."""
    from edge_smw.data.smiles import GET_SMILES_COMMAND, resolve_smiles_dir

    found = resolve_smiles_dir(cache_dir=USER_SMILES_CACHE, progress=False)
    if found is None:
        pytest.skip(f"real face crops not found ($EDGE_SMW_SMILES_DIR, ../shared/data/"
                    f"smilesmiled, {USER_SMILES_CACHE}); get them with `{GET_SMILES_COMMAND}`")
    return found[0]


@pytest.fixture(scope="session")
def smiles_run(smiles_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder trained on 300 real crops per level (about 15 s on 2 cores, cached)."""
    if not has_torch():
        pytest.skip("torch is not installed (pip install edge-smw[train])")
    from edge_smw.data.datasets import load_dataset
    from edge_smw.data.sources import DataSource
    from edge_smw.train.pipeline import TrainOptions, train_run

    out = tmp_path_factory.mktemp("smiles_run")
    dataset = load_dataset(smiles_dir, levels=SMILES_LEVELS)
    train_run(DataSource(dataset, True, "smiles-share"), out,
              TrainOptions(max_per_level=300, compare_losses=False, progress=False,
                           lrs=(0.003, 0.01), momenta=(0.5, 0.9)))
    return out


@pytest.fixture(scope="session")
def smiles_onnx(smiles_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fp32 ONNX export of ``smiles_run``, with the feature-map output."""
    from edge_smw.export.onnx import export_fp32
    from edge_smw.train.checkpoint import load_checkpoint

    out = tmp_path_factory.mktemp("smiles_export") / "model.onnx"
    return export_fp32(load_checkpoint(smiles_run), out, feature_map=True)


@pytest.fixture(scope="session")
def smiles_int8(smiles_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cpu-flavour INT8 model of ``smiles_run``, made by the real export pipeline (its
    parity gate passed on the run's validation split)."""
    from edge_smw.artifacts.formats import INT8_CPU
    from edge_smw.export.pipeline import export_model
    from edge_smw.export.settings import ExportSettings

    out = tmp_path_factory.mktemp("smiles_int8")
    # the weight width of the CPU the tests run on (8-bit with VNNI), as before --target-cpu
    export_model(smiles_run, out, ExportSettings(int8=True, flavours=("cpu",), latency_runs=3,
                                                 target_cpu="build-machine"), progress=False)
    return out / INT8_CPU.file_name


@pytest.fixture(scope="session")
def smiles_test_items(smiles_run: Path):
    """The run's own held-out test split (real crops the head never saw)."""
    from edge_smw.data.datasets import SplitManifest

    return SplitManifest.load(smiles_run / "split.json").items("test")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session: 2 CPUs, a 500 MB object store, no dashboard.

    The engine joins it (``ray.is_initialized()``) instead of starting its own.
    """
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not installed (pip install edge-smw[ray])")
    ray.init(num_cpus=2, object_store_memory=500 * 1024 * 1024, include_dashboard=False,
             logging_level="WARNING")
    yield ray
    ray.shutdown()


# -- skips, counted by reason ----------------------------------------------------------------
_SKIPS: Counter[str] = Counter()


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPS[_reason(report)] += 1


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _SKIPS[_reason(report)] += 1


def _setup_skips() -> int:
    return sum(n for reason, n in _SKIPS.items() if not is_machine_skip(reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Skips that mean an incomplete setup fail the run unless they are allowed."""
    if exitstatus == 0 and _setup_skips() and os.environ.get(ALLOW_SKIPS) != "1":
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _SKIPS:
        return
    from edge_smw.data.smiles import GET_SMILES_COMMAND

    write = terminalreporter.write_line
    machine = {r: n for r, n in _SKIPS.items() if is_machine_skip(r)}
    setup = {r: n for r, n in _SKIPS.items() if not is_machine_skip(r)}
    terminalreporter.section("skips by reason")
    if machine:
        write(f"{sum(machine.values())} skipped, right on this machine (no GPU / TensorRT / "
              "opt-in):")
        for reason, n in sorted(machine.items(), key=lambda kv: -kv[1]):
            write(f"  {n:4d}  {reason}")
    if setup:
        write(f"{sum(setup.values())} skipped because the setup is incomplete: THESE TESTS DID "
              "NOT RUN", red=True, bold=True)
        for reason, n in sorted(setup.items(), key=lambda kv: -kv[1]):
            write(f"  {n:4d}  {reason}", red=True)
        if any("real face crops" in r for r in setup):
            write(f"  get the real face crops with `{GET_SMILES_COMMAND}` (online), "
                  f"`{GET_SMILES_COMMAND} --from DIR` or EDGE_SMW_SMILES_DIR=DIR", bold=True)
        if os.environ.get(ALLOW_SKIPS) == "1":
            write(f"  {ALLOW_SKIPS}=1: these skips are allowed, the run does not fail for them")
        else:
            write(f"  the run fails for them; set {ALLOW_SKIPS}=1 where skipping is meant",
                  red=True)

