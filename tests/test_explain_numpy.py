"""The torch-free half of explain: CAM math, map post-processing, region scores, the index page,
level names. Hand-computed expectations on constructed arrays; no model, no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_smw.errors import InputError, ModelError
from edge_smw.explain.cam_numpy import (
    class_activation_map,
    finish_map,
    region_mask,
    region_score,
)
from edge_smw.explain.check import aggregate, centre_prior
from edge_smw.explain.inputs import expand_images, resolve_level, unique_stems
from edge_smw.explain.render import Image, write_index


def test_cam_is_the_head_spread_over_the_map() -> None:
    rng = np.random.default_rng(0)
    fmap = rng.standard_normal((4, 3, 5))
    weight = rng.standard_normal((2, 4))
    bias = rng.standard_normal(2)
    for level in (0, 1):
        cam = class_activation_map(fmap, weight, level)
        centred = weight[level] - (weight[0] + weight[1]) / 2
        manual = sum(centred[c] * fmap[c] for c in range(4))
        np.testing.assert_allclose(cam, manual, rtol=1e-12)
        # GAP + linear head: with the bias, the CAM's mean is the centred score
        logit = weight @ fmap.mean(axis=(1, 2)) + bias
        score = logit[level] - logit.mean()
        with_bias = class_activation_map(fmap, weight, level, bias)
        assert with_bias.mean() == pytest.approx(score, rel=1e-12)
        np.testing.assert_allclose(with_bias - cam, bias[level] - bias.mean(), rtol=1e-12)
    # a vector added to every level's weights changes no probability, and no map
    shifted = weight + rng.standard_normal(4)
    np.testing.assert_allclose(class_activation_map(fmap, shifted, 1),
                               class_activation_map(fmap, weight, 1), rtol=1e-12)
    # two levels: the maps are exact opposites
    np.testing.assert_allclose(class_activation_map(fmap, weight, 0),
                               -class_activation_map(fmap, weight, 1), rtol=1e-12)


def test_cam_rejects_mismatched_shapes() -> None:
    with pytest.raises(ModelError, match="do not fit"):
        class_activation_map(np.zeros((3, 2, 2)), np.zeros((2, 4)), 0)
    with pytest.raises(InputError, match="outside"):
        class_activation_map(np.zeros((4, 2, 2)), np.zeros((2, 4)), 2)
    with pytest.raises(ModelError, match="bias"):
        class_activation_map(np.zeros((4, 2, 2)), np.zeros((2, 4)), 0, np.zeros(3))


def test_finish_map_relu_upsample_peak_one() -> None:
    raw = np.array([[-1.0, 2.0], [0.5, 4.0]])
    heat = finish_map(raw, 8)
    assert heat.shape == (8, 8) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    assert heat[-1, -1] == pytest.approx(1.0)  # the corner nearest the 4.0 cell
    assert heat[0, 0] == 0.0  # the negative cell is no evidence
    assert not finish_map(-np.ones((3, 3)), 6).any()  # no positive evidence at all
    with pytest.raises(ModelError, match="non-finite"):
        finish_map(np.array([[np.nan, 1.0]]), 4)


def test_region_score_matches_hand_calculation() -> None:
    heat = np.zeros((10, 10))
    heat[2, 2] = 3.0  # inside the box
    heat[8, 8] = 1.0  # outside
    mask = region_mask([(1, 1, 3, 3)], (10, 10))
    assert mask.sum() == 9 and mask[1:4, 1:4].all()
    score = region_score(heat, mask)
    assert score.area_share == pytest.approx(9 / 100)
    assert score.mass_share == pytest.approx(3 / 4)
    assert score.energy_ratio == pytest.approx((3 / 4) / (9 / 100))
    assert score.hit
    heat[8, 8] = 5.0
    moved = region_score(heat, mask)
    assert moved.mass_share == pytest.approx(3 / 8) and not moved.hit
    flat = region_score(np.ones((10, 10)), mask)  # a flat map scores exactly its area share
    assert flat.energy_ratio == pytest.approx(1.0)
    empty = region_score(np.zeros((10, 10)), mask)
    assert np.isnan(empty.mass_share) and not empty.hit


def test_region_mask_scales_boxes_from_image_to_model_pixels() -> None:
    mask = region_mask([(10, 20, 5, 5), (0, 0, 1, 1)], (64, 64), scale=2.0)
    assert mask[40:50, 20:30].all() and mask[0:2, 0:2].all()
    assert mask.sum() == 100 + 4


def test_aggregate_counts_empty_maps_and_centre_prior_beats_flat() -> None:
    size = 32
    mask = region_mask([(12, 12, 8, 8)], (size, size))
    heats = [centre_prior(size), np.zeros((size, size))]
    score = aggregate("x", heats, [mask, mask], [mask, mask], [mask, mask])
    assert score.n == 1 and score.empty == 1
    assert score.energy_ratio > 1.0 and score.pointing == 1.0


def test_resolve_level_names_then_positions() -> None:
    levels = ("not_smiling", "smiling")
    assert resolve_level("smiling", levels) == 1
    assert resolve_level("1", levels) == 0
    assert resolve_level(2, levels) == 1
    assert resolve_level(None, levels) is None
    assert resolve_level("3", ("2", "3", "5")) == 1  # a name wins over a position
    with pytest.raises(InputError, match="not_smiling"):
        resolve_level("happy", levels)
    with pytest.raises(InputError, match="1..2"):
        resolve_level("3", levels)


def test_index_page_escapes_names(tmp_path: Path) -> None:
    page = write_index(tmp_path / "index.html", "t <1>",
                       ["image", "figure"],
                       [["<script>alert(1)</script>&.jpg", Image("a b&<c>.png")]],
                       notes=["n<o>te"])
    text = page.read_text(encoding="utf-8")
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;.jpg" in text
    assert 'src="a%20b%26%3Cc%3E.png"' in text
    assert "n&lt;o&gt;te" in text


def test_unique_stems_and_inputs(tmp_path: Path) -> None:
    assert unique_stems([Path("a/x.jpg"), Path("b/x.png"), Path("x-2.jpg")]) == \
        ["x", "x-2", "x-2-2"]
    with pytest.raises(InputError, match="not found"):
        expand_images([tmp_path / "missing.jpg"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no image files"):
        expand_images([tmp_path])


def test_device_side_modules_do_not_import_torch() -> None:
    code = ("import sys\n"
            "import edge_smw.explain.api, edge_smw.explain.cam_numpy, edge_smw.explain.render\n"
            "import edge_smw.attacks.blackbox, edge_smw.attacks.result\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n")
    subprocess.run([sys.executable, "-c", code], check=True)
