"""Synthetic demo data: the documented level rule, balance, regions, determinism, cache.

Small data only (a few hundred images at most): the test machine has 2 shared cores.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_smw.data import synthetic
from edge_smw.data.synthetic import (
    CSV_COLUMNS,
    LEVELS,
    REGION_NAMES,
    FaceAttributes,
    default_synthetic_dir,
    expected_level_shares,
    generate_synthetic,
    level_for,
    read_synthetic_index,
    render_face,
    sample_attributes,
)
from edge_smw.errors import InputError

SMALL = 40  # images per generated test set


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("syn") / "a", count=SMALL, progress=False)


# -- the level rule ----------------------------------------------------------------------------

RULE_CASES = [
    # eyes, gaze, mouth, blur, exposure -> level (points in the comment; exposure is a nuisance)
    (("open", "camera", "smile", "none", "normal"), 5),  # 2+1+2 = 5
    (("open", "camera", "neutral", "none", "normal"), 5),  # 4
    (("open", "camera", "frown", "mild", "normal"), 4),  # 3, mild blur costs nothing
    (("open", "away", "frown", "none", "normal"), 3),  # 2
    (("half", "camera", "neutral", "none", "normal"), 4),  # 1+1+1 = 3
    (("half", "away", "neutral", "none", "normal"), 3),  # 2
    (("half", "away", "frown", "strong", "normal"), 1),  # 1-1 = 0
    (("closed", "camera", "frown", "none", "normal"), 1),  # 0: closed eyes earn no gaze point
    (("closed", "camera", "smile", "none", "normal"), 3),  # 2
    (("closed", "away", "neutral", "none", "normal"), 2),  # 1
    (("closed", "away", "frown", "strong", "bright"), 1),  # -1, clamped
    (("open", "camera", "smile", "strong", "dark"), 5),  # 5-1 = 4
    (("open", "away", "neutral", "mild", "bright"), 4),  # 3
    (("half", "away", "frown", "none", "dark"), 2),  # 1
    (("half", "camera", "smile", "strong", "normal"), 4),  # 4-1 = 3
]


@pytest.mark.parametrize(("scored", "level"), RULE_CASES)
def test_level_for_follows_the_documented_rule(scored: tuple[str, ...], level: int) -> None:
    eyes, gaze, mouth, blur, exposure = scored
    attrs = FaceAttributes(eyes=eyes, gaze=gaze, mouth=mouth, blur=blur, exposure=exposure)
    assert level_for(attrs) == level
    # Nuisances never change the level.
    exposure = "bright" if attrs.exposure == "normal" else "normal"
    other = dataclasses.replace(attrs, exposure=exposure, roll_deg=-12.0, shift_x=0.07,
                                skin_tone=8, background="sunset", hair="curly",
                                hair_color="red", face_shape="long")  # fmt: skip
    assert level_for(other) == level


def test_rule_table_is_in_the_docstring() -> None:
    doc = synthetic.__doc__ or ""
    for text in ("open / half / closed", "smile / neutral / frown", "strong", "points",
                 "Exposure is drawn (dark and grainy, or bright and washed out) but is a nuisance"):
        assert text in doc


def test_expected_level_shares_are_balanced() -> None:
    shares = expected_level_shares()
    assert set(shares) == set(LEVELS)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert 0.18 <= min(shares.values()) <= max(shares.values()) <= 0.22, shares


def test_sampled_levels_each_get_at_least_8_percent() -> None:
    levels = [level_for(sample_attributes(np.random.default_rng([0, i]))) for i in range(500)]
    shares = {str(lv): levels.count(lv) / len(levels) for lv in range(1, 6)}
    assert min(shares.values()) >= 0.08, shares


def test_attributes_are_validated() -> None:
    with pytest.raises(InputError, match="eyes"):
        FaceAttributes(eyes="wide", gaze="camera", mouth="smile")
    with pytest.raises(InputError, match="skin_tone"):
        FaceAttributes(eyes="open", gaze="camera", mouth="smile", skin_tone=0)


# -- drawing and regions ---------------------------------------------------------------------


def _render(attrs: FaceAttributes, seed: int = 3, size: int = 128):
    return render_face(attrs, np.random.default_rng(seed), size)


def _inside(box: tuple[int, int, int, int], size: int) -> bool:
    x, y, w, h = box
    return w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= size and y + h <= size


def _region_mask(regions: dict[str, tuple[int, int, int, int]], names, size: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    for name in names:
        x, y, w, h = regions[name]
        mask[y : y + h, x : x + w] = True
    return mask


@pytest.mark.parametrize("size", [64, 128, 160])
def test_images_and_regions_are_well_formed(size: int) -> None:
    for i in range(30):
        rng = np.random.default_rng([7, i])
        attrs = sample_attributes(rng)
        image, regions = render_face(attrs, rng, size)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        assert set(regions) == set(REGION_NAMES)
        for box in regions.values():
            assert _inside(box, size), (attrs, regions)
        left, right, mouth = (regions[n] for n in REGION_NAMES)
        assert left[0] + left[2] / 2 < right[0] + right[2] / 2  # left eye is on the image left
        assert max(left[1] + left[3], right[1] + right[3]) / 2 < mouth[1] + mouth[3]
        assert max(left[1], right[1]) < mouth[1]  # eyes above the mouth


@pytest.mark.parametrize(
    ("field", "values", "region_names"),
    [
        ("eyes", ("open", "half", "closed"), ("left_eye", "right_eye")),
        ("mouth", ("smile", "neutral", "frown"), ("mouth",)),
    ],
)
def test_scored_variants_change_pixels_only_inside_their_regions(
    field: str, values: tuple[str, ...], region_names: tuple[str, ...]
) -> None:
    base = FaceAttributes(eyes="open", gaze="camera", mouth="smile", roll_deg=9.0, shift_x=0.05)
    for seed in range(4):
        images, all_regions = [], []
        for value in values:
            image, regions = _render(dataclasses.replace(base, **{field: value}), seed)
            images.append(image.astype(np.int16))
            all_regions.append(regions)
        # Same jitter -> same boxes, whatever the scored attribute.
        assert all(r == all_regions[0] for r in all_regions)
        mask = _region_mask(all_regions[0], region_names, 128)
        for other in images[1:]:
            changed = np.abs(other - images[0]).max(axis=2) > 0
            assert changed.sum() > 10, f"{field} variants look identical"
            assert changed[~mask].sum() <= 0.02 * changed.sum(), f"{field} changed outside boxes"


def test_gaze_away_turns_eyes_and_head_to_one_side() -> None:
    """Looking away slides the eyes and mouth toward the turn (the regions follow them), and
    changes nothing on a closed-eyed face: a closed eye shows no gaze."""
    for seed in range(6):
        base = FaceAttributes(eyes="open", gaze="camera", mouth="neutral")
        facing, facing_regions = _render(base, seed)
        away, away_regions = _render(dataclasses.replace(base, gaze="away"), seed)
        def centre_x(box: tuple[int, int, int, int]) -> float:
            return box[0] + box[2] / 2

        moves = [centre_x(away_regions[n]) - centre_x(facing_regions[n]) for n in REGION_NAMES]
        assert all(abs(m) >= 3 for m in moves), moves  # >= 3 px at 128: a visible turn
        assert len({np.sign(m) for m in moves}) == 1, moves  # all toward the same side
        assert np.abs(away.astype(int) - facing.astype(int)).max() > 100
        closed = dataclasses.replace(base, eyes="closed")
        closed_facing, _ = _render(closed, seed)
        closed_away, _ = _render(dataclasses.replace(closed, gaze="away"), seed)
        assert np.array_equal(closed_facing, closed_away)


def test_pose_moves_the_regions() -> None:
    base = FaceAttributes(eyes="open", gaze="camera", mouth="neutral")
    _, centre = _render(base)
    _, right = _render(dataclasses.replace(base, shift_x=0.08))
    _, rolled = _render(dataclasses.replace(base, roll_deg=15.0))
    for name in REGION_NAMES:
        assert right[name][0] - centre[name][0] == pytest.approx(0.08 * 128, abs=2)
        assert right[name][1] == centre[name][1]
    assert rolled != centre
    # Counter-clockwise roll: the image-left eye drops, the image-right eye rises.
    assert rolled["left_eye"][1] > centre["left_eye"][1]
    assert rolled["right_eye"][1] < centre["right_eye"][1]


def test_skin_tones_go_from_light_to_dark() -> None:
    means = []
    for tone in (1, 4, 8):
        attrs = FaceAttributes(eyes="open", gaze="camera", mouth="neutral", skin_tone=tone)
        image, regions = _render(attrs)
        x, y, w, h = regions["mouth"]
        cheek = image[y - h : y, x : x + w]  # between nose and mouth: skin only
        means.append(float(cheek.mean()))
    assert means[0] > means[1] > means[2]


def test_bad_exposure_and_blur_show() -> None:
    base = FaceAttributes(eyes="open", gaze="camera", mouth="smile")
    normal, regions = _render(base)
    dark, _ = _render(dataclasses.replace(base, exposure="dark"))
    bright, _ = _render(dataclasses.replace(base, exposure="bright"))
    blurred, _ = _render(dataclasses.replace(base, blur="strong"))
    assert dark.mean() < 0.7 * normal.mean() and bright.mean() > 1.15 * normal.mean()

    def grain(image: np.ndarray) -> float:  # on a flat patch of cheek, under the left eye
        x, y, w, h = regions["left_eye"]
        patch = image[y + h + 2 : y + h + 10, x + 2 : x + w // 2]
        grey = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY).astype(np.float32)
        return float((grey - cv2.blur(grey, (3, 3))).std())

    assert grain(dark) > 1.5 * grain(normal)  # low light is grainy

    def sharpness(image: np.ndarray) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())

    assert sharpness(blurred) < 0.5 * sharpness(normal)


# -- the data set on disk --------------------------------------------------------------------


def test_generation_is_deterministic(small_set: Path, tmp_path: Path) -> None:
    again = generate_synthetic(tmp_path / "b", count=SMALL, progress=False)
    first, second = _files(small_set), _files(again)
    assert len([k for k in first if k.endswith(".png")]) == SMALL
    assert first == second
    other = generate_synthetic(tmp_path / "c", count=SMALL, seed=1, progress=False)
    assert _files(other) != first


def test_layout_csv_and_marker(small_set: Path) -> None:
    with open(small_set / "attributes.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == SMALL
    for name in REGION_NAMES:
        assert {f"{name}_{k}" for k in "xywh"} <= set(rows[0])
    samples = read_synthetic_index(small_set)
    for sample in samples:
        assert sample.path.is_file()
        assert sample.path.parent.name == str(sample.level) == str(level_for(sample.attrs))
        assert all(_inside(box, 128) for box in sample.regions.values())
    marker = json.loads((small_set / "synthetic.json").read_text(encoding="utf-8"))
    assert marker["count"] == SMALL and marker["size"] == 128 and marker["seed"] == 0
    assert marker["version"] == synthetic.VERSION
    assert sum(marker["level_counts"].values()) == SMALL
    for level in LEVELS:
        assert marker["level_counts"][level] == len(list((small_set / level).glob("*.png")))
    assert not list(small_set.rglob("*.tmp"))


def test_same_index_same_image_whatever_the_count(small_set: Path, tmp_path: Path) -> None:
    shorter = generate_synthetic(tmp_path / "short", count=12, progress=False)
    for rel, data in _files(shorter).items():
        if rel.endswith(".png"):
            assert (small_set / rel).read_bytes() == data


def test_marker_makes_it_a_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = generate_synthetic(tmp_path / "cache", count=12, progress=False)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    def boom(*args, **kwargs):
        raise AssertionError("regenerated despite a matching marker")

    monkeypatch.setattr(synthetic, "render_face", boom)
    assert generate_synthetic(out, count=12, progress=False) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # Different parameters regenerate (and fail here, through ``boom``) ...
    with pytest.raises(AssertionError, match="regenerated"):
        generate_synthetic(out, count=11, progress=False)
    # ... and the stale marker is gone, so the half-written folder never looks complete.
    assert not (out / "synthetic.json").exists()


def test_regeneration_removes_stale_images(tmp_path: Path) -> None:
    out = generate_synthetic(tmp_path / "re", count=20, progress=False)
    generate_synthetic(out, count=12, progress=False)
    pngs = sorted(p.name for p in out.rglob("*.png"))
    assert pngs == [f"{i:05d}.png" for i in range(12)]
    assert json.loads((out / "synthetic.json").read_text(encoding="utf-8"))["count"] == 12


@pytest.mark.parametrize("count", [0, 5, 9])
def test_too_few_images_is_an_input_error(tmp_path: Path, count: int) -> None:
    with pytest.raises(InputError, match="at least 10"):
        generate_synthetic(tmp_path / "few", count=count, progress=False)
    assert not (tmp_path / "few").exists()


def test_default_dir_is_under_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_SMW_CACHE", str(tmp_path))
    path = default_synthetic_dir(3000, 128, 0)
    assert path == tmp_path / "synthetic" / f"v{synthetic.VERSION}-n3000-s128-seed0"


# -- learnable: a fair demonstration ---------------------------------------------------------


def test_the_project_training_learns_the_rule_from_a_small_set(tmp_path: Path) -> None:
    """The faces show what decides the level at the backbone's input size: the project's own
    training (frozen EfficientNet-Lite0 + linear head, no special path) learns the rule from
    300 faces far above chance (1 in 5); the demo's 3000 faces reach more (README)."""
    pytest.importorskip("torch", reason="training needs torch (pip install edge-smw[train])")
    from edge_smw.data.sources import resolve_data
    from edge_smw.train.pipeline import TrainOptions, train_run

    source = resolve_data("synthetic", synthetic_count=300, progress=False)
    result = train_run(source, tmp_path / "run", TrainOptions(
        compare_losses=False, progress=False, lrs=(0.003, 0.01), momenta=(0.9,)))
    metrics = result.test_metrics
    assert metrics["n"] >= 40
    assert metrics["accuracy"] >= 0.5, metrics  # chance: 0.2
