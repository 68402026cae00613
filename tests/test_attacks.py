"""Fooling images on a model trained on real face crops: targeted PGD at 4/255, saved PNGs that
still fool, the black-box attack through the ONNX runtime, the CLI, and bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="fooling images need torch (pip install edge-smw[train])")

from edge_smw.cli.main import main  # noqa: E402
from edge_smw.errors import InputError  # noqa: E402
from edge_smw.images import read_image  # noqa: E402

EPS = 4.0  # 4/255 in pixel units


@pytest.fixture(scope="module")
def checkpoint(smiles_run: Path):
    from edge_smw.train.checkpoint import load_checkpoint

    return load_checkpoint(smiles_run)


@pytest.fixture(scope="module")
def pixel_model(checkpoint):
    from edge_smw.train.model import PixelModel

    return PixelModel(checkpoint.contract, checkpoint.build_model()).eval()


@pytest.fixture(scope="module")
def sample(smiles_test_items) -> list:
    """Ten held-out real crops, five of each level."""
    items = sorted(smiles_test_items, key=lambda i: str(i.path))
    return [i for i in items if i.level == 0][:5] + [i for i in items if i.level == 1][:5]


def _pixels(items, contract) -> np.ndarray:
    return np.stack([contract.to_model_pixels(read_image(i.path)) for i in items])


@pytest.fixture(scope="module")
def targeted(pixel_model, checkpoint, sample):
    """Each crop pushed to the level it is not predicted as."""
    from edge_smw.attacks.pgd import pgd_attack, torch_probs_fn

    pixels = _pixels(sample, checkpoint.contract)
    predicted = torch_probs_fn(pixel_model)(pixels).argmax(1)
    targets = 1 - predicted
    return pixels, targets, pgd_attack(pixel_model, pixels, target=targets, eps=EPS, steps=20)


def test_targeted_pgd_fools_most_real_crops_within_budget(targeted, pixel_model):
    from edge_smw.attacks.pgd import torch_probs_fn

    pixels, targets, results = targeted
    assert len(results) == len(pixels) == 10
    rate = np.mean([r.success for r in results])
    assert rate >= 0.7, [r.to_dict() for r in results]
    probs = torch_probs_fn(pixel_model)(np.stack([r.adversarial for r in results]))
    for r, px, target, p in zip(results, pixels, targets, probs, strict=True):
        assert r.adversarial.dtype == np.uint8 and r.adversarial.shape == px.shape
        diff = r.adversarial.astype(int) - px.astype(int)
        assert r.linf == np.abs(diff).max() <= EPS
        assert r.l2 == pytest.approx(np.sqrt((diff**2).sum()))
        assert r.target == int(target)
        assert r.level_before == int(r.probabilities_before.argmax()) != target
        assert r.success == (int(p.argmax()) == target)  # judged on the uint8 image itself
        if r.success:
            assert r.level_after == target and 1 <= r.steps <= 20 and r.linf > 0
        np.testing.assert_allclose(p, r.probabilities_after, atol=1e-4)


def test_gradient_steps_beat_random_noise_of_the_same_budget(targeted, pixel_model):
    """A control: sign noise of the same L-infinity size must fool fewer crops than PGD."""
    from edge_smw.attacks.pgd import torch_probs_fn

    pixels, targets, results = targeted
    signs = np.random.default_rng(0).choice([-EPS, EPS], size=pixels.shape)
    noisy = np.clip(pixels + signs, 0, 255).astype(np.uint8)
    random_rate = np.mean(torch_probs_fn(pixel_model)(noisy).argmax(1) == targets)
    assert np.mean([r.success for r in results]) > random_rate


def test_already_at_target_takes_no_step(targeted, pixel_model):
    from edge_smw.attacks.pgd import pgd_attack

    pixels, targets, _ = targeted
    result = pgd_attack(pixel_model, pixels[:1], target=1 - int(targets[0]), eps=EPS, steps=5)[0]
    assert result.success and result.steps == 0 and result.linf == 0
    np.testing.assert_array_equal(result.adversarial, pixels[0])


def test_untargeted_pgd_changes_the_level(targeted, pixel_model):
    from edge_smw.attacks.pgd import pgd_attack

    pixels, _, _ = targeted
    results = pgd_attack(pixel_model, pixels[:2], target=None, eps=EPS, steps=20)
    assert any(r.success for r in results)
    for r in results:
        assert r.target is None and r.label == r.level_before
        if r.success:
            assert r.level_after != r.level_before


def test_black_box_square_attack_through_onnx_runtime(targeted, sample, smiles_onnx):
    """Outputs only, no gradients, no torch in the loop: the true level's probability falls."""
    from edge_smw.attacks.blackbox import runtime_probs_fn, square_attack
    from edge_smw.runtime import Runtime

    pixels, targets, _ = targeted
    # one correctly classified crop of each level (a wrong one has nothing left to do)
    right = [i for i, item in enumerate(sample) if 1 - targets[i] == item.level]
    picks = [min(i for i in right if sample[i].level == lvl) for lvl in (0, 1)]
    labels = [sample[i].level for i in picks]
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", detect_faces=False) as runtime:
        probs_fn = runtime_probs_fn(runtime)
        results = square_attack(probs_fn, pixels[picks], labels=labels, eps=EPS, iterations=40)
        rechecked = probs_fn(np.stack([r.adversarial for r in results]))
    for r, label, p in zip(results, labels, rechecked, strict=True):
        assert r.probabilities_after[label] < r.probabilities_before[label]
        assert r.linf <= EPS and r.queries >= 2
        np.testing.assert_allclose(p, r.probabilities_after, atol=1e-6)


def test_fool_cli_json_and_saved_pngs_still_fool(smiles_run, sample, pixel_model, checkpoint,
                                                 tmp_path, capsys):
    from edge_smw.attacks.pgd import torch_probs_fn

    folder = tmp_path / "in"
    folder.mkdir()
    for item in sample[:3]:  # three not-smiling crops, pushed to "smiling" (position 2)
        shutil.copy(item.path, folder / item.path.name)
    out = tmp_path / "out"
    code = main(["fool", str(smiles_run), str(folder), "--target", "2", "--eps", "4",
                 "--steps", "20", "--no-detect", "--json", "--out", str(out)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == "smiling" and len(report["images"]) == 3
    keys = {"success", "steps", "linf", "l2", "level_before", "level_after",
            "probabilities_before", "probabilities_after", "written"}
    probs_fn = torch_probs_fn(pixel_model)
    fooled = 0
    for image in report["images"]:
        assert keys <= set(image)
        png = Path(image["written"]["fooled_png"])
        assert png.suffix == ".png" and Path(image["written"]["figure"]).is_file()
        # read back independently: the saved file is what must fool
        saved = checkpoint.contract.to_model_pixels(read_image(png))
        original = checkpoint.contract.to_model_pixels(read_image(folder / Path(image["image"])
                                                                  .name))
        assert np.abs(saved.astype(int) - original.astype(int)).max() <= 4
        level = checkpoint.levels[int(probs_fn(saved[None])[0].argmax())]
        assert image["saved_png_still_fools"] == (level == "smiling")
        fooled += level == "smiling" and image["success"]
    assert fooled >= 2
    assert (out / "fool.json").is_file()


def test_fool_figure_has_three_panels(targeted, checkpoint, tmp_path):
    from edge_smw.attacks.fool import fooling_figure, magnified_difference

    pixels, _, results = targeted
    path = fooling_figure(pixels[0], results[0], checkpoint.levels, "RGB", tmp_path / "f.png")
    assert read_image(path).shape[1] >= 900
    diff = magnified_difference(np.full((2, 2, 3), 100, np.uint8),
                                np.array([[[101] * 3, [100] * 3], [[99] * 3, [103] * 3]],
                                         np.uint8))
    assert diff[0, 0, 0] == 177 and diff[0, 1, 0] == 127 and diff[1, 0, 0] == 77
    assert diff[1, 1, 0] == 255  # 127.5 + 150, clipped


def test_fool_bad_inputs(smiles_run, sample, tmp_path, capsys):
    import cv2

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 90, np.uint8))
    face = str(sample[0].path)
    cases = [
        ([face, "--target", "ecstatic", "--no-detect"], "unknown level 'ecstatic'"),
        ([face, "--target", "3", "--no-detect"], "position 1..2"),
        ([str(broken), "--target", "smiling"], "broken.png"),
        ([str(blank), "--target", "smiling", "--detect"], "no face found"),
        ([face, "--target", "smiling", "--eps", "0", "--no-detect"], "--eps must be at least 1"),
        ([face, "--target", "smiling", "--steps", "-1", "--no-detect"], "--steps must be"),
        ([face, "--target", "smiling", "--eps", "1000", "--no-detect"], "at most 255"),
        ([face, "--target", "smiling", "--eps", "nan", "--no-detect"], "at most 255"),
        ([face, "--target", "smiling", "--steps", "0", "--no-detect"],
         "--steps must be at least 1"),
        ([face, "--target", "smiling", "--detector", "bogus", "--no-detect"],
         "unknown face detector 'bogus'"),
    ]
    for extra, message in cases:
        code = main(["fool", str(smiles_run), *extra, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert "Traceback" not in err


def test_fool_names_what_it_needs_for_an_export_or_an_empty_folder(smiles_run, smiles_onnx,
                                                                    sample, tmp_path, capsys):
    """An .onnx export is not a corrupt checkpoint, and fool cannot use an export folder."""
    face = str(sample[0].path)
    cases = [(smiles_onnx, "is an exported model, not a training checkpoint"),
             (tmp_path, "give a run folder made by `edge-smw train` or its checkpoint.pt")]
    for model, message in cases:
        code = main(["fool", str(model), face, "--target", "smiling", "--no-detect",
                     "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert "corrupt" not in err and "export folder" not in err, err


def test_attack_api_rejects_bad_arrays(pixel_model):
    from edge_smw.attacks.blackbox import square_attack
    from edge_smw.attacks.pgd import pgd_attack

    with pytest.raises(InputError, match="uint8"):
        pgd_attack(pixel_model, np.zeros((1, 224, 224, 3), np.float32), target=1, eps=4,
                   steps=1)
    with pytest.raises(InputError, match="0..1"):
        pgd_attack(pixel_model, np.zeros((1, 224, 224, 3), np.uint8), target=5, eps=4, steps=1)
    for eps, steps in ((256, 1), (float("inf"), 1), (4, 0)):
        with pytest.raises(InputError, match="eps must be|steps must be"):
            pgd_attack(pixel_model, np.zeros((1, 224, 224, 3), np.uint8), target=1, eps=eps,
                       steps=steps)
    with pytest.raises(InputError, match="at least 1 pixel"):
        square_attack(lambda x: np.full((len(x), 2), 0.5), np.zeros((1, 8, 8, 3), np.uint8),
                      eps=0.5)
