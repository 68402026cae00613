"""INT8 quantization on a model trained on real face crops: flavours, calibration, bias
correction, sensitivity, mixed precision, the int8-aware head.

One module-scoped setup (fp32 export, 64 calibration crops, one calibration pass) serves the
tests; every model here is quantized from the real smilesmiled-trained checkpoint.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install edge-smw[train])")

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from edge_smw.artifacts.sessions import load_session  # noqa: E402
from edge_smw.cpu import cpu_features, cpu_kind, int8_mismatch  # noqa: E402
from edge_smw.errors import InputError  # noqa: E402
from edge_smw.export import quantize as Q  # noqa: E402


def this_cpus_spec(flavour: Q.Flavour) -> Q.FlavourSpec:
    """The flavour as this CPU computes it right: the cpu flavour with 7-bit weights on x86
    without VNNI (8-bit U8S8 sums saturate there), as ``--target-cpu build-machine`` builds it;
    figures compared across models mean nothing on saturated kernels."""
    return Q.flavour_spec(flavour, reduce_range=Q.decide_reduce_range(
        flavour, "auto", "build-machine")[0])


class Setup:
    def __init__(self, run: Path, folder: Path) -> None:
        from edge_smw.export.crops import calibration_crops, validation_crops
        from edge_smw.export.onnx import export_fp32
        from edge_smw.export.parity import torch_probabilities
        from edge_smw.train.checkpoint import load_checkpoint

        self.run = run
        self.folder = folder
        self.checkpoint = load_checkpoint(run)
        self.contract = self.checkpoint.contract
        self.fp32_path = export_fp32(self.checkpoint, folder / "model.onnx")
        self.fp32 = onnx.load_model(str(self.fp32_path))
        self.calib = calibration_crops(self.contract, detect=self.checkpoint.detect, size=64,
                                       run_or_checkpoint=run, progress=False)
        self.calibration = Q.calibrate(self.fp32_path, self.calib, self.contract,
                                       progress=False)
        self.val = validation_crops(self.contract, detect=self.checkpoint.detect,
                                    run_or_checkpoint=run, progress=False)
        self.torch_model = self.checkpoint.build_model()
        self.reference = torch_probabilities(self.torch_model, self.val, self.contract,
                                             progress=False)
        self._cache: dict[str, onnx.ModelProto] = {}

    def save(self, model: onnx.ModelProto, name: str) -> Path:
        path = self.folder / name
        onnx.save_model(model, str(path))
        return path

    def int8(self, flavour: Q.Flavour) -> onnx.ModelProto:
        if flavour.value not in self._cache:
            self._cache[flavour.value] = Q.quantize(self.fp32, self.calibration,
                                                    this_cpus_spec(flavour))
        return self._cache[flavour.value]

    def logits(self, path: Path, limit: int | None = None) -> np.ndarray:
        session = load_session(path)
        crops = self.val if limit is None else self.val.subset(range(min(limit, len(self.val))))
        return session.run(["logits"], {"input": crops.inputs(self.contract)})[0]


@pytest.fixture(scope="module")
def setup(smiles_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(smiles_run, tmp_path_factory.mktemp("quant"))


# -- the CPU's instruction set -------------------------------------------------------------------
def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n")
    return path


def test_reduce_range_follows_the_target_cpu(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_smw.cpu as cpu

    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    no_vnni = cpu_features(_cpuinfo(tmp_path, "fpu sse avx avx2 fma"))
    assert no_vnni["avx2"] and not no_vnni["vnni"] and cpu_kind(no_vnni) == "x86-avx2"
    vnni = cpu_features(_cpuinfo(tmp_path, "avx2 avx512f avx512_vnni avx_vnni"))
    assert vnni["vnni_flags"] == ["avx512_vnni", "avx_vnni"] and cpu_kind(vnni) == "x86-vnni"
    # the target decides, whatever the build machine has
    assert Q.decide_reduce_range(Q.Flavour.CPU, "auto", "x86-avx2", vnni)[0] is True
    on, why = Q.decide_reduce_range(Q.Flavour.CPU, "auto", "x86-vnni", no_vnni)
    assert on is False and "x86-vnni" in why
    assert Q.decide_reduce_range(Q.Flavour.CPU, "auto", "arm64", no_vnni)[0] is False
    # build-machine reads this CPU
    assert Q.decide_reduce_range(Q.Flavour.CPU, "auto", "build-machine", no_vnni)[0] is True
    assert Q.decide_reduce_range(Q.Flavour.CPU, "auto", "build-machine", vnni)[0] is False
    assert Q.decide_reduce_range(Q.Flavour.CPU, "on", "x86-vnni", vnni)[0] is True
    assert Q.decide_reduce_range(Q.Flavour.TENSORRT, "on", "x86-avx2", no_vnni)[0] is False
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    arm = cpu_features(_cpuinfo(tmp_path, "fp asimd asimddp"))
    assert cpu_kind(arm) == "arm64"
    with pytest.raises(InputError, match="reduce-range"):
        Q.decide_reduce_range(Q.Flavour.CPU, "sometimes", "arm64", arm)


def test_mismatch_is_only_8bit_weights_on_x86_without_vnni(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_smw.cpu as cpu

    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    avx2 = cpu_features(_cpuinfo(tmp_path, "avx2 fma"))
    vnni = cpu_features(_cpuinfo(tmp_path, "avx2 avx512_vnni"))
    eight = {"flavour": "cpu", "reduce_range": False, "target_cpu": "x86-vnni"}
    seven = {"flavour": "cpu", "reduce_range": True, "target_cpu": "x86-avx2"}
    assert "no VNNI" in int8_mismatch(eight, avx2) and "--target-cpu x86-avx2" in \
        int8_mismatch(eight, avx2)
    assert int8_mismatch(eight, vnni) is None
    assert int8_mismatch(seven, avx2) is None
    trt = {"flavour": "tensorrt", "reduce_range": False}
    assert int8_mismatch(trt, avx2) is None  # onnxruntime: S8S8 kernels there
    assert "OpenVINO" in int8_mismatch(trt, avx2, backend="openvino-cpu")
    assert int8_mismatch(trt, vnni, backend="openvino-cpu") is None
    assert int8_mismatch({}, avx2) is None  # older models: nothing recorded, nothing claimed


def test_flags_quoted_and_flags_decided_come_from_one_reading(tmp_path: Path) -> None:
    import edge_smw.cpu as cpu

    info = _cpuinfo(tmp_path, "avx2 avx512f avx512_vnni f16c")
    assert cpu.cpu_model(info) == "Test CPU"
    flags = cpu.cpu_flags(info)
    assert flags["avx512_vnni"] and flags["f16c"] and not flags["amx_int8"]
    assert cpu.cpu_features(info)["vnni_flags"] == ["avx512_vnni"]
    missing = tmp_path / "absent"
    assert not any(cpu.cpu_flags(missing).values())
    assert cpu.cpu_features(missing)["source"] == "unavailable"
    assert cpu.cpu_model(missing)  # the platform's word instead


def test_signed_int8_rewrite_is_off_only_on_x86_without_vnni(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_smw.cpu as cpu
    from edge_smw.artifacts.sessions import this_cpus_disabled_rewrites

    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    assert cpu.disabled_rewrites(cpu_features(_cpuinfo(tmp_path, "avx2 fma"))) == (
        cpu.S8_TO_U8_REWRITE,)
    assert cpu.disabled_rewrites(cpu_features(_cpuinfo(tmp_path, "avx2 avx_vnni"))) == ()
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    assert cpu.disabled_rewrites(cpu_features(_cpuinfo(tmp_path, "fp asimd asimddp"))) == ()
    monkeypatch.undo()
    assert this_cpus_disabled_rewrites() == cpu.disabled_rewrites()  # what sessions use


def test_this_machine_is_recorded() -> None:
    feats = cpu_features()
    assert feats["machine"]
    assert isinstance(feats["vnni"], bool)


def test_enum_parsing() -> None:
    assert Q.parse_enum(Q.CalibMethod, "Entropy", "x") is Q.CalibMethod.ENTROPY
    assert Q.CalibMethod.ENTROPY.ort is Q.CalibrationMethod.Entropy
    with pytest.raises(InputError, match="minmax, entropy, percentile, auto"):
        Q.parse_enum(Q.CalibMethod, "kl", "--calib-method")


# -- calibration --------------------------------------------------------------------------------
def test_reader_feeds_every_crop_normalised(setup: Setup) -> None:
    reader = Q.CropReader(setup.calib, setup.contract, batch_size=10)
    batches = []
    while (feed := reader.get_next()) is not None:
        batches.append(feed["input"])
    assert sum(len(b) for b in batches) == len(setup.calib) >= 64
    np.testing.assert_array_equal(batches[0], setup.contract.normalize(setup.calib.pixels[:10]))
    reader.set_range(5, 12)
    assert len(reader) == 7 and len(reader.get_next()["input"]) == 7


def test_calibration_set_is_stratified_real_crops(setup: Setup) -> None:
    calib = setup.calib
    assert len(calib) == 64 and calib.labelled
    levels, counts = np.unique(calib.levels, return_counts=True)
    assert list(levels) == [0, 1] and min(counts) >= 16
    assert all("smilesmiled" in p for p in calib.paths)
    assert calib.pixels.dtype == np.uint8 and calib.pixels.std() > 10  # real images
    assert len(setup.calibration.crops_sha256) == 64


def test_methods_from_one_pass(setup: Setup) -> None:
    entropy = Q.calibrate(setup.fp32_path, setup.calib, setup.contract, Q.CalibMethod.ENTROPY,
                          num_bins=512, progress=False)
    assert set(entropy.candidates) == {"minmax", "percentile", "entropy"}
    minmax = setup.calibration.ranges
    # a real bin count makes entropy clip some tensors below their min/max
    narrower = [t for t, (lo, hi) in entropy.ranges.items()
                if hi < minmax[t][1] - 1e-6 or lo > minmax[t][0] + 1e-6]
    assert narrower
    # the input's range is exact, from the contract, whatever the method
    assert entropy.ranges["input"] == minmax["input"] == Q.input_range(setup.contract)
    auto = Q.calibrate(setup.fp32_path, setup.calib, setup.contract, Q.CalibMethod.AUTO,
                       num_bins=512, progress=False)
    assert set(auto.choice.values()) <= {"minmax", "percentile", "entropy"}
    assert len(auto.choice) == len(auto.ranges)
    with pytest.raises(InputError, match="bins"):
        Q.calibrate(setup.fp32_path, setup.calib, setup.contract, Q.CalibMethod.ENTROPY,
                    num_bins=128, progress=False)


# -- flavours -----------------------------------------------------------------------------------
def test_input_grid_keeps_the_float_function_and_is_exact(setup: Setup) -> None:
    """The half-step shift changes no logit, and every pixel lands on an 8-bit grid point."""
    from edge_smw.export.input_grid import put_input_on_grid, why_not

    assert why_not(setup.fp32, setup.contract) is None
    model, grid = put_input_on_grid(setup.fp32, setup.contract)
    before = setup.logits(setup.fp32_path, limit=16)
    after = setup.logits(setup.save(model, "grid.onnx"), limit=16)
    np.testing.assert_allclose(after, before, atol=1e-4)
    mul, add = (float(np.ravel(v)[0]) for v in setup.contract.affine())
    steps = (np.arange(256) * mul + add - mul / 2) / grid.scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
    assert round(steps.min()) >= -128 and round(steps.max()) <= 127
    from dataclasses import replace

    calibration = replace(setup.calibration, ranges={
        **setup.calibration.ranges, grid.tensor: (-128 * grid.scale, 127 * grid.scale)})
    int8_nodes = {n.name for n in Q.quantize(model, calibration,
                                             this_cpus_spec(Q.Flavour.CPU),
                                             nodes_to_exclude=list(grid.float_nodes),
                                             overrides=grid.overrides(signed=False)).graph.node}
    assert set(grid.float_nodes) <= int8_nodes  # the shift and pad stay as they are


def unread_initializers(model: onnx.ModelProto) -> set[str]:
    read = {t for node in model.graph.node for t in node.input}
    return {i.name for i in model.graph.initializer} - read


def test_padded_stem_reads_channels_in_fours_and_changes_nothing(setup: Setup) -> None:
    """onnxruntime's symmetric int8 conv kernels take a Conv whose input channels come in
    fours: the stem's 8-bit input gets a zero-point channel read by zero weights, and the exact
    input grid's float Pad moves into the Conv when its border quantizes to the zero point
    (no float Pad left), not when it does not or when another node reads the shifted input.
    Every logit stays as it was; every Conv still fuses into a QLinearConv."""
    from dataclasses import replace

    import onnxruntime as ort

    from edge_smw.export import layout
    from edge_smw.export.input_grid import put_input_on_grid

    grid_model, grid = put_input_on_grid(setup.fp32, setup.contract)
    calibration = replace(setup.calibration, ranges={
        **setup.calibration.ranges, grid.tensor: (-128 * grid.scale, 127 * grid.scale)})
    on_grid = Q.quantize(grid_model, calibration, this_cpus_spec(Q.Flavour.CPU),
                         nodes_to_exclude=list(grid.float_nodes),
                         overrides=grid.overrides(signed=False))
    grid_pad = next(n.name for n in on_grid.graph.node if n.op_type == "Pad")
    # the shifted input read by one more node: the grid's Pad must stay as it is
    shared = onnx.ModelProto()
    shared.CopyFrom(on_grid)
    shared.graph.node.append(onnx.helper.make_node("Identity", [grid.tensor], ["shifted"]))
    shared.graph.output.append(onnx.helper.make_tensor_value_info("shifted",
                                                                  onnx.TensorProto.FLOAT, None))
    # a border that quantizes off the zero point (0 + shift rounds to -1): the Pad stays
    off_grid = onnx.ModelProto()
    off_grid.CopyFrom(on_grid)
    add = next(n for n in off_grid.graph.node if n.op_type == "Add" and n.output[0] == grid.tensor)
    shift = next(i for i in off_grid.graph.initializer if i.name == add.input[1])
    shift.CopyFrom(numpy_helper.from_array(np.array(-0.8 * grid.scale, np.float32), shift.name))
    convs = sum(n.op_type == "Conv" for n in setup.fp32.graph.node)
    for name, model, folded in (("plain", setup.int8(Q.Flavour.CPU), None),
                                ("grid", on_grid, grid_pad), ("shared", shared, None),
                                ("off_grid", off_grid, None)):
        assert layout.why_not(model) is None
        padded, detail = layout.pad_stem_channels(model)
        assert detail["input_channels"] == [3, 4] and detail["folded_pad"] == folded
        assert len(padded.graph.node) == len(model.graph.node) + (folded is None)
        assert unread_initializers(padded) <= unread_initializers(model)
        quantized = {n.output[0] for n in padded.graph.node if n.op_type == "QuantizeLinear"}
        pads = [n.input[0] for n in padded.graph.node if n.op_type == "Pad"]
        assert (set(pads) <= quantized) == (folded is not None or name == "plain")
        before = setup.logits(setup.save(model, f"{name}.onnx"), limit=16)
        path = setup.save(padded, f"{name}.padded.onnx")
        np.testing.assert_allclose(setup.logits(path, limit=16), before, rtol=0, atol=1e-6)
        assert "already reads 4 channels" in layout.why_not(padded)
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(setup.folder / f"{name}.padded.optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load_model(options.optimized_model_filepath)
        assert sum(n.op_type == "QLinearConv" for n in optimized.graph.node) == convs
    shifted = load_session(setup.folder / "shared.padded.onnx").run(
        ["shifted"], {"input": setup.val.subset(range(2)).inputs(setup.contract)})[0]
    assert shifted.shape[1] == 3  # the other reader still gets three channels
    assert "float" in layout.why_not(setup.fp32)
    with pytest.raises(ValueError, match="float"):
        layout.pad_stem_channels(setup.fp32)


def test_pool_read_channels_last_changes_nothing_and_drops_a_transpose(setup: Setup) -> None:
    """The global mean reads the last int8 map through an NCHW -> NHWC Transpose: the same
    logits, and onnxruntime's optimized graph has one transpose fewer (it cancels its own
    NHWC -> NCHW one against it)."""
    import onnxruntime as ort

    from edge_smw.export import layout

    def transposes(path: Path) -> int:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return sum(n.op_type == "Transpose"
                   for n in onnx.load_model(options.optimized_model_filepath).graph.node)

    model = setup.int8(Q.Flavour.CPU)
    rewritten, detail = layout.pool_channels_last(model)
    assert detail["pool"] in {n.name for n in model.graph.node if n.op_type == "ReduceMean"}
    before = setup.save(model, "pool.onnx")
    after = setup.save(rewritten, "pool.channels_last.onnx")
    np.testing.assert_allclose(setup.logits(after, limit=16), setup.logits(before, limit=16),
                               rtol=0, atol=1e-6)
    assert transposes(after) == transposes(before) - 1
    with pytest.raises(ValueError, match="dequantized 4-D map"):
        layout.pool_channels_last(setup.fp32)  # a float model's mean reads no DequantizeLinear
    both, detail = layout.for_onnxruntime(model, pad_stem=False)
    assert detail["stem"] == "skipped: --no-pad-stem" and detail["pool"]["pool"]
    assert "skipped" in layout.for_onnxruntime(setup.fp32)[1]["pool"]
    # axes -2 and -1 of a 5-D map are not H and W: no 4-D permutation fits it, so no rewrite
    helper = onnx.helper
    volume = helper.make_model(helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["map"]),
         helper.make_node("ReduceMean", ["map"], ["mean"], axes=[-2, -1], keepdims=0)],
        "volume", [helper.make_tensor_value_info("q", onnx.TensorProto.UINT8, [1, 8, 2, 3, 3])],
        [helper.make_tensor_value_info("mean", onnx.TensorProto.FLOAT, [1, 8, 2])],
        [helper.make_tensor("s", onnx.TensorProto.FLOAT, [], [0.1]),
         helper.make_tensor("z", onnx.TensorProto.UINT8, [], [128])]),
        opset_imports=[helper.make_opsetid("", 13)])
    assert "4-D map" in layout.for_onnxruntime(volume)[1]["pool"]


def test_float_tail_stays_float(setup: Setup) -> None:
    tail = Q.float_tail(setup.fp32)
    ops = {n.name: n.op_type for n in setup.fp32.graph.node}
    assert sorted(ops[n] for n in tail) == ["Gemm", "ReduceMean", "Softmax"]
    model = setup.int8(Q.Flavour.CPU)
    producers = {o: n for n in model.graph.node for o in n.output}
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert producers[gemm.input[0]].op_type == "ReduceMean"  # float features into the head


def test_cpu_flavour_is_u8s8_and_every_conv_fuses(setup: Setup) -> None:
    import onnxruntime as ort

    model = setup.int8(Q.Flavour.CPU)
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    summary = Q.qdq_summary(model)
    convs = sum(n.op_type == "Conv" for n in setup.fp32.graph.node)
    assert summary["int8_convs"] == convs and summary["float_convs"] == []
    activation_zps = {init[n.input[2]].dtype for n in model.graph.node
                      if n.op_type == "QuantizeLinear"}
    assert activation_zps == {np.dtype(np.uint8)}
    producers = {o: n for n in model.graph.node for o in n.output}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        dq = producers[conv.input[1]]
        weights = init[dq.input[0]]
        assert weights.dtype == np.int8 and init[dq.input[1]].shape == (weights.shape[0],)
    path = setup.save(model, "cpu.onnx")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(setup.folder / "cpu.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load_model(options.optimized_model_filepath)
    fused = [n for n in optimized.graph.node if n.op_type == "QLinearConv"]
    assert len(fused) == convs
    assert not [n for n in optimized.graph.node if n.op_type in ("Conv", "FusedConv")]


def test_tensorrt_flavour_is_explicit_symmetric_int8(setup: Setup) -> None:
    model = setup.int8(Q.Flavour.TENSORRT)
    assert Q.tensorrt_problems(model) == []
    summary = Q.qdq_summary(model)
    assert summary["all_zero_points_zero"] and summary["zero_point_dtypes"] == ["int8"]
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        dq = producers[conv.input[1]]
        q = producers[dq.input[0]]
        assert q.op_type == "QuantizeLinear" and init[q.input[0]].dtype == np.float32
        assert init[dq.input[1]].ndim == 1  # per-channel scales
        bias = producers.get(conv.input[2])
        assert bias is None  # float bias
    # and onnxruntime on a CPU runs it
    logits = setup.logits(setup.save(model, "trt.onnx"), limit=8)
    assert logits.shape == (8, setup.contract.num_levels) and np.isfinite(logits).all()


def test_one_quantizer_per_activation_leaves_the_conv_outputs_float(setup: Setup) -> None:
    """tensorrt flavour: by default onnxruntime keeps a symmetric ReLU and quantizes its
    input too; with one quantizer only the ReLU's output (a Conv's input) is, as TensorRT
    fuses Conv + ReLU, and the model is still valid explicit quantization."""
    spec = Q.flavour_spec(Q.Flavour.TENSORRT)
    plain = Q.quantize(setup.fp32, setup.calibration, spec)
    once = Q.quantize(setup.fp32, setup.calibration, Q.one_quantizer_per_activation(spec))

    def quantized_relu_inputs(model: onnx.ModelProto) -> int:
        producers = {o: n for n in model.graph.node for o in n.output}
        return sum(1 for n in model.graph.node if n.op_type in ("Clip", "Relu")
                   and n.input[0] in producers
                   and producers[n.input[0]].op_type == "DequantizeLinear")

    relus = sum(1 for n in setup.fp32.graph.node if n.op_type in ("Clip", "Relu"))
    assert quantized_relu_inputs(plain) == relus > 0  # the double rounding it removes
    assert quantized_relu_inputs(once) == 0
    assert Q.tensorrt_problems(once) == []
    assert Q.qdq_summary(once)["float_convs"] == Q.qdq_summary(plain)["float_convs"]


def test_centred_activations_keep_the_float_function_and_fill_the_grid(setup: Setup) -> None:
    """Each ReLU output moved by the middle of its range: the same logits, a range symmetric
    about zero (all 8 bits of a symmetric quantizer), exact borders through the explicit
    Pads, and a tensorrt-flavour model TensorRT takes; the tuning interpreter runs it as
    onnxruntime does."""
    from edge_smw.export.centring import candidates, centre_activations
    from edge_smw.export.tuning import QdqGraph

    model, centring = centre_activations(setup.fp32, setup.calibration.ranges)
    assert len(centring.tensors) == len(candidates(setup.fp32)) > 0
    assert centring.pads  # the depthwise Convs read a Pad of the shifted zero
    assert candidates(model) == []  # centred outputs go below zero: nothing left to move
    def unread(m: onnx.ModelProto) -> list[str]:
        read = {name for node in m.graph.node for name in node.input}
        return [i.name for i in m.graph.initializer if i.name not in read]

    assert unread(model) == unread(setup.fp32)  # the replaced biases and bounds are gone
    before = setup.logits(setup.fp32_path, limit=16)
    path = setup.save(model, "centred.onnx")
    np.testing.assert_allclose(setup.logits(path, limit=16), before, atol=1e-3)
    fresh = Q.calibrate(path, setup.calib, setup.contract, progress=False)
    for moved in centring.tensors:
        low, high = fresh.ranges[moved.tensor]
        assert low < 0 < high and abs(low + high) <= 0.05 * (high - low) + 1e-6, moved
    from dataclasses import replace

    calibration = replace(setup.calibration, ranges={**setup.calibration.ranges,
                                                     **{t: fresh.ranges[t]
                                                        for t in centring.changed}})
    spec = Q.one_quantizer_per_activation(Q.flavour_spec(Q.Flavour.TENSORRT))
    qdq = Q.quantize(model, calibration, spec)
    assert Q.tensorrt_problems(qdq) == []
    assert Q.qdq_summary(qdq)["float_convs"] == []
    inputs = setup.val.inputs(setup.contract, 0, 16)
    with torch.no_grad():
        interpreted = QdqGraph(qdq)(torch.from_numpy(inputs), ["logits"])[0].numpy()
    onnxruntime = setup.logits(setup.save(qdq, "centred-trt.onnx"), limit=16)
    assert float(np.abs(interpreted - onnxruntime).mean()) < 0.5 * float(
        np.abs(onnxruntime - before).mean())


def test_centred_readers_follow_the_weights_chosen_later(setup: Setup) -> None:
    """Weights replaced after centring (as learned rounding's are) with the readers' biases
    following them compute what the uncentred model with those weights computes; left with
    the float weights' biases, every zero of a ReLU adds ``(W_q - W) c`` to a reader."""
    from edge_smw.export.centring import centre_activations

    centred, centring = centre_activations(setup.fp32, setup.calibration.ranges)
    readers = {r for t in centring.tensors for r in t.readers}
    assert readers

    def coarse(conv: Q.ConvTensors) -> None:  # rounded to a 16-level grid: a large change
        w = conv.weight()
        step = np.abs(w).max() / 8
        conv.set_weight(np.round(w / step) * step)

    limit = 16
    uncentred = setup.logits(setup.save(Q.edit_convs(setup.fp32, readers, coarse),
                                        "coarse.onnx"), limit)
    stale = setup.logits(setup.save(Q.edit_convs(centred, readers, coarse),
                                    "coarse-stale.onnx"), limit)
    followed = centring.follow_weights(Q.edit_convs(centred, readers, coarse), centred)
    exact = setup.logits(setup.save(followed, "coarse-followed.onnx"), limit)
    np.testing.assert_allclose(exact, uncentred, atol=1e-3)
    assert float(np.abs(stale - uncentred).max()) > 0.1
    # weights left as they were: nothing to follow, the model unchanged
    same = centring.follow_weights(centred, centred)
    assert [i.SerializeToString() for i in same.graph.initializer] == [
        i.SerializeToString() for i in centred.graph.initializer]


def test_tensorrt_flavour_computes_its_graph_on_this_cpu(setup: Setup) -> None:
    """The tensorrt flavour's 8-bit weights through onnxruntime's fused kernels give what its
    Q/DQ operators define (the plain, unoptimized run) on every CPU: on x86 without VNNI the
    sessions turn off the rewrite that would run them on saturating U8S8 kernels (measured
    there: 2.56 logits from fp32 with it, 0.45 for the graph itself)."""
    import onnxruntime as ort

    path = setup.save(setup.int8(Q.Flavour.TENSORRT), "trt-kernels.onnx")
    inputs = setup.val.inputs(setup.contract, 0, 64)
    fused = setup.logits(path, limit=64)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input": inputs})[0]
    fp32 = setup.logits(setup.fp32_path, limit=64)
    assert np.abs(fused - plain).mean() < 0.5 * np.abs(plain - fp32).mean()


def test_problems_are_detected(setup: Setup) -> None:
    """The TensorRT checker is not a rubber stamp: the cpu flavour fails it."""
    problems = Q.tensorrt_problems(setup.int8(Q.Flavour.CPU))
    assert any("zero point type uint8" in p for p in problems)
    assert any("int32 bias" in p for p in problems)


# -- bias correction ----------------------------------------------------------------------------
def test_bias_correction_cuts_logit_noise(setup: Setup) -> None:
    model = setup.int8(Q.Flavour.CPU)
    correction = Q.measure_weight_shift(setup.fp32, model, setup.calib, setup.contract)
    assert len(correction.shifts) == Q.qdq_summary(model)["int8_convs"]
    assert correction.describe()["mean_abs_shift"] > 0
    corrected = Q.quantize(Q.apply_bias_correction(setup.fp32, correction), setup.calibration,
                           this_cpus_spec(Q.Flavour.CPU))
    ref = setup.logits(setup.fp32_path)
    plain = setup.logits(setup.save(model, "plain.onnx"))
    better = setup.logits(setup.save(corrected, "corrected.onnx"))

    def rmse(x: np.ndarray) -> float:
        centred = lambda v: v - v.mean(1, keepdims=True)  # noqa: E731
        return float(np.sqrt(np.mean((centred(x) - centred(ref)) ** 2)))

    assert rmse(better) < rmse(plain)


# -- learned rounding ----------------------------------------------------------------------------
def _nearest_weights(fp32: onnx.ModelProto, qdq: onnx.ModelProto) -> onnx.ModelProto:
    """The float model with every int8 Conv's weights rounded to nearest on the grid the
    quantizer chose for it."""
    from edge_smw.export.rounding import WeightRounding, weight_grids

    init = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    convs = {n.name: n for n in fp32.graph.node if n.op_type == "Conv"}
    weights = {}
    for name, grid in weight_grids(qdq).items():
        w = init[convs[name].input[1]]
        shape = (-1,) + (1,) * (w.ndim - 1)
        limit = grid.limit.reshape(shape)
        q = np.clip(np.round(w / grid.scale.reshape(shape)), -limit, limit)
        weights[name] = (q * grid.scale.reshape(shape)).astype(np.float32)
    return WeightRounding(weights, {}, {}, 0).apply(fp32)


@pytest.mark.parametrize("flavour", [Q.Flavour.CPU, Q.Flavour.TENSORRT])
def test_learned_rounding_is_on_the_quantizers_grid_and_beats_nearest(
        setup: Setup, flavour: Q.Flavour) -> None:
    """Every learned weight is exactly what the quantizer then writes (7-bit cpu grid, 8-bit
    symmetric tensorrt grid), no Conv's output error grows, and the whole float model with the
    learned weights is closer to fp32 on validation crops than with the nearest ones."""
    from edge_smw.export.rounding import check_on_grid, learn_rounding, weight_grids

    spec = Q.flavour_spec(flavour, reduce_range=flavour is Q.Flavour.CPU)
    plain = Q.quantize(setup.fp32, setup.calibration, spec)
    grids = weight_grids(plain)
    assert len(grids) == Q.qdq_summary(plain)["int8_convs"]
    rounding = learn_rounding(setup.fp32, grids, setup.calib, setup.contract, limit=32)
    assert set(rounding.weights) == set(grids)
    assert all(learned <= nearest for nearest, learned in rounding.errors.values())
    assert rounding.describe()["output_error_vs_nearest_median"] < 0.9

    learned_qdq = Q.quantize(rounding.apply(setup.fp32), setup.calibration, spec)
    assert check_on_grid(rounding, learned_qdq) == []
    assert weight_grids(learned_qdq).keys() == grids.keys()

    ref = setup.logits(setup.fp32_path, limit=200)
    nearest = setup.logits(setup.save(_nearest_weights(setup.fp32, plain), "nearest.onnx"), 200)
    learned = setup.logits(setup.save(rounding.apply(setup.fp32), "learned.onnx"), 200)

    def rmse(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean((x - ref) ** 2)))

    assert rmse(learned) < rmse(nearest)


def test_off_grid_weights_are_caught(setup: Setup) -> None:
    """The grid check is not a rubber stamp: a learned weight moved by a third of a step is
    reported for its Conv, and Convs kept float are left alone by ``apply``."""
    from edge_smw.export.rounding import check_on_grid, learn_rounding, weight_grids

    plain = setup.int8(Q.Flavour.CPU)
    grids = weight_grids(plain)
    first = next(iter(grids))
    rounding = learn_rounding(setup.fp32, {first: grids[first]}, setup.calib, setup.contract,
                              limit=16)
    row = int(np.flatnonzero(rounding.rows[first])[0])
    weights = rounding.weights[first]
    flat = weights[row].reshape(-1)
    target = int(np.argmin(np.abs(flat)))  # not the row's largest weight
    flat[target] += grids[first].scale[row] / 3
    moved = Q.quantize(rounding.apply(setup.fp32), setup.calibration,
                       this_cpus_spec(Q.Flavour.CPU))
    assert check_on_grid(rounding, moved) == [first]

    kept = rounding.apply(setup.fp32, skip=[first])
    before = {i.name: numpy_helper.to_array(i) for i in setup.fp32.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in kept.graph.initializer}
    assert all(np.array_equal(before[k], after[k]) for k in before)


# -- range equalization --------------------------------------------------------------------------
def test_equalization_keeps_the_float_function_and_evens_the_channels(setup: Setup) -> None:
    """Lite0's seven linear streams (one per stage: projections and residual sums) are found;
    rescaled at full strength every channel of a stream spans the same range on the crops
    measured, and the float model computes the same logits."""
    from edge_smw.export.equalize import equalize

    eq = equalize(setup.fp32, setup.calib, setup.contract, strength=1.0, limit=32)
    assert len(eq.streams) == 7 and sum(len(s.tensors) for s in eq.streams) == 25
    for stream in eq.streams:
        assert all("conv_pwl" in p or "blocks.0.0/conv_pw" in p for p in stream.producers)
        assert all("conv_pw/" in c or "conv_head" in c for c in stream.consumers)
    rescaled = eq.apply(setup.fp32)
    ref = setup.logits(setup.fp32_path, limit=64)
    same = setup.logits(setup.save(rescaled, "equalized.onnx"), limit=64)
    assert np.allclose(same, ref, atol=1e-4 * float(np.abs(ref).max()))

    names = [t for s in eq.streams for t in s.tensors]
    peak: dict[str, np.ndarray] = {}
    for values in Q.tensor_batches(rescaled, names, setup.calib, setup.contract, limit=32,
                                   batch_size=16):
        for name in names:
            channel = np.abs(values[name]).max(axis=(0, 2, 3))
            peak[name] = np.maximum(peak.get(name, channel), channel)
    for stream, before in zip(eq.streams, eq.spread_before, strict=True):
        ranges = np.max([peak[t] for t in stream.tensors], axis=0)
        assert before > 1.2  # the channels did differ
        assert np.allclose(ranges, ranges.max(), rtol=1e-3)


def test_clipped_equalization_fills_each_relu6_channel_and_keeps_the_logits(
        setup: Setup) -> None:
    """Lite0's 32 Conv -> ReLU6 outputs read only by Convs are found (a kind of stream of
    their own: no linear one); on the crops measured the logits are the same (every value
    stays under its channel's new ceiling), and a ReLU6 output only a depthwise Conv reads
    (full strength) has every channel that used less than 1/1.25 of [0, 6] at the same
    largest value."""
    from edge_smw.export.equalize import CLIP_MARGIN, CLIPPED, MAX_SCALE, equalize

    eq = equalize(setup.fp32, setup.calib, setup.contract, kind=CLIPPED, limit=32)
    clipped = list(zip(eq.streams, eq.scales, strict=True))
    assert len(clipped) == 32 and all(s.ceiling == 6.0 for s in eq.streams)
    assert eq.describe()["kind"] == CLIPPED and eq.describe()["streams"] == 32
    assert sum(bool(s.depthwise) for s, _ in clipped) == 16  # the stem's and expansions'
    rescaled = eq.apply(setup.fp32)
    inputs = {"input": setup.calib.inputs(setup.contract, 0, 32)}  # the crops measured
    ref = load_session(setup.fp32_path).run(["logits"], inputs)[0]
    same = load_session(setup.save(rescaled, "clip-equalized.onnx")).run(["logits"], inputs)[0]
    assert np.allclose(same, ref, atol=1e-4 * float(np.abs(ref).max()))

    names = [s.tensors[-1] for s, _ in clipped]
    before: dict[str, np.ndarray] = {}
    after: dict[str, np.ndarray] = {}
    for model, peaks in ((setup.fp32, before), (rescaled, after)):
        for values in Q.tensor_batches(model, names, setup.calib, setup.contract, limit=32,
                                       batch_size=16):
            for name in names:
                channel = values[name].max(axis=(0, 2, 3))
                peaks[name] = np.maximum(peaks.get(name, channel), channel)
    widened = 0
    for stream, scale in clipped:
        name = stream.tensors[-1]
        # float noise of the unscaled model (about 1e-5), multiplied by the scale
        assert np.all(np.abs(after[name] - before[name] * scale)
                      <= 1e-3 * after[name] + 1e-5 * scale)
        assert after[name].max() <= stream.ceiling + 1e-5
        if stream.depthwise and not stream.consumers:
            full = (before[name] * CLIP_MARGIN < stream.ceiling) & (scale < MAX_SCALE)
            assert np.allclose(after[name][full], stream.ceiling / CLIP_MARGIN, rtol=1e-3)
            widened += int(full.sum())
    assert widened > 100  # the channels did use less than the ceiling


def test_a_clipped_stream_is_clipped_per_channel_at_its_new_ceiling() -> None:
    """Conv -> Clip(0, 6) -> depthwise Conv -> Clip(0, 6) -> Conv: two clipped streams, the
    first read by the depthwise Conv's rows, the second by the last Conv's columns. Scaled by
    ``s_c``, each channel is clipped at ``6 / s_c`` and nothing else changes; a Clip that does
    not start at 0, or whose output a non-Conv reads, is not a stream."""
    from onnx import TensorProto, helper

    from edge_smw.export.equalize import (
        CLIPPED,
        LINEAR,
        Equalization,
        clipped_streams,
        find_streams,
    )

    rng = np.random.default_rng(1)
    weights = {"w0": rng.normal(size=(4, 4, 1, 1)), "b0": rng.normal(size=4),
               "dw": rng.normal(size=(4, 1, 3, 3)), "b1": rng.normal(size=4),
               "w2": rng.normal(size=(4, 4, 1, 1)), "lo": np.array(0.0), "hi": np.array(6.0),
               "lo1": np.array(0.0), "hi1": np.array(6.0)}
    node = helper.make_node
    nodes = [node("Conv", ["x", "w0", "b0"], ["a"], name="A"),
             node("Clip", ["a", "lo", "hi"], ["r"], name="clip0"),
             node("Conv", ["r", "dw", "b1"], ["d"], name="D", group=4, pads=[1, 1, 1, 1]),
             node("Clip", ["d", "lo1", "hi1"], ["r2"], name="clip1"),
             node("Conv", ["r2", "w2"], ["y"], name="F")]
    def graph(outputs: tuple[str, ...]) -> onnx.GraphProto:
        return helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
            [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()])

    model = helper.make_model(graph(("y",)))
    streams = clipped_streams(model)
    assert [(s.producers, s.consumers, s.depthwise, s.ceiling) for s in streams] == [
        (("A",), (), ("D",), 6.0), (("D",), ("F",), (), 6.0)]
    # each kind a step of its own: no Conv output here is read without a Clip
    assert find_streams(model, CLIPPED) == streams and find_streams(model, LINEAR) == []
    with pytest.raises(ValueError, match="choose 'linear' or 'clipped'"):
        find_streams(model, "relu")
    probed = helper.make_model(graph(("y", "r")))  # r seen: no longer a stream of its own
    assert [s.producers for s in clipped_streams(probed)] == [("D",)]

    import onnxruntime as ort

    def run(m: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
        return ort.InferenceSession(m.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x})

    scales = [np.array([1.0, 2.0, 3.0, 6.0]), np.array([1.5, 1.0, 2.0, 4.0])]
    rescaled = Equalization(CLIPPED, streams, scales, [1.0] * 2, [1.0] * 2, 1.0, 0).apply(probed)
    small = (0.02 * rng.normal(size=(1, 4, 8, 8))).astype(np.float32)
    (y, r), (y_new, r_new) = run(probed, small), run(rescaled, small)
    assert r.max() < 1.0 and np.allclose(y_new, y, rtol=1e-4, atol=1e-5)
    assert np.allclose(r_new, r * scales[0].reshape(1, -1, 1, 1), rtol=1e-4, atol=1e-6)
    large = (50 * rng.normal(size=(1, 4, 8, 8))).astype(np.float32)
    a = run(helper.make_model(graph(("a",))), large)[0]
    ceiling = (6.0 / scales[0]).reshape(1, -1, 1, 1)
    assert np.allclose(run(rescaled, large)[1] / scales[0].reshape(1, -1, 1, 1),
                       np.clip(a, 0.0, ceiling), rtol=1e-4, atol=1e-5)

    shifted = copy.deepcopy(model)
    next(i for i in shifted.graph.initializer if i.name == "lo").CopyFrom(
        numpy_helper.from_array(np.array(-1.0, np.float32), "lo"))
    assert [s.producers for s in clipped_streams(shifted)] == [("D",)]
    pooled = copy.deepcopy(model)
    pooled.graph.node.append(node("GlobalAveragePool", ["r2"], ["p"], name="pool"))
    assert [s.producers for s in clipped_streams(pooled)] == [("A",)]


def test_quant_report_knows_which_flavours_moved_tensors(tmp_path: Path) -> None:
    """``quant-report`` on an export folder warns for flavours whose streams were rescaled or
    whose ReLU outputs were centred (their SQNR against model.onnx would compare different
    values of the same tensor)."""
    import json

    from edge_smw.export.sensitivity import _moved_tensors

    export_json = tmp_path / "export.json"
    export_json.write_text(json.dumps({"int8": {"flavours": {
        "cpu": {"steps": [{"step": "range equalization", "kept": True}]},
        "tensorrt": {"steps": [{"step": "range equalization", "kept": False},
                               {"step": "centred activations", "kept": True}]}}}}))
    assert _moved_tensors(export_json) == {"cpu": ["range equalization"],
                                           "tensorrt": ["centred activations"]}
    export_json.write_text(json.dumps({"int8": {"flavours": {
        "cpu": {"steps": [{"step": "range equalization", "kept": False}]}}}}))
    assert _moved_tensors(export_json) == {}
    export_json.write_text("{not json")
    assert _moved_tensors(export_json) == {}
    assert _moved_tensors(tmp_path / "missing.json") == {}


def test_quant_report_bad_input_is_one_line(smiles_int8: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """--top below 1 (as rank refuses it), a missing folder, a truncated int8 model (as a
    truncated model.onnx is): one line each, exit 2."""
    import shutil

    from edge_smw.artifacts.formats import INT8_CPU
    from edge_smw.cli.main import main

    export = smiles_int8.parent
    truncated = tmp_path / "truncated"
    shutil.copytree(export, truncated)
    (truncated / INT8_CPU.file_name).write_bytes(smiles_int8.read_bytes()[:10000])
    for argv, expected in (([str(export), "--top", "0"], "--top must be >= 1, got 0"),
                           ([str(export), "--top", "-1"], "--top must be >= 1, got -1"),
                           ([str(tmp_path / "nonexist")], "nonexist not found"),
                           ([str(truncated)], f"{INT8_CPU.file_name} cannot be loaded")):
        assert main(["quant-report", *argv, "--out", str(tmp_path / "r"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err, err
    assert not (tmp_path / "r").exists()


def test_quant_report_writes_nothing_into_the_export_folder(
        smiles_int8: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's shape-inferred copies go to a private temporary folder: a read-only
    export folder works, and two reports at once cannot clash on a fixed name there."""
    from edge_smw.export.sensitivity import report_for_export

    export = smiles_int8.parent
    written: list[Path] = []
    infer = onnx.shape_inference.infer_shapes_path

    def spy(source: str, target: str, *args, **kwargs) -> None:
        written.append(Path(target))
        infer(source, target, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path", spy)
    before = sorted(p.name for p in export.iterdir())
    report_for_export(export, out=tmp_path / "r", limit=4, progress=False)
    assert written and not [p for p in written if p.parent.resolve() == export.resolve()]
    assert sorted(p.name for p in export.iterdir()) == before
    assert (tmp_path / "r" / "quant_report.cpu.json").is_file()


def _graph(nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph)


def test_a_bias_edit_never_reaches_a_second_conv() -> None:
    """Exporters merge equal constants, so two Convs can read one bias initializer: editing
    one Conv's bias gives it its own, and the other keeps the original values."""
    from onnx import helper

    from edge_smw.export.quantize import BiasCorrection, apply_bias_correction

    nodes = [helper.make_node("Conv", ["x", "w0", "b"], ["a"], name="A"),
             helper.make_node("Conv", ["a", "w1", "b"], ["y"], name="B")]
    model = _graph(nodes, {"w0": np.ones((4, 4, 1, 1)), "w1": np.ones((4, 4, 1, 1)),
                           "b": np.arange(4.0)})
    shift = np.array([1.0, -1.0, 0.5, 0.0])
    corrected = apply_bias_correction(model, BiasCorrection({"A": shift}, crops=1))
    init = {i.name: numpy_helper.to_array(i) for i in corrected.graph.initializer}
    a, b = corrected.graph.node
    assert b.input[2] == "b" and np.array_equal(init["b"], np.arange(4.0))
    assert a.input[2] != "b" and np.allclose(init[a.input[2]], np.arange(4.0) - shift)
    alone = apply_bias_correction(_graph(nodes[:1], {"w0": np.ones((4, 4, 1, 1)),
                                                     "b": np.arange(4.0)}),
                                  BiasCorrection({"A": shift}, crops=1))
    assert alone.graph.node[0].input[2] == "b"  # its own bias: edited in place


def test_streams_stop_at_activations_depthwise_readers_and_constants() -> None:
    """Only what rescales exactly: a Conv read through Relu, a stream a depthwise Conv reads
    and an Add with a constant input are left alone."""
    from onnx import helper

    from edge_smw.export.equalize import LINEAR, Equalization, linear_streams

    w = {f"w{i}": np.ones((4, 4, 1, 1)) for i in range(6)}
    w["dw"] = np.ones((4, 1, 3, 3))
    w["c"] = np.ones((1, 4, 1, 1))
    conv = helper.make_node
    nodes = [conv("Conv", ["x", "w0"], ["a"], name="A"),        # linear: A, B -> add -> C
             conv("Conv", ["a", "w1"], ["b"], name="B"),
             conv("Add", ["a", "b"], ["s"], name="add"),
             conv("Conv", ["s", "w2"], ["c1"], name="C"),
             conv("Relu", ["c1"], ["r"], name="relu"),           # C is read through Relu
             conv("Conv", ["r", "w3"], ["d"], name="D"),         # D is read by a depthwise
             conv("Conv", ["d", "dw"], ["e"], name="E", group=4),
             conv("Add", ["e", "c"], ["f"], name="plus_const"),  # E: an Add with a constant
             conv("Conv", ["f", "w4"], ["y"], name="F")]
    rng = np.random.default_rng(0)
    model = _graph(nodes, {k: rng.normal(size=v.shape) for k, v in w.items()})
    streams = linear_streams(model)
    assert len(streams) == 1
    (stream,) = streams  # B both reads and writes the stream: scaled on both sides
    assert set(stream.tensors) == {"a", "b", "s"} and set(stream.producers) == {"A", "B"}
    assert set(stream.consumers) == {"B", "C"}

    import onnxruntime as ort

    scales = [rng.uniform(0.2, 5.0, size=4)]
    rescaled = Equalization(LINEAR, streams, scales, [1.0], [1.0], 1.0, 0).apply(model)
    x = {"x": rng.normal(size=(1, 4, 8, 8)).astype(np.float32)}

    def run(m: onnx.ModelProto) -> np.ndarray:
        return ort.InferenceSession(m.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, x)[0]

    assert np.allclose(run(rescaled), run(model), rtol=1e-4, atol=1e-4)
    assert not np.allclose(numpy_helper.to_array(rescaled.graph.initializer[0]),
                           numpy_helper.to_array(model.graph.initializer[0]))


# -- quantization-aware tuning -------------------------------------------------------------------
@pytest.mark.parametrize("flavour", [Q.Flavour.CPU, Q.Flavour.TENSORRT])
def test_tuning_interpreter_runs_the_graph_as_onnxruntime_does(setup: Setup,
                                                               flavour: Q.Flavour) -> None:
    """The torch interpreter tuning trains through gives onnxruntime's logits: to float
    precision for the float model; for the int8 model as closely as onnxruntime's two ways of
    running the same graph agree with each other (fused integer kernels vs. the plain Q/DQ
    ops: a few activations one step apart where a value sits on a rounding tie, carried to
    the logits), well inside the int8 model's own error."""
    import onnxruntime as ort

    from edge_smw.export.tuning import QdqGraph

    inputs = setup.val.inputs(setup.contract, 0, 48)
    crops = torch.from_numpy(inputs)
    with torch.no_grad():
        float_logits = QdqGraph(setup.fp32)(crops, ["logits"])[0].numpy()
    fp32 = setup.logits(setup.fp32_path, limit=48)
    assert np.allclose(float_logits, fp32, atol=1e-3)
    from edge_smw.export.input_grid import put_input_on_grid

    on_grid, _ = put_input_on_grid(setup.fp32, setup.contract)  # its explicit Pad too
    with torch.no_grad():
        grid_logits = QdqGraph(on_grid)(crops, ["logits"])[0].numpy()
    assert np.allclose(grid_logits, setup.logits(setup.save(on_grid, "grid.onnx"), limit=48),
                       atol=1e-3)

    qdq = Q.quantize(setup.fp32, setup.calibration,
                     Q.flavour_spec(flavour, reduce_range=flavour is Q.Flavour.CPU))
    path = setup.save(qdq, f"interp-{flavour.value}.onnx")
    fused = setup.logits(path, limit=48)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input": inputs})[0]
    with torch.no_grad():
        interpreted = QdqGraph(qdq)(crops, ["logits"])[0].numpy()

    def gap(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).mean())

    assert gap(fused, fp32) > 0.01  # the int8 model's own error
    assert gap(interpreted, fused) < 0.5 * gap(fused, fp32)
    assert gap(interpreted, plain) < 1.5 * gap(fused, plain) + 1e-3


@pytest.mark.parametrize("flavour", [Q.Flavour.CPU, Q.Flavour.TENSORRT])
def test_tuning_lowers_the_logit_error_on_the_quantizers_grid(setup: Setup,
                                                              flavour: Q.Flavour) -> None:
    """Three short passes lower the int8 model's logit error on its crops; the quantizer
    rebuilds the tuned weights exactly (every trained row on its grid), and onnxruntime's int8
    model from them is closer to fp32 on those crops than before; rows not trained keep their
    weights."""
    from edge_smw.export.rounding import check_on_grid
    from edge_smw.export.tuning import tune

    spec = Q.flavour_spec(flavour, reduce_range=flavour is Q.Flavour.CPU)
    qdq = Q.quantize(setup.fp32, setup.calibration, spec)
    crops = setup.calib.subset(range(32))
    tuning = tune(setup.fp32, qdq, crops, setup.contract, epochs=3, batch_size=4,
                  progress=False)
    assert tuning.losses[-1] < tuning.losses[0]
    assert tuning.describe()["convs"] == Q.qdq_summary(qdq)["int8_convs"]
    tuned = Q.quantize(tuning.apply(setup.fp32), setup.calibration, spec)
    assert check_on_grid(tuning, tuned) == []

    session_inputs = {"input": crops.inputs(setup.contract)}

    def error(model: onnx.ModelProto) -> float:
        out = load_session(setup.save(model, "tuned-check.onnx")).run(["logits"],
                                                                       session_inputs)[0]
        ref = load_session(setup.fp32_path).run(["logits"], session_inputs)[0]
        return float(np.mean((out - ref) ** 2))

    assert error(tuned) < error(qdq)

    before = {i.name: numpy_helper.to_array(i) for i in setup.fp32.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in tuning.apply(setup.fp32).graph.initializer}
    convs = {n.name: n for n in setup.fp32.graph.node if n.op_type == "Conv"}
    for name, weight in tuning.weights.items():  # trained rows tuned, the others as they were
        rows = tuning.rows[name]
        new = after[convs[name].input[1]]
        assert np.array_equal(new[rows], weight[rows])
        assert np.array_equal(new[~rows], before[convs[name].input[1]][~rows])
    assert sum(not np.array_equal(after[n.input[2]], before[n.input[2]])
               for n in convs.values() if n.name in tuning.biases) > 0
    first = convs[next(iter(tuning.weights))]  # a Conv mixed precision keeps float
    kept = {i.name: numpy_helper.to_array(i)
            for i in tuning.apply(setup.fp32, skip=[first.name]).graph.initializer}
    assert all(np.array_equal(kept[k], before[k]) for k in first.input[1:])


@pytest.mark.parametrize("flavour", [Q.Flavour.CPU, Q.Flavour.TENSORRT])
def test_learned_activation_scales_are_the_rebuilt_graphs(setup: Setup,
                                                          flavour: Q.Flavour) -> None:
    """With ``learn_ranges`` the activation scales move too, the input's exact grid does not;
    the quantizer rebuilds the graph with exactly the learned scales and the calibrated zero
    points, and that graph is the one the interpreter trained (its logits, run the same way)."""
    from edge_smw.export.tuning import QdqGraph, tune

    spec = Q.flavour_spec(flavour, reduce_range=flavour is Q.Flavour.CPU)
    qdq = Q.quantize(setup.fp32, setup.calibration, spec)
    crops = setup.calib.subset(range(32))
    tuning = tune(setup.fp32, qdq, crops, setup.contract, epochs=3, batch_size=4,
                  learn_ranges=True, progress=False)
    assert "input" not in tuning.overrides
    assert tuning.describe()["activation_scales"]["learned"] == len(tuning.scale_factors) > 10
    assert any(abs(f - 1) > 1e-3 for f in tuning.scale_factors)
    assert tuning.losses[-1] < tuning.losses[0]

    rebuilt = Q.quantize(tuning.apply(setup.fp32), setup.calibration, spec,
                         overrides=tuning.overrides)
    inits = {i.name: numpy_helper.to_array(i) for i in rebuilt.graph.initializer}
    calibrated = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    quantizers = {n.input[0]: n for n in rebuilt.graph.node if n.op_type == "QuantizeLinear"}
    before = {n.input[0]: n for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    for tensor, (override,) in tuning.overrides.items():
        node = quantizers[tensor]
        assert np.float32(inits[node.input[1]]) == np.float32(override["scale"])
        assert inits[node.input[2]] == calibrated[before[tensor].input[2]]
    moved = [t for t, (o,) in tuning.overrides.items()
             if not np.isclose(o["scale"], calibrated[before[t].input[1]], rtol=1e-4)]
    assert moved

    crop_inputs = torch.from_numpy(crops.inputs(setup.contract))
    with torch.no_grad():
        fp32, untuned, tuned = (QdqGraph(m)(crop_inputs, ["logits"])[0].numpy()
                                for m in (setup.fp32, qdq, rebuilt))
    assert np.mean((tuned - fp32) ** 2) < np.mean((untuned - fp32) ** 2)


def test_qdrop_skips_activation_quantizers_only_in_training(setup: Setup) -> None:
    """QDrop's mask acts in training only: measured (eval) logits are the plain int8 graph's;
    with every element dropped the activations are float and the weights still int8, so the
    logits are closer to fp32 than the int8 graph's, and not fp32's own."""
    from edge_smw.export.tuning import QdqGraph

    qdq = Q.quantize(setup.fp32, setup.calibration, Q.flavour_spec(Q.Flavour.TENSORRT))
    crops = torch.from_numpy(setup.val.inputs(setup.contract, 0, 16))
    with torch.no_grad():
        fp32 = QdqGraph(setup.fp32)(crops, ["logits"])[0]
        plain = QdqGraph(qdq)(crops, ["logits"])[0]
        dropping = QdqGraph(qdq, drop=1.0)
        dropping.eval()
        measured = dropping(crops, ["logits"])[0]
        dropping.train()
        trained_on = dropping(crops, ["logits"])[0]
    assert torch.equal(measured, plain)
    gap = float(torch.mean((plain - fp32) ** 2))
    assert 0 < float(torch.mean((trained_on - fp32) ** 2)) < 0.5 * gap


def test_tuning_with_block_outputs_and_qdrop(setup: Setup) -> None:
    """Matching each unit's output to the float model's still tunes on the quantizer's grid
    and lowers the logit error, and QDrop tunes on the grid too; the unit outputs are the
    tensors one block hands to the next, shared by the int8 and float graphs; without the
    float source the option is refused."""
    from edge_smw.export.rounding import check_on_grid
    from edge_smw.export.sensitivity import node_units
    from edge_smw.export.tuning import tune, unit_outputs

    outputs = unit_outputs(setup.fp32)
    units = node_units(setup.fp32)
    assert len(outputs) >= len(units) - 1
    made_by = {o: n.name for n in setup.fp32.graph.node for o in n.output}
    unit_of = {name: unit for unit, names in units.items() for name in names}
    assert len({unit_of[made_by[t]] for t in outputs}) == len(outputs)  # one per unit here
    spec = Q.flavour_spec(Q.Flavour.TENSORRT)
    qdq = Q.quantize(setup.fp32, setup.calibration, spec)
    assert set(outputs) <= {o for n in qdq.graph.node for o in n.output}
    crops = setup.calib.subset(range(32))
    tuning = tune(setup.fp32, qdq, crops, setup.contract, epochs=3, batch_size=4,
                  source=setup.fp32, block_weight=1.0, progress=False)
    assert tuning.losses[-1] < tuning.losses[0]
    assert tuning.describe()["block_outputs"] == {"matched": len(outputs), "weight": 1.0}
    assert check_on_grid(tuning, Q.quantize(tuning.apply(setup.fp32), setup.calibration,
                                            spec)) == []
    dropped = tune(setup.fp32, qdq, crops, setup.contract, epochs=1, batch_size=4, drop=0.5,
                   progress=False)  # its pass losses are of the dropped graph: not compared
    assert check_on_grid(dropped, Q.quantize(dropped.apply(setup.fp32), setup.calibration,
                                             spec)) == []
    assert any(not np.array_equal(dropped.weights[k], tuning.weights[k])
               for k in tuning.weights)
    assert dropped.describe()["qdrop_probability"] == 0.5
    assert "qdrop_probability" not in tuning.describe()
    with pytest.raises(ValueError, match="float source"):
        tune(setup.fp32, qdq, crops, setup.contract, epochs=1, block_weight=1.0,
             progress=False)


def test_too_few_tuning_crops_name_their_option(setup: Setup) -> None:
    """Tuning crops are drawn like calibration crops; a too-small request names --tune-crops,
    not the calibration's option."""
    from edge_smw.export.crops import calibration_crops

    with pytest.raises(InputError, match="--tune-crops 10: quantization-aware tuning needs"):
        calibration_crops(setup.contract, detect=False, size=10, run_or_checkpoint=setup.run,
                          purpose="quantization-aware tuning", size_flag="--tune-crops")


def test_a_pad_of_a_learned_value_keeps_its_gradient() -> None:
    """A centred model's Pad reads its border value through a Q/DQ pair whose scale tuning
    learns: the interpreter pads with that value exactly and passes the scale's gradient
    through the border (a plain number would cut it off)."""
    import warnings

    from onnx import TensorProto, helper

    from edge_smw.export.tuning import QdqGraph

    node = helper.make_node
    consts = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
              "border": np.array(-0.72, np.float32), "s": np.array(0.05, np.float32),
              "zp": np.array(0, np.int8)}
    nodes = [node("QuantizeLinear", ["border", "s", "zp"], ["bq"]),
             node("DequantizeLinear", ["bq", "s", "zp"], ["bdq"]),
             node("Pad", ["input", "pads", "bdq"], ["out"], mode="constant")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    interpreter = QdqGraph(helper.make_model(graph), learn_scales=True)
    assert list(interpreter.scale_logs) == ["s"]
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = interpreter(x, ["out"])[0]
    expected = torch.nn.functional.pad(x, [1, 1, 1, 1], value=-0.7)  # -0.72 on the 0.05 grid
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    # the scale's gradient (LSQ: round(v/s) - v/s per border cell, 12 cells) reaches it
    assert float(interpreter.scale_logs["s"].grad) == pytest.approx(12 * 0.4 * 0.05, rel=1e-3)


@pytest.mark.parametrize("opset", [13, 18])
def test_tuning_interpreter_runs_each_operator_as_onnxruntime_does(opset: int) -> None:
    """Every operator the interpreter knows, on a hand-made graph, gives onnxruntime's values:
    the ones Lite0's graph does not have (reflect/edge Pad, HardSigmoid, Sub, Div, Concat,
    Transpose, ReduceMean, MatMul, Squeeze, Unsqueeze, Reshape, Identity; AveragePool and
    MaxPool, which the stages head uses, with pads and ceil_mode), with axes as attributes
    (opset 13) and as inputs (opset 18)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edge_smw.export.tuning import QdqGraph

    node = helper.make_node
    rng = np.random.default_rng(0)
    consts = {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64),
              "two_and_half": np.array(2.5, np.float32),
              "w": rng.normal(size=(8, 3)).astype(np.float32),
              "axes1": np.array([1], np.int64), "shape": np.array([-1, 3], np.int64)}
    if opset >= 18:  # Pad over the named axes only; ReduceMean's axes as an input
        consts |= {"hw_pads": np.array([1, 2, 2, 1], np.int64),
                   "hw": np.array([2, 3], np.int64), "axes12": np.array([1, 2], np.int64)}
        pad_edge = node("Pad", ["input", "hw_pads", "", "hw"], ["pe"], mode="edge")
        mean = node("ReduceMean", ["t", "axes12"], ["rm"], keepdims=0)
    else:
        pad_edge = node("Pad", ["input", "pads"], ["pe"], mode="edge")
        mean = node("ReduceMean", ["t"], ["rm"], axes=[1, 2], keepdims=0)
    nodes = [node("Pad", ["input", "pads"], ["pr"], mode="reflect"), pad_edge,
             node("Concat", ["pr", "pe"], ["c"], axis=1),
             node("HardSigmoid", ["c"], ["hs"], alpha=0.3, beta=0.4),
             node("Sub", ["hs", "c"], ["sb"]),
             node("Div", ["sb", "two_and_half"], ["dv"]),
             node("Transpose", ["dv"], ["t"], perm=[0, 2, 3, 1]), mean,
             node("MatMul", ["rm", "w"], ["mm"]),
             node("Unsqueeze", ["mm", "axes1"], ["us"]),
             node("Squeeze", ["us", "axes1"], ["sq"]),
             node("Reshape", ["sq", "shape"], ["rs"]),
             node("Identity", ["rs"], ["id"]),
             node("Transpose", ["id"], ["tt"]),
             node("Transpose", ["tt"], ["back"]),
             node("Softmax", ["back"], ["y"], axis=1),
             node("AveragePool", ["input"], ["ap"], kernel_shape=[3, 3], strides=[2, 2],
                  pads=[1, 1, 1, 1]),
             node("AveragePool", ["input"], ["ap_pads"], kernel_shape=[3, 3], strides=[2, 2],
                  pads=[1, 1, 1, 1], count_include_pad=1),
             node("AveragePool", ["input"], ["ap_uneven"], kernel_shape=[3, 3],
                  strides=[2, 2], pads=[0, 0, 1, 1]),
             node("AveragePool", ["input"], ["ap_plain"], kernel_shape=[2, 2], strides=[2, 2],
                  count_include_pad=1),
             node("MaxPool", ["input"], ["mp"], kernel_shape=[3, 3], strides=[2, 2],
                  pads=[0, 0, 1, 1]),
             # ceil_mode: a last partial window, dropped when it would start in the padding
             node("MaxPool", ["input"], ["mp_ceil"], kernel_shape=[3, 3], strides=[2, 2],
                  ceil_mode=1),
             node("MaxPool", ["input"], ["mp_ceil_pads"], kernel_shape=[3, 3], strides=[2, 2],
                  pads=[1, 1, 1, 1], ceil_mode=1),
             node("MaxPool", ["input"], ["mp_ceil_dropped"], kernel_shape=[2, 2],
                  strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1),
             node("AveragePool", ["input"], ["ap_ceil"], kernel_shape=[3, 3], strides=[2, 2],
                  ceil_mode=1),
             node("AveragePool", ["input"], ["ap_ceil_pads"], kernel_shape=[3, 3],
                  strides=[2, 2], pads=[1, 0, 0, 1], ceil_mode=1),
             node("AveragePool", ["input"], ["ap_ceil_dropped"], kernel_shape=[2, 2],
                  strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1)]
    outputs = ["c", "t", "rm", "y", "ap", "ap_pads", "ap_uneven", "ap_plain", "mp", "mp_ceil",
               "mp_ceil_pads", "mp_ceil_dropped", "ap_ceil", "ap_ceil_pads", "ap_ceil_dropped"]
    graph = helper.make_graph(
        nodes, "ops", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 4, 8, 8])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    x = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    expected = ort.InferenceSession(model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"]).run(outputs, {"input": x})
    with torch.no_grad():
        got = QdqGraph(model)(torch.from_numpy(x), outputs)
    for name, want, value in zip(outputs, expected, got, strict=True):
        assert value.shape == want.shape, name
        np.testing.assert_allclose(value.numpy(), want, atol=1e-5, err_msg=name)


def test_tuning_refuses_graphs_it_cannot_run() -> None:
    """An operator the interpreter does not know stops tuning with its name (the export then
    skips the step and says why), rather than training something else than what runs."""
    from onnx import helper

    from edge_smw.export.tuning import QdqGraph, Unsupported

    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="A"),
             helper.make_node("LpNormalization", ["a"], ["y"], name="norm")]
    model = _graph(nodes, {"w0": np.ones((4, 4, 1, 1))})
    with pytest.raises(Unsupported, match="LpNormalization"):
        QdqGraph(model)
    # counted pads with a ceil_mode overhang: no torch pool divides as onnxruntime would
    pool = helper.make_node("AveragePool", ["input"], ["y"], name="pool", kernel_shape=[3, 3],
                            strides=[2, 2], ceil_mode=1, count_include_pad=1)
    with pytest.raises(Unsupported, match="'pool' with ceil_mode and count_include_pad"):
        QdqGraph(_graph([pool], {}))(torch.zeros(1, 4, 8, 8), ["y"])


# -- where float islands can be -----------------------------------------------------------------
def test_onnxruntime_requantizes_a_lone_float_conv(setup: Setup) -> None:
    """Why mixed precision works in whole blocks: a single float Conv between int8 neighbours
    is quantized per tensor by onnxruntime itself; a float block stays float."""
    import onnxruntime as ort

    from edge_smw.export.sensitivity import node_units

    units = node_units(setup.fp32)
    block = units["blocks.1.0"]
    lone = next(n for n in block if "conv_dw" in n)
    lone_act = next(n for n in block if "bn2" in n)

    def optimized(exclude: list[str], name: str) -> onnx.ModelProto:
        model = Q.quantize(setup.fp32, setup.calibration, this_cpus_spec(Q.Flavour.CPU),
                           nodes_to_exclude=exclude)
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(setup.folder / f"{name}.opt.onnx")
        ort.InferenceSession(str(setup.save(model, f"{name}.onnx")), options,
                             providers=["CPUExecutionProvider"])
        return onnx.load_model(options.optimized_model_filepath)

    single = optimized([lone, lone_act], "lone")
    # (onnxruntime suffixes fused nodes' names with _token_N)
    assert any(n.name.startswith(lone) and n.op_type == "QLinearConv" for n in single.graph.node)
    whole = optimized(block, "block")  # (float convs get layout-transformed and renamed)
    in_block = [n.op_type for n in whole.graph.node if "blocks.1.0/" in n.name]
    assert in_block.count("Conv") == 3 and "QLinearConv" not in in_block


# -- sensitivity --------------------------------------------------------------------------------
def test_sensitivity_report_ranks_and_names_tensors(setup: Setup, tmp_path: Path) -> None:
    from edge_smw.export.sensitivity import tensor_errors, unit_ranking, write_report

    qdq = setup.save(setup.int8(Q.Flavour.CPU), "cpu-report.onnx")
    errors = tensor_errors(setup.fp32_path, qdq, setup.calib, setup.contract, limit=8,
                           progress=False)
    graph_tensors = {o for n in setup.fp32.graph.node for o in n.output} | {"input"}
    node_names = {n.name for n in setup.fp32.graph.node} | {"input"}
    assert len(errors) > 50
    assert all(e.tensor in graph_tensors and e.node in node_names for e in errors)
    local = [e.local_sqnr_db for e in errors]
    assert local == sorted(local)
    assert all(e.model_sqnr_db <= e.local_sqnr_db + 1.0 for e in errors[:5])
    assert 10 < max(local) and min(local) < 60
    units = unit_ranking(errors)
    assert {"stem", "head", "blocks.0.0"} <= {u["unit"] for u in units}
    files = write_report(errors, tmp_path, name="quant_report.cpu", title="t", meta={"crops": 8})
    md = files["md"].read_text()
    assert errors[0].tensor in md and "| 1 |" in md
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unit_noise_ranks_blocks_by_logit_noise(setup: Setup) -> None:
    from edge_smw.export.sensitivity import node_units, unit_noise

    units = node_units(setup.fp32)
    picked = {k: units[k] for k in ("stem", "blocks.0.0", "blocks.5.3")}
    spec = this_cpus_spec(Q.Flavour.CPU)
    noise = unit_noise(setup.fp32, picked, setup.calib, setup.contract, limit=16,
                       build=lambda others: Q.quantize(setup.fp32, setup.calibration, spec,
                                                       nodes_to_exclude=others),
                       progress=False)
    assert [n["unit"] for n in noise] == sorted(picked, key=lambda u: -next(
        x["logit_rmse"] for x in noise if x["unit"] == u))
    assert all(n["logit_rmse"] > 0 for n in noise)


# -- mixed precision -----------------------------------------------------------------------------
def _evaluate(setup: Setup, name: str):
    from edge_smw.export.results import Figures, Parity

    counter = {"n": 0}

    def evaluate(model: onnx.ModelProto) -> Figures:
        counter["n"] += 1
        path = setup.save(model, f"{name}-{counter['n']}.onnx")
        session = load_session(path)
        probs = session.run(["probabilities"], {"input": setup.val.inputs(setup.contract)})[0]
        return Figures(Parity.measure(probs.astype(np.float64), setup.reference,
                                      setup.val.levels))

    return evaluate


@pytest.mark.parametrize("flavour", [Q.Flavour.CPU, Q.Flavour.TENSORRT])
def test_mixed_precision_steps_are_monotone(setup: Setup, flavour: Q.Flavour) -> None:
    from edge_smw.export import mixed
    from edge_smw.export.sensitivity import node_units

    units = node_units(setup.fp32)
    spec = this_cpus_spec(flavour)
    result = mixed.search(
        units=units, ranking=["stem", "blocks.0.0", "blocks.1.0"],
        build=lambda nodes: mixed.build(setup.fp32, setup.calibration, spec, None, nodes),
        evaluate=_evaluate(setup, flavour.value), done=lambda figures: False, max_steps=3)
    steps = result.steps
    assert steps[0].name == "all int8" and len(steps) >= 2
    best = steps[0].figures.parity.disagreements
    for step in steps[1:]:
        if step.kept:
            assert step.figures.parity.disagreements < best
            best = step.figures.parity.disagreements
        else:
            assert step.figures.parity.disagreements >= best and "not kept" in step.note
    assert result.figures.parity.disagreements == best
    summary = Q.qdq_summary(result.model)
    float_units = result.float_units
    expected_float = sorted(n for u in float_units for n in units[u]
                            if n in {c.name for c in setup.fp32.graph.node if c.op_type == "Conv"})
    assert sorted(summary["float_convs"]) == expected_float
    if flavour is Q.Flavour.TENSORRT:
        # float islands keep the model valid explicit quantization
        forced = mixed.build(setup.fp32, setup.calibration, spec, None,
                             units["stem"] + units["blocks.0.0"])
        assert Q.tensorrt_problems(forced) == []
        assert Q.tensorrt_problems(result.model) == []
        assert Q.qdq_summary(forced)["all_zero_points_zero"]
        assert len(Q.qdq_summary(forced)["float_convs"]) == 3


# -- the int8-aware head --------------------------------------------------------------------------
def test_set_head_replaces_the_gemm(setup: Setup) -> None:
    from edge_smw.export.int8_head import set_head, with_pooled_output

    k, d = setup.checkpoint.head_weight.shape
    weight = np.random.default_rng(0).standard_normal((k, d)).astype(np.float32)
    bias = np.arange(k, dtype=np.float32)
    model = set_head(setup.int8(Q.Flavour.CPU), weight, bias)
    path = setup.save(with_pooled_output(model), "pooled.onnx")
    session = load_session(path)
    logits, pooled = session.run(["logits", "edge_smw_pooled_features"],
                                 {"input": setup.val.inputs(setup.contract, 0, 4)})
    np.testing.assert_allclose(logits, pooled @ weight.T + bias, rtol=1e-4, atol=1e-4)
