"""The stronger heads on real crops: trained, saved, exported as one graph, explained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMILES_LEVELS, has_torch

pytestmark = pytest.mark.skipif(not has_torch(), reason="torch not installed (edge-smw[train])")

VARIANTS = {
    "stages": {"head": "stages"},
    "grid2": {"head": "grid2"},
    "stages-finetune": {"head": "stages", "finetune_last": 6},  # from blocks.5.0
}


@pytest.fixture(scope="module")
def head_runs(smiles_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small run per new head on 100 real crops per level."""
    from edge_smw.data.datasets import load_dataset
    from edge_smw.data.sources import DataSource
    from edge_smw.train.pipeline import TrainOptions, train_run

    runs = {}
    for name, kw in VARIANTS.items():
        out = tmp_path_factory.mktemp(name)
        dataset = load_dataset(smiles_dir, levels=SMILES_LEVELS)
        train_run(DataSource(dataset, True, "smiles-share"), out,
                  TrainOptions(max_per_level=100, compare_losses=False, progress=False,
                               lrs=(0.01,), momenta=(0.9,), epochs=4, **kw))
        runs[name] = out
    return runs


def _test_pixels(run: Path, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    from edge_smw.data.crops import SkipReport, load_crop
    from edge_smw.data.datasets import SplitManifest
    from edge_smw.train.checkpoint import load_checkpoint

    contract = load_checkpoint(run).contract
    items = SplitManifest.load(run / "split.json").items("test")
    pixels = np.stack([load_crop(i.path, contract, detect=False, report=SkipReport())
                       for i in items[:n]])
    return pixels, np.array([i.level for i in items[:n]])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_head_is_recorded_and_exports_as_one_graph_with_a_float_tail(head_runs, name, tmp_path):
    import onnx
    import onnxruntime as ort
    import torch

    from edge_smw.export.onnx import export_fp32
    from edge_smw.export.quantize import float_tail
    from edge_smw.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(head_runs[name])
    assert ckpt.head_kind == VARIANTS[name]["head"]
    assert ckpt.finetune_last == VARIANTS[name].get("finetune_last", 0)
    assert bool(ckpt.tuned_state) == bool(ckpt.finetune_last)
    assert ckpt.config["head"] == ckpt.head_kind and ckpt.config["epochs"] >= 1
    path = export_fp32(ckpt, tmp_path / "model.onnx", feature_map=ckpt.kind.cam)
    model = onnx.load(str(path))
    # what the INT8 pipeline keeps in float: from the pooling ReduceMean to the softmax,
    # and nothing of the backbone (no Conv)
    tail = set(float_tail(model))
    ops = sorted(n.op_type for n in model.graph.node if n.name in tail)
    assert "ReduceMean" in ops and "Gemm" in ops and "Conv" not in ops, ops
    assert len(ops) <= 4, ops
    pixels, _ = _test_pixels(head_runs[name])
    x = ckpt.contract.normalize(pixels)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        reference = ckpt.build_model()(torch.from_numpy(x)).softmax(1).numpy()
    np.testing.assert_allclose(session.run(["probabilities"], {"input": x})[0], reference,
                               atol=1e-4)


def test_saved_model_reproduces_the_reported_test_accuracy(head_runs):
    """The fine-tuned units and head that were saved are the ones the report measured, and
    scoring a checkpoint (cached entries + tuned units) agrees with the full torch model."""
    import json

    import torch

    from edge_smw.data.datasets import SplitManifest
    from edge_smw.train.checkpoint import load_checkpoint
    from edge_smw.train.features import score_items

    run = head_runs["stages-finetune"]
    ckpt = load_checkpoint(run)
    items = SplitManifest.load(run / "split.json").items("test")
    feats, probs = score_items(ckpt, items, detect=False, progress=False)
    reported = json.loads((run / "train.json").read_text())["losses"]["ce"]
    assert reported["finetune"]["best_epoch"] <= reported["finetune"]["epochs_run"]
    assert float((probs.argmax(1) == feats.levels).mean()) == pytest.approx(
        reported["test"]["accuracy"])
    pixels, _ = _test_pixels(run, n=len(items))
    with torch.no_grad():
        full = ckpt.build_model()(torch.from_numpy(ckpt.contract.normalize(pixels)))
    np.testing.assert_allclose(full.softmax(1).numpy(), probs, atol=2e-3)  # float16 entries


def test_heat_maps_work_for_every_head_or_refuse_clearly(head_runs, tmp_path):
    from edge_smw.errors import InputError
    from edge_smw.explain.methods import build_method
    from edge_smw.export.onnx import export_fp32
    from edge_smw.train.checkpoint import load_checkpoint

    for name, run in head_runs.items():
        ckpt = load_checkpoint(run)
        model = ckpt.build_model()
        pixels, _ = _test_pixels(run, n=2)
        maps = build_method("gradcam", model, ckpt.contract).explain(pixels)
        assert len(maps) == 2 and all(m.heat.shape == (224, 224) for m in maps)
        if ckpt.kind.cam:
            cams = build_method("cam", model, ckpt.contract).explain(pixels)
            assert all(float(m.heat.max()) == pytest.approx(1.0) for m in cams)
        else:
            with pytest.raises(InputError, match="gradcam or saliency"):
                build_method("cam", model, ckpt.contract)
            with pytest.raises(InputError, match="without --feature-map"):
                export_fp32(ckpt, tmp_path / f"{name}.onnx", feature_map=True)


def test_stages_cam_on_the_device_matches_torch(head_runs, tmp_path):
    """The stages head's map (earlier stages pooled onto the last map, stacked) goes out as
    ``feature_map`` with the head weights: CAM without torch equals the torch CAM."""
    from edge_smw.explain.cam_numpy import runtime_cam
    from edge_smw.explain.methods import build_method
    from edge_smw.export.onnx import export_fp32
    from edge_smw.runtime import Runtime
    from edge_smw.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(head_runs["stages"])
    path = export_fp32(ckpt, tmp_path / "model.onnx", feature_map=True)
    pixels, _ = _test_pixels(head_runs["stages"], n=3)
    crops = [np.ascontiguousarray(p[..., ::-1]) for p in pixels]  # BGR crops, model size
    torch_maps = build_method("cam", ckpt.build_model(), ckpt.contract).explain(pixels)
    with Runtime(path, detect_faces=False, warmup=False) as rt:
        device_maps = runtime_cam(rt, crops)
    for a, b in zip(torch_maps, device_maps, strict=True):
        assert a.level == b.level
        assert np.corrcoef(a.heat.ravel(), b.heat.ravel())[0, 1] > 0.99


def test_plain_checkpoints_keep_the_old_format(smiles_run):
    """The poster's head writes checkpoint format 1 with no new fields, as before; a
    checkpoint without them loads as the linear head."""
    import torch

    from edge_smw.train.checkpoint import load_checkpoint

    payload = torch.load(smiles_run / "checkpoint.pt", weights_only=True)
    assert payload["format_version"] == 1
    assert "head_kind" not in payload and "tuned_state" not in payload
    ckpt = load_checkpoint(smiles_run)
    assert ckpt.head_kind == "linear" and ckpt.finetune_last == 0 and not ckpt.tuned_state


def test_bad_head_options_fail_clearly(smiles_dir, tmp_path):
    from edge_smw.data.datasets import load_dataset
    from edge_smw.data.sources import DataSource
    from edge_smw.errors import InputError
    from edge_smw.train.pipeline import TrainOptions, train_run

    source = DataSource(load_dataset(smiles_dir, levels=SMILES_LEVELS), True, "smiles-share")
    with pytest.raises(InputError, match="unknown head 'grid9'"):
        train_run(source, tmp_path / "a", TrainOptions(head="grid9", progress=False))
    with pytest.raises(InputError, match="--finetune-last 40: the backbone has 18 units"):
        train_run(source, tmp_path / "b", TrainOptions(finetune_last=40, max_per_level=10,
                                                       progress=False))
