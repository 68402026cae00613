"""The preprocessing contract: one definition, round-trips, and every consumer agrees."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge_smw.contract import PreprocessContract
from edge_smw.errors import InputError, ModelError
from tests.conftest import has_torch


def make_contract(**kw) -> PreprocessContract:
    return PreprocessContract(levels=("1", "2", "3"), **kw)


def test_json_round_trip_and_hash():
    c = make_contract(input_size=96, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    back = PreprocessContract.from_json(c.to_json())
    assert back == c
    assert back.sha256 == c.sha256
    assert make_contract().sha256 != c.sha256


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"levels": ("only",)}, "at least 2"),
        ({"levels": ("a", "a")}, "unique"),
        ({"levels": ("a", "b"), "color_order": "HSV"}, "color_order"),
        ({"levels": ("a", "b"), "std": (1.0, 0.0, 1.0)}, "std"),
        ({"levels": ("a", "b"), "input_size": 4}, "input_size"),
    ],
)
def test_invalid_contracts_are_clear(kw, words):
    with pytest.raises(InputError, match=words):
        PreprocessContract(**kw)


def test_newer_or_unknown_contract_is_refused():
    data = make_contract().to_dict()
    with pytest.raises(ModelError, match="newer"):
        PreprocessContract.from_dict({**data, "version": 99})
    with pytest.raises(ModelError, match="unknown fields"):
        PreprocessContract.from_json(json.dumps({**data, "gamma": 2.2}))
    with pytest.raises(ModelError, match="JSON"):
        PreprocessContract.from_json("{not json")


def test_keyword_only_constructor():
    with pytest.raises(TypeError):
        PreprocessContract(("a", "b"))  # type: ignore[misc]


def test_normalize_matches_formula_and_inverts():
    c = make_contract(input_size=16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    out = c.normalize(pixels)
    expected = (pixels.astype(np.float64) / 255 - np.array(c.mean)) / np.array(c.std)
    np.testing.assert_allclose(out, expected.transpose(0, 3, 1, 2), atol=1e-5)
    np.testing.assert_allclose(c.denormalize(out), pixels, atol=1e-3)
    buf = np.empty_like(out)
    assert c.normalize(pixels, out=buf) is buf


def test_colour_order_and_gray_and_rgba():
    c = make_contract(input_size=8)
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 0] = 255  # blue
    assert c.to_model_pixels(bgr)[0, 0].tolist() == [0, 0, 255]  # RGB: blue last
    gray = np.full((10, 12), 77, np.uint8)
    assert c.to_model_pixels(gray).shape == (8, 8, 3)
    rgba = np.dstack([bgr, np.full((8, 8), 255, np.uint8)])
    assert c.to_model_pixels(rgba).tolist() == c.to_model_pixels(bgr).tolist()
    with pytest.raises(InputError, match="uint8"):
        c.to_model_pixels(bgr.astype(np.float32))
    with pytest.raises(InputError, match="empty"):
        c.to_model_pixels(np.zeros((0, 5, 3), np.uint8))


def test_crop_face_adds_margin_and_pads_at_edges():
    c = make_contract(crop_margin=0.25)
    image = np.arange(100 * 100 * 3, dtype=np.uint32).reshape(100, 100, 3).astype(np.uint8)
    assert c.face_square((40, 40, 20, 20), image.shape) == (35, 35, 30, 30)
    crop = c.crop_face(image, (40, 40, 20, 20))
    assert crop.shape == (30, 30, 3)
    np.testing.assert_array_equal(crop, image[35:65, 35:65])
    edge = c.crop_face(image, (0, 0, 20, 20))  # the square leaves the frame: edge-padded
    assert c.face_square((0, 0, 20, 20), image.shape) == (-5, -5, 30, 30)
    np.testing.assert_array_equal(
        edge, np.pad(image[0:25, 0:25], ((5, 0), (5, 0), (0, 0)), mode="edge"))


@pytest.mark.skipif(not has_torch(), reason="torch not installed (pip install edge-smw[train])")
def test_torch_normalize_equals_numpy_normalize():
    import torch

    from edge_smw.train.model import TorchNormalize

    c = make_contract(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=32)
    pixels = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    ours = c.normalize(pixels)
    theirs = TorchNormalize(c)(torch.from_numpy(pixels).permute(0, 3, 1, 2).float()).numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-6)


def test_training_and_runtime_feed_the_network_the_same_tensor(smiles_dir, smiles_onnx, tmp_path,
                                                               monkeypatch):
    """The tensor the training feature pass computes on == the tensor Runtime infers on."""
    from edge_smw.data.datasets import LabelledImage
    from edge_smw.runtime import Runtime
    from edge_smw.train.backbones import get_backbone
    from edge_smw.train.features import FeaturePass, compute_features

    path = sorted((smiles_dir / "smiling").glob("*.jpg"))[5]
    feature_pass = FeaturePass(get_backbone("efficientnet_lite0"))
    monkeypatch.setenv("EDGE_SMW_CACHE", str(tmp_path))  # no cached features: really compute
    rt = Runtime(smiles_onnx, detect_faces=False, warmup=False)
    seen: dict[str, np.ndarray] = {}
    real_infer = rt.runner.infer
    rt.runner.infer = lambda x: (seen.setdefault("runtime", x.copy()), real_infer(x))[1]
    rt.score(cv2.imread(str(path)))

    real_call = feature_pass.__call__

    class Recording:
        spec, fingerprint = feature_pass.spec, feature_pass.fingerprint
        kind, suffix = feature_pass.kind, feature_pass.suffix

        def __call__(self, x):
            seen["training"] = x.copy()
            return real_call(x)

    compute_features([LabelledImage(path, 1)], rt.contract, Recording(), detect=False,
                     progress=False)
    np.testing.assert_array_equal(seen["training"], seen["runtime"])
