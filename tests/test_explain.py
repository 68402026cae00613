"""Heat maps on a model trained on real face crops: the three methods, cam on the exported ONNX
model (no torch) against cam in torch, the CLI's files, and bad inputs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="explain needs torch (pip install edge-smw[train])")

from edge_smw.cli.main import main  # noqa: E402
from edge_smw.explain import METHODS  # noqa: E402
from edge_smw.images import read_image  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(smiles_run: Path):
    from edge_smw.train.checkpoint import load_checkpoint

    return load_checkpoint(smiles_run)


@pytest.fixture(scope="module")
def model(checkpoint):
    return checkpoint.build_model()


@pytest.fixture(scope="module")
def two_faces(smiles_test_items) -> list[Path]:
    """One held-out crop of each level: two different faces."""
    firsts = {}
    for item in sorted(smiles_test_items, key=lambda i: str(i.path)):
        firsts.setdefault(item.level, item.path)
    return [firsts[level] for level in sorted(firsts)]


def _pixels(paths: list[Path], contract) -> np.ndarray:
    return np.stack([contract.to_model_pixels(read_image(p)) for p in paths])


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("method", METHODS)
def test_heat_maps_are_finite_crop_sized_and_differ(method, checkpoint, model, two_faces):
    from edge_smw.explain.methods import build_method

    contract = checkpoint.contract
    pixels = _pixels(two_faces, contract)
    maps = build_method(method, model, contract).explain(pixels, names=[str(p) for p in two_faces])
    assert len(maps) == 2
    for heat, px in zip(maps, pixels, strict=True):
        assert heat.heat.shape == px.shape[:2] == (contract.input_size, contract.input_size)
        assert np.all(np.isfinite(heat.heat))
        assert heat.heat.min() >= 0 and heat.heat.max() == pytest.approx(1.0)
        assert heat.probabilities.sum() == pytest.approx(1.0)
        assert heat.level == heat.predicted  # no --level: the predicted level is explained
    assert np.abs(maps[0].heat - maps[1].heat).mean() > 0.02


def test_explaining_another_level_flips_the_cam(checkpoint, model, two_faces):
    """Two levels: the centred scores are opposite, so are their raw CAMs."""
    import torch

    from edge_smw.explain.methods import build_method

    pixels = _pixels(two_faces[:1], checkpoint.contract)
    cam = build_method("cam", model, checkpoint.contract)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    np.testing.assert_allclose(cam.raw_maps(x, [0]), -cam.raw_maps(x, [1]), atol=1e-5)
    assert [h.level for h in (cam.explain(pixels, level=0)[0], cam.explain(pixels, level=1)[0])] \
        == [0, 1]


def test_gradcam_is_cam_without_bias(checkpoint, model, two_faces):
    """Grad-CAM's channel weights here are the centred head weights / (h*w): the grad-cam
    package's map must equal the numpy CAM without its bias term, through the same finish."""
    import torch

    from edge_smw.explain.cam_numpy import class_activation_map, finish_map
    from edge_smw.explain.methods import build_method

    pixels = _pixels(two_faces, checkpoint.contract)
    grad = build_method("gradcam", model, checkpoint.contract).explain(pixels)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        _, maps = model.forward_with_maps(build_method("cam", model, checkpoint.contract)
                                          .pixel_model.normalize(x))
    for g, fmap in zip(grad, maps.numpy(), strict=True):
        expected = finish_map(class_activation_map(fmap, checkpoint.head_weight, g.level),
                              checkpoint.contract.input_size)
        assert expected.max() > 0
        assert _corr(g.heat, expected) >= 0.99


def test_cam_from_onnx_runtime_matches_torch(checkpoint, model, smiles_onnx, two_faces,
                                            smiles_test_items):
    from edge_smw.explain.cam_numpy import runtime_cam
    from edge_smw.explain.methods import build_method
    from edge_smw.runtime import Runtime

    paths = two_faces + [i.path for i in smiles_test_items[1:3]]
    crops = [read_image(p) for p in paths]
    torch_maps = build_method("cam", model, checkpoint.contract).explain_crops(crops)
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", detect_faces=False) as runtime:
        onnx_maps = runtime_cam(runtime, crops)
        raw = runtime.infer(checkpoint.contract.apply_batch(crops[:1]))
    for t, o in zip(torch_maps, onnx_maps, strict=True):
        assert t.level == o.level
        np.testing.assert_allclose(t.probabilities, o.probabilities, atol=1e-4)
        assert _corr(t.heat, o.heat) >= 0.99
    # the device's CAM spreads exactly the exported logit over the image
    from edge_smw.explain.cam_numpy import class_activation_map

    logits = raw["logits"][0].astype(np.float64)
    bias = checkpoint.head_bias.astype(np.float64)
    for level in range(len(logits)):
        cam = class_activation_map(raw["feature_map"][0], checkpoint.head_weight, level, bias)
        assert cam.mean() == pytest.approx(logits[level] - logits.mean(), abs=1e-3)


def test_explain_cli_writes_figures_and_escaped_index(smiles_run, two_faces, tmp_path, capsys):
    odd = tmp_path / "in" / "a<b>&c.png"
    odd.parent.mkdir()
    shutil.copy(two_faces[0], odd)
    out = tmp_path / "out"
    code = main(["explain", str(smiles_run), str(odd), str(two_faces[1]), "--no-detect",
                 "--method", "saliency", "--level", "2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "saliency for smiling" in printed
    figures = sorted(out.glob("*.saliency.png"))
    assert len(figures) == 2
    assert all(read_image(f).shape[1] > 400 for f in figures)  # three panels side by side
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "a&lt;b&gt;&amp;c" in index and "a<b>" not in index


def test_explain_onnx_runs_cam_without_torch(smiles_onnx, two_faces, tmp_path):
    code = (
        "import sys\n"
        "from edge_smw.explain.api import explain_images\n"
        f"r = explain_images({str(smiles_onnx)!r}, [{str(two_faces[0])!r}], "
        f"out={str(tmp_path)!r}, detect=False)\n"
        "assert r.method == 'cam' and r.figures[0].is_file()\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "index.html").is_file()


def test_explain_lists_sub_folders_like_score(smiles_run, two_faces, tmp_path, capsys):
    album = tmp_path / "album"
    (album / "2024" / "june").mkdir(parents=True)
    shutil.copy(two_faces[0], album / "2024" / "june" / "a.png")
    shutil.copy(two_faces[1], album / "2024" / "b.png")
    code = main(["explain", str(smiles_run), str(album), "--no-detect", "--method", "cam",
                 "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.cam.png")) == ["a.cam.png",
                                                                          "b.cam.png"]


@pytest.mark.parametrize("detect", ["--no-detect", "--detect"])
def test_explain_refuses_an_unknown_detector_even_without_detection(smiles_run, two_faces,
                                                                    tmp_path, capsys, detect):
    code = main(["explain", str(smiles_run), str(two_faces[0]), detect, "--detector", "bogus",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "unknown face detector 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_explain_refuses_an_unknown_backend(smiles_run, two_faces, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:  # argparse: a usage error, exit 2
        main(["explain", str(smiles_run), str(two_faces[0]), "--backend", "foo",
              "--out", str(tmp_path / "o")])
    assert info.value.code == 2 and "invalid choice: 'foo'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["explain", "fool"])
def test_no_detector_mismatch_flag_where_nothing_checks_it(command, smiles_run, two_faces,
                                                          tmp_path, capsys):
    """explain and fool cut crops with whichever --detector is asked for: a flag allowing a
    mismatch would do nothing there, so they do not offer it."""
    with pytest.raises(SystemExit) as info:
        main([command, str(smiles_run), str(two_faces[0]), "--allow-detector-mismatch",
              "--out", str(tmp_path / "o"), *(["--target", "1"] if command == "fool" else [])])
    assert info.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_explain_onnx_refuses_gradient_methods(smiles_onnx, two_faces, tmp_path, capsys):
    code = main(["explain", str(smiles_onnx), str(two_faces[0]), "--no-detect",
                 "--method", "gradcam", "--out", str(tmp_path)])
    assert code == 2
    assert "needs gradients" in capsys.readouterr().err


def test_explain_bad_inputs(smiles_run, two_faces, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    cases = [
        ([str(two_faces[0]), "--no-detect", "--level", "happy"], "unknown level 'happy'"),
        ([str(broken), "--no-detect"], "broken.jpg"),
        ([str(blank), "--detect"], "no face found"),
        ([str(tmp_path / "missing.png")], "not found"),
    ]
    for extra, message in cases:
        code = main(["explain", str(smiles_run), *extra, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert "Traceback" not in err
    # inside a folder, a bad file is skipped with its reason instead
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(broken, folder / "broken.jpg")
    shutil.copy(two_faces[0], folder / "good.jpg")
    assert main(["explain", str(smiles_run), str(folder), "--no-detect", "--method", "cam",
                 "--out", str(tmp_path / "o2")]) == 0
    assert "skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_synthetic_region_check_is_measured(tmp_path):
    """Trains a tiny synthetic run and scores every method against the eye/mouth boxes."""
    from edge_smw.explain.check import CENTRE_PRIOR, synthetic_check, train_synthetic_run

    run = train_synthetic_run(tmp_path / "run", count=60, max_per_level=None, progress=False)
    report = synthetic_check(tmp_path / "check", run_dir=run, sample=6, examples=1,
                             progress=False)
    by_method = {s.method: s for s in report.scores}
    assert set(by_method) == {*METHODS, CENTRE_PRIOR}
    for score in report.scores:
        assert score.n + score.empty == 6
        assert np.isfinite(score.area_share) and 0 < score.area_share < 1
        if score.n:
            assert np.isfinite(score.energy_ratio) and 0 <= score.mass_share <= 1
    assert (tmp_path / "check" / "check.md").read_text().count("|") > 20
    assert len(report.examples) == len(METHODS)
