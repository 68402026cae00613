"""Static INT8 post-training quantization with onnxruntime's tools, calibrated on face crops.

Two flavours from one calibration pass:

- ``cpu``: U8S8 (uint8 activations, int8 per-channel weights) QDQ, which onnxruntime's CPU
  provider fuses into ``QLinearConv`` for every Conv. ``reduce_range`` (7-bit weights) is
  chosen from the CPU's instruction set: x86 without VNNI can saturate the 16-bit sums of
  its U8S8 kernels, with VNNI it only costs accuracy (measured, see the module's notes).
- ``tensorrt``: symmetric int8 activations and weights, every zero point 0, weights kept as
  float -> Q -> DQ and float biases: explicit quantization that TensorRT 8.x, 10.x and later
  build as-is (implicit INT8 calibration is deprecated since 10.1 and gone in 11).

Things measured on EfficientNet-Lite0 + linear head that shape this module:

- The float tail (pooling, linear head, softmax) stays float. The head is trained on
  standardised features, so it weighs some near-constant features heavily; quantizing the
  pooled features or the head flips most decisions (top-1 agreement 8% measured) for
  0.01% of the compute.
- Per-channel weight rounding shifts each output channel's mean (depthwise kernels have only
  9-25 weights per channel, so the rounding errors do not average out). ``bias_correction``
  measures that shift on calibration crops and folds it into the float bias before
  quantization: +1.6 to +1.8 points of top-1 agreement on the smilesmiled model.
- onnxruntime (>= 1.20) quantizes the weights of a float Conv *per tensor* when its input
  comes from a DequantizeLinear and its output leads to a QuantizeLinear
  (``WeightBiasQuantization``). A single float Conv between int8 neighbours therefore does not
  stay float on onnxruntime CPU, and per-tensor int8 ruins depthwise kernels. Float islands
  are made of whole blocks (two or more Convs in a row), which that rewrite never touches.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import time
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.calibrate import (
    CalibraterBase,
    HistogramCollector,
    TensorData,
    TensorsData,
    save_tensors_data,
)

from edge_smw.artifacts.formats import int8_format
from edge_smw.artifacts.sessions import SessionSettings, load_session
from edge_smw.contract import PreprocessContract
from edge_smw.cpu import cpu_features, cpu_kind, needs_reduce_range
from edge_smw.errors import InputError, ModelError
from edge_smw.export.crops import CropSet
from edge_smw.export.settings import ENTROPY_BINS, MIN_NUM_BINS, PERCENTILE_RANGE
from edge_smw.metadata import INPUT_NAME, OUTPUT_LOGITS

log = logging.getLogger("edge_smw.export")

ENTROPY_QUANTIZED_BINS = 128
PERCENTILE = 99.999
POOL_OPS = ("ReduceMean", "GlobalAveragePool")


class Flavour(Enum):
    """Where the INT8 model runs."""

    CPU = "cpu"
    TENSORRT = "tensorrt"

    @property
    def file_name(self) -> str:
        return int8_format(self.value).file_name


class CalibMethod(Enum):
    """How an activation's range is chosen from the calibration crops."""

    MINMAX = "minmax"
    ENTROPY = "entropy"  # KL divergence, TensorRT's method, on a 2048-bin histogram
    PERCENTILE = "percentile"
    AUTO = "auto"  # per tensor: the candidate with the least quantization error (MSE)

    @property
    def ort(self) -> CalibrationMethod:
        return {CalibMethod.ENTROPY: CalibrationMethod.Entropy,
                CalibMethod.PERCENTILE: CalibrationMethod.Percentile}.get(
                    self, CalibrationMethod.MinMax)


def parse_enum(enum: type[Enum], value: Any, what: str) -> Any:
    """A user string -> enum member, or an InputError listing the choices."""
    if isinstance(value, enum):
        return value
    try:
        return enum(str(value).lower())
    except ValueError:
        choices = ", ".join(m.value for m in enum)
        raise InputError(f"{what} {value!r}: choose one of {choices}") from None


@dataclass(frozen=True)
class FlavourSpec:
    """The onnxruntime quantization settings of a flavour."""

    flavour: Flavour
    activation_type: QuantType
    weight_type: QuantType
    reduce_range: bool
    extra_options: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {"flavour": self.flavour.value, "format": "QDQ",
                "activation_type": self.activation_type.name,
                "weight_type": self.weight_type.name, "per_channel": True,
                "reduce_range": self.reduce_range, "extra_options": self.extra_options}


def flavour_spec(flavour: Flavour, *, reduce_range: bool = False) -> FlavourSpec:
    if flavour is Flavour.CPU:
        return FlavourSpec(flavour, QuantType.QUInt8, QuantType.QInt8, reduce_range, {})
    return FlavourSpec(flavour, QuantType.QInt8, QuantType.QInt8, False, {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "AddQDQPairToWeight": True,  # float weights -> Q -> DQ: TensorRT 8.x's explicit form
        "QuantizeBias": False,  # TensorRT takes float biases with Q/DQ weights
    })


def one_quantizer_per_activation(spec: FlavourSpec) -> FlavourSpec:
    """``spec`` with no quantizer on a Conv's own output: a ReLU after it is then quantized
    once, at its output (where the next Conv, or an Add, reads it), as TensorRT fuses Conv +
    ReLU; a Conv's output read directly is quantized by its readers as before."""
    extra = {**spec.extra_options, "OpTypesToExcludeOutputQuantization": ["Conv"]}
    return FlavourSpec(spec.flavour, spec.activation_type, spec.weight_type, spec.reduce_range,
                       extra)


# -- the CPU it is built for ---------------------------------------------------------------------
def decide_reduce_range(flavour: Flavour, setting: str | bool = "auto",
                        target_cpu: str = "build-machine",
                        features: dict[str, Any] | None = None) -> tuple[bool, str]:
    """(reduce_range, why). ``auto``: on when the *target* CPU is x86 without VNNI (U8S8
    16-bit saturation, see ``edge_smw.cpu``); ``build-machine`` reads this machine's CPU."""
    if flavour is Flavour.TENSORRT:
        return False, "tensorrt flavour: full 8-bit symmetric weights"
    if isinstance(setting, bool):
        return setting, f"set explicitly ({'on' if setting else 'off'})"
    setting = str(setting).lower()
    if setting in ("on", "true", "yes"):
        return True, "set explicitly (on)"
    if setting in ("off", "false", "no"):
        return False, "set explicitly (off)"
    if setting != "auto":
        raise InputError(f"--reduce-range {setting!r}: choose auto, on or off")
    kind = target_cpu
    where = f"target CPU {target_cpu}"
    if target_cpu == "build-machine":
        feats = features or cpu_features()
        kind = cpu_kind(feats)
        where = f"target CPU: this machine ({kind}; {', '.join(feats['vnni_flags']) or 'no VNNI'})"
    if needs_reduce_range(kind):
        return True, f"{where}: x86 without VNNI, 7-bit weights avoid U8S8 16-bit saturation"
    return False, f"{where}: no U8S8 saturation, full 8-bit weights"


# -- calibration data ----------------------------------------------------------------------------
class CropReader(CalibrationDataReader):
    """onnxruntime's calibration reader over real face crops, normalised by the contract."""

    def __init__(self, crops: CropSet, contract: PreprocessContract, *, batch_size: int = 16,
                 progress: bool = False, desc: str = "calibration") -> None:
        self.crops = crops
        self.contract = contract
        self.batch_size = batch_size
        self.progress = progress
        self.desc = desc
        self._start, self._stop = 0, len(crops)
        self._next = 0
        self._bar = None

    def __len__(self) -> int:
        return self._stop - self._start

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._stop = start_index, min(end_index, len(self.crops))
        self.rewind()

    def rewind(self) -> None:
        self._next = self._start
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._stop:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            return None
        if self._bar is None and self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(self), desc=self.desc, unit="crop", leave=False)
        stop = min(self._next + self.batch_size, self._stop)
        batch = self.crops.inputs(self.contract, self._next, stop)
        if self._bar is not None:
            self._bar.update(stop - self._next)
        self._next = stop
        return {INPUT_NAME: batch}


# -- calibration: one pass, every method -------------------------------------------------------
@dataclass
class Calibration:
    """Activation ranges from one pass over the calibration crops."""

    method: CalibMethod
    ranges: dict[str, tuple[float, float]]
    crops_sha256: str
    crops_count: int
    candidates: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    choice: dict[str, str] = field(default_factory=dict)  # AUTO: tensor -> method picked
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def tensors_data(self) -> TensorsData:
        data = {name: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
                for name, (lo, hi) in self.ranges.items()}
        return TensorsData(self.method.ort, data)

    def describe(self) -> dict[str, Any]:
        picked: dict[str, int] = {}
        for method in self.choice.values():
            picked[method] = picked.get(method, 0) + 1
        return {"method": self.method.value, "crops": self.crops_count,
                "crops_sha256": self.crops_sha256, "tensors": len(self.ranges),
                "settings": self.settings, "auto_choice_counts": picked,
                "seconds": round(self.seconds, 2)}


def _calibration_tensors(model_path: Path) -> tuple[onnx.ModelProto, list[str]]:
    """The float tensors onnxruntime's quantizer wants ranges for, added as graph outputs."""
    base = CalibraterBase(model_path, op_types_to_calibrate=[])
    tensors, value_infos = base.select_tensors_to_calibrate(base.model)
    model = base.model
    outputs = {o.name for o in model.graph.output}
    for name in sorted(tensors):
        if name not in outputs:
            model.graph.output.append(value_infos[name])
    return model, sorted(tensors)


# Reading intermediate tensors needs the graph as written: no fusion may remove them.
UNOPTIMIZED = SessionSettings(optimization="none")


def input_range(contract: PreprocessContract) -> tuple[float, float]:
    """The network input's exact range: pixels 0..255 through the contract's affine."""
    mul, add = contract.affine()
    ends = np.concatenate([add, 255.0 * mul + add])
    return float(ends.min()), float(ends.max())


def calibrate(
    fp32_path: str | Path, crops: CropSet, contract: PreprocessContract,
    method: CalibMethod = CalibMethod.MINMAX, *, num_bins: int = ENTROPY_BINS,
    percentile: float = PERCENTILE, batch_size: int = 8, progress: bool = True,
    activation_symmetric: bool = False,
) -> Calibration:
    """Run the float model over the crops once; ranges for ``method`` (and every candidate).

    Min/max are always collected; histograms (``num_bins`` wide, merged across batches with
    onnxruntime's ``HistogramCollector``) only for the histogram methods. The input's range
    is taken from the contract (it is known exactly), never clipped by a histogram method.
    """
    from tqdm.auto import tqdm

    if num_bins < MIN_NUM_BINS:
        raise InputError(f"num_bins {num_bins}: the entropy search needs >= {MIN_NUM_BINS} bins "
                         f"(default {ENTROPY_BINS})")
    low, high = PERCENTILE_RANGE
    if not low <= percentile < high:
        raise InputError(f"percentile {percentile}: choose a value in [{low:g}, {high:g})")
    started = time.perf_counter()
    histograms = method is not CalibMethod.MINMAX
    with tempfile.TemporaryDirectory(prefix="edge-smw-calib-") as scratch:
        augmented, tensors = _calibration_tensors(Path(fp32_path))
        aug_path = Path(scratch) / "augmented.onnx"
        onnx.save_model(augmented, str(aug_path))
        session = load_session(aug_path, UNOPTIMIZED)
        names = [o.name for o in session.get_outputs()]
        lows = {t: np.inf for t in tensors}
        highs = {t: -np.inf for t in tensors}
        collector = HistogramCollector("entropy", False, num_bins, ENTROPY_QUANTIZED_BINS,
                                       percentile, "same") if histograms else None
        reader = CropReader(crops, contract, batch_size=batch_size)
        bar = tqdm(total=len(crops), desc=f"calibrate ({method.value})", unit="crop",
                   disable=not progress, leave=False)
        while (feed := reader.get_next()) is not None:
            values = dict(zip(names, session.run(None, feed), strict=True))
            for t in tensors:
                lows[t] = min(lows[t], float(np.min(values[t])))
                highs[t] = max(highs[t], float(np.max(values[t])))
            if collector is not None:
                with contextlib.redirect_stdout(io.StringIO()):
                    collector.collect({t: [values[t]] for t in tensors})
            bar.update(len(feed[INPUT_NAME]))
            del values
        bar.close()
    candidates: dict[str, dict[str, tuple[float, float]]] = {
        "minmax": {t: (lows[t], highs[t]) for t in tensors}}
    if collector is not None:
        candidates["percentile"] = _compute(collector, "percentile")
        if method in (CalibMethod.ENTROPY, CalibMethod.AUTO):
            candidates["entropy"] = _compute(collector, "entropy")
    choice: dict[str, str] = {}
    if method is CalibMethod.AUTO:
        ranges = {}
        for t in tensors:
            hist, edges = collector.histogram_dict[t][:2]
            scored = [(_range_mse(hist, edges, *candidates[m][t],
                                  symmetric=activation_symmetric), m) for m in candidates]
            best = min(scored)[1]
            ranges[t] = candidates[best][t]
            choice[t] = best
    else:
        ranges = dict(candidates[method.value])
    if INPUT_NAME in ranges:
        ranges[INPUT_NAME] = input_range(contract)
    # The map that is pooled into the head's features keeps its full range: it is sparse
    # (mostly near 0, rare large values that carry the decision), the shape the KL search
    # clips hardest (measured: [0, 6] -> [0, 0.38], top-1 agreement 44%).
    pooled = _pooled_maps(Path(fp32_path))
    for name in pooled:
        if name in ranges:
            ranges[name] = candidates["minmax"][name]
            if name in choice:
                choice[name] = "minmax"
    settings = {"num_bins": num_bins if histograms else None,
                "num_quantized_bins": ENTROPY_QUANTIZED_BINS if method in (
                    CalibMethod.ENTROPY, CalibMethod.AUTO) else None,
                "percentile": percentile if histograms else None,
                "input_range": "from the contract (exact)",
                "minmax_kept_for": pooled}
    return Calibration(method, ranges, crops.sha256, len(crops), candidates, choice, settings,
                       time.perf_counter() - started)


def _pooled_maps(model_path: Path) -> list[str]:
    """The tensors the float tail's global pool reads (the backbone's last feature map)."""
    model = onnx.load_model(str(model_path), load_external_data=False)
    tail = set(float_tail(model))
    return [node.input[0] for node in model.graph.node
            if node.name in tail and node.op_type in POOL_OPS]


def _compute(collector: HistogramCollector, method: str) -> dict[str, tuple[float, float]]:
    collector.method = method
    with contextlib.redirect_stdout(io.StringIO()):
        result = collector.compute_collection_result()
    return {t: (float(v[0]), float(v[1])) for t, v in result.items()}


def _range_mse(hist: np.ndarray, edges: np.ndarray, lo: float, hi: float, *,
               symmetric: bool) -> float:
    """Expected squared error of 8-bit quantization over ``[lo, hi]`` under a histogram:
    rounding (step^2/12) inside the range, clipping outside."""
    centers = (edges[:-1] + edges[1:]).astype(np.float64) / 2
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        bound = max(-lo, hi)
        lo, hi = -bound, bound
    step = (hi - lo) / 255.0
    inside = (centers >= lo) & (centers <= hi)
    err = np.where(inside, step * step / 12.0,
                   np.where(centers < lo, (centers - lo) ** 2, (centers - hi) ** 2))
    total = float(hist.sum())
    return float((hist * err).sum() / total) if total else 0.0


# -- which nodes stay float --------------------------------------------------------------------
def float_tail(model: onnx.ModelProto) -> list[str]:
    """Pooling -> linear head -> softmax: nodes from the global pool onwards stay float."""
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    head = producers.get(OUTPUT_LOGITS)
    if head is None:
        raise ModelError(f"the model has no '{OUTPUT_LOGITS}' output: not an edge-smw export")
    tail: list[str] = []
    node = head
    while node is not None:
        tail.append(node.name)
        if node.op_type in POOL_OPS:
            break
        inputs = [producers[i] for i in node.input if i in producers]
        node = inputs[0] if len(inputs) == 1 else None
    seen = set(tail)
    frontier = [OUTPUT_LOGITS]
    while frontier:
        for consumer in consumers.get(frontier.pop(), []):
            if consumer.name not in seen:
                seen.add(consumer.name)
                tail.append(consumer.name)
                frontier.extend(consumer.output)
    return tail


# -- quantize ---------------------------------------------------------------------------------
class _QuietQuantizer(logging.Filter):
    """onnxruntime's quantizer logs to the root logger: a pre-processing hint (the export is
    already shape-inferred and simplified) and one INFO line per widened weight scale. Keep
    its warnings about anything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "pre-process" not in record.getMessage()


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    root = logging.getLogger()
    hint = _QuietQuantizer()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def quantize(
    fp32: onnx.ModelProto, calibration: Calibration, spec: FlavourSpec, *,
    nodes_to_exclude: Sequence[str] = (), float_head: bool = True,
    overrides: dict[str, list[dict[str, Any]]] | None = None,
) -> onnx.ModelProto:
    """``quantize_static`` (QDQ, per-channel) with the given ranges; no second calibration.

    The ranges travel through onnxruntime's calibration cache, so both flavours and every
    mixed-precision step reuse the one calibration pass. ``float_head=False`` quantizes the
    pooling/head too (only to measure what keeping them float buys). ``overrides``:
    onnxruntime ``TensorQuantOverrides`` (an exact scale and zero point for a tensor).
    """
    tail = float_tail(fp32) if float_head else []
    exclude = list(dict.fromkeys([*tail, *nodes_to_exclude]))
    extra = dict(spec.extra_options)
    if overrides:
        extra["TensorQuantOverrides"] = {**extra.get("TensorQuantOverrides", {}), **overrides}
    with tempfile.TemporaryDirectory(prefix="edge-smw-quant-") as scratch:
        src, dst = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        cache = Path(scratch) / "ranges.json"
        onnx.save_model(fp32, str(src))
        save_tensors_data(calibration.tensors_data(), cache)
        with quiet_ort():
            quantize_static(
                str(src), str(dst), None, quant_format=QuantFormat.QDQ, per_channel=True,
                reduce_range=spec.reduce_range, activation_type=spec.activation_type,
                weight_type=spec.weight_type, nodes_to_exclude=exclude,
                calibrate_method=calibration.method.ort, extra_options=extra,
                calibration_cache_path=str(cache),
            )
        model = onnx.load_model(str(dst))
    drop_value_info(model)
    return model


def drop_value_info(model: onnx.ModelProto) -> None:
    """Shape annotations from quantization's shape inference: not needed, and stale after edits."""
    del model.graph.value_info[:]


# -- bias correction -----------------------------------------------------------------------------
@dataclass
class BiasCorrection:
    """Per-Conv mean output shift caused by weight rounding, measured on calibration crops."""

    shifts: dict[str, np.ndarray]  # Conv node name -> per-output-channel shift
    crops: int

    def describe(self) -> dict[str, Any]:
        if not self.shifts:
            return {"convs": 0, "crops": self.crops}
        magnitudes = [float(np.abs(s).mean()) for s in self.shifts.values()]
        worst = max(self.shifts, key=lambda k: float(np.abs(self.shifts[k]).mean()))
        return {"convs": len(self.shifts), "crops": self.crops,
                "mean_abs_shift": float(np.mean(magnitudes)),
                "largest_mean_abs_shift": {"node": worst, "value": max(magnitudes)}}


def measure_weight_shift(fp32: onnx.ModelProto, qdq: onnx.ModelProto, crops: CropSet,
                         contract: PreprocessContract, *, limit: int = 64,
                         batch_size: int = 8) -> BiasCorrection:
    """E[conv(x, W_int8) - conv(x, W_float)] per output channel, x the QDQ model's own input.

    Each quantized Conv gets a twin with the float weights and the very same inputs, so the
    difference is the weight rounding's effect alone (no upstream error mixed in) and one
    correction is exact: no iteration, nothing to diverge.
    """
    float_convs = {n.name: n for n in fp32.graph.node if n.op_type == "Conv"}
    float_init = {i.name: i for i in fp32.graph.initializer}
    model = copy.deepcopy(qdq)
    producers = {out: node for node in model.graph.node for out in node.output}
    pairs: dict[str, tuple[str, str]] = {}
    twins = []
    added: set[str] = set()
    for node in model.graph.node:
        source = float_convs.get(node.name)
        if node.op_type != "Conv" or source is None:
            continue
        weight_producer = producers.get(node.input[1])
        if weight_producer is None or weight_producer.op_type != "DequantizeLinear":
            continue  # weights not quantized (float island)
        ref_name = f"{source.input[1]}__edge_smw_float_ref"
        ref = copy.deepcopy(float_init[source.input[1]])
        ref.name = ref_name
        model.graph.initializer.append(ref)
        twin = copy.deepcopy(node)
        twin.name = f"{node.name}__edge_smw_twin"
        twin.input[1] = ref_name
        if (len(source.input) > 2 and source.input[2] and len(twin.input) > 2
                and twin.input[2] not in producers):
            # a float bias: the float Conv's own, which the int8 model's may differ from
            # (centred readers' follow their int8 weights: edge_smw.export.centring)
            bias_name = f"{source.input[2]}__edge_smw_float_ref"
            if bias_name not in added:
                bias = copy.deepcopy(float_init[source.input[2]])
                bias.name = bias_name
                model.graph.initializer.append(bias)
                added.add(bias_name)
            twin.input[2] = bias_name
        twin.output[0] = f"{node.output[0]}__edge_smw_twin"
        twins.append(twin)
        pairs[node.name] = (node.output[0], twin.output[0])
    model.graph.node.extend(twins)
    wanted = [name for pair in pairs.values() for name in pair]
    n = min(limit, len(crops))
    sums = {k: 0.0 for k in pairs}
    for values in tensor_batches(model, wanted, crops, contract, limit=n, batch_size=batch_size):
        for node, (q_out, f_out) in pairs.items():
            diff = values[q_out].astype(np.float64) - values[f_out]
            sums[node] = sums[node] + diff.mean(axis=(2, 3)).sum(axis=0)
    return BiasCorrection({k: np.asarray(v) / n for k, v in sums.items()}, n)


@contextlib.contextmanager
def probe_session(model: onnx.ModelProto, names: Sequence[str]) -> Iterator[Any]:
    """An unoptimized onnxruntime session of ``model`` with the float tensors ``names`` as
    extra outputs (optimization would fuse some of them away)."""
    probe = copy.deepcopy(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                 None)
                              for name in dict.fromkeys(names) if name not in known)
    with tempfile.TemporaryDirectory(prefix="edge-smw-probe-") as scratch:
        path = Path(scratch) / "probe.onnx"
        onnx.save_model(probe, str(path))
        yield load_session(path, UNOPTIMIZED)


def tensor_batches(model: onnx.ModelProto, names: Sequence[str], crops: CropSet,
                   contract: PreprocessContract, *, limit: int, batch_size: int
                   ) -> Iterator[dict[str, np.ndarray]]:
    """The float tensors ``names`` of ``model`` on crops ``0:limit``, batch by batch: one
    unoptimized run per batch with those tensors as extra outputs."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return
    n = min(limit, len(crops))
    with probe_session(model, wanted) as session:
        for start in range(0, n, batch_size):
            batch = {INPUT_NAME: crops.inputs(contract, start, min(start + batch_size, n))}
            yield dict(zip(wanted, session.run(wanted, batch), strict=True))


def apply_bias_correction(fp32: onnx.ModelProto, correction: BiasCorrection,
                          skip: Sequence[str] = ()) -> onnx.ModelProto:
    """A copy of the float model whose Conv biases absorb the measured shifts."""
    def correct(conv: ConvTensors) -> None:
        conv.add_to_bias(-correction.shifts[conv.node.name])

    return edit_convs(fp32, correction.shifts, correct, skip)


# -- editing a float model's Convs ---------------------------------------------------------------
@dataclass
class ConvTensors:
    """One Conv's weight and bias initializers in a model being edited (``edit_convs``)."""

    model: onnx.ModelProto
    node: onnx.NodeProto
    init: dict[str, onnx.TensorProto]

    def weight(self) -> np.ndarray:
        return numpy_helper.to_array(self.init[self.node.input[1]])

    def set_weight(self, value: np.ndarray) -> None:
        self._set(self.node.input[1], value)

    def bias(self) -> np.ndarray:
        """The bias; zeros for a Conv without one."""
        if len(self.node.input) > 2 and self.node.input[2]:
            return numpy_helper.to_array(self.init[self.node.input[2]])
        return np.zeros(self.init[self.node.input[1]].dims[0], np.float32)

    def set_bias(self, value: np.ndarray) -> None:
        """Set this Conv's own bias: a new initializer where it has none, or where its bias
        is one another node reads too (exporters merge equal constants), so that an edit
        never reaches a second node."""
        name = self.node.input[2] if len(self.node.input) > 2 else ""
        if not name or sum(name in n.input for n in self.model.graph.node) > 1:
            name = f"{self.node.name}__edge_smw_bias"
            if name not in self.init:
                self.model.graph.initializer.append(numpy_helper.from_array(
                    np.zeros(len(value), np.float32), name))
                self.init[name] = self.model.graph.initializer[-1]
            while len(self.node.input) < 3:
                self.node.input.append("")
            self.node.input[2] = name
        self._set(name, value)

    def add_to_bias(self, gain: np.ndarray) -> None:
        """The bias plus ``gain``, summed in float64."""
        self.set_bias(self.bias().astype(np.float64) + gain)

    def _set(self, name: str, value: np.ndarray) -> None:
        self.init[name].CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32), name))


def edit_convs(model: onnx.ModelProto, names: Container[str],
               edit: Callable[[ConvTensors], None], skip: Sequence[str] = ()
               ) -> onnx.ModelProto:
    """A copy of ``model`` with ``edit`` applied to each Conv in ``names`` but those in
    ``skip`` (the ones mixed precision keeps float keep their own tensors): how learned
    rounding, bias correction and tuning write their results into the float source."""
    out = copy.deepcopy(model)
    init = {i.name: i for i in out.graph.initializer}
    skipped = set(skip)
    for node in out.graph.node:
        if node.op_type == "Conv" and node.name in names and node.name not in skipped:
            edit(ConvTensors(out, node, init))
    return out


# -- checks --------------------------------------------------------------------------------------
def qdq_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Counts and types of the Q/DQ nodes and which Convs run int8 (for export.json, tests)."""
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    zero_points = [init[n.input[2]] for n in q + dq if len(n.input) > 2 and n.input[2] in init]
    int8_convs, float_convs = [], []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        weight = producers.get(node.input[1])
        (int8_convs if weight is not None and weight.op_type == "DequantizeLinear"
         else float_convs).append(node.name)
    return {
        "quantize_linear": len(q), "dequantize_linear": len(dq),
        "zero_point_dtypes": sorted({str(z.dtype) for z in zero_points}),
        "all_zero_points_zero": bool(all(np.all(z == 0) for z in zero_points)),
        "int8_convs": len(int8_convs), "float_convs": float_convs,
    }


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """Why TensorRT's explicit quantization would not take this model ([] = fine).

    int8 Q/DQ only, every zero point 0, Conv weights per-channel on axis 0 (weights in
    [-127, 127]), no integer bias, and every Conv whose weights are quantized also gets a
    quantized input.
    """
    problems: list[str] = []
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) < 3 or node.input[2] not in init:
            if node.op_type == "QuantizeLinear":
                problems.append(f"{node.name}: no int8 zero point (defaults to uint8)")
            continue
        zp = init[node.input[2]]
        if zp.dtype != np.int8:
            problems.append(f"{node.name}: zero point type {zp.dtype}, TensorRT needs int8")
        if np.any(zp != 0):
            problems.append(f"{node.name}: non-zero zero point")
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        weight_dq = producers.get(node.input[1])
        if weight_dq is None or weight_dq.op_type != "DequantizeLinear":
            continue
        scale = init.get(weight_dq.input[1])
        axis = next((a.i for a in weight_dq.attribute if a.name == "axis"), 1)
        if scale is None or scale.ndim != 1 or axis != 0:
            problems.append(f"{node.name}: weights not per-channel on axis 0")
        source = weight_dq.input[0]
        q = producers.get(source)
        raw = init.get(source) if q is None else init.get(q.input[0])
        if q is not None and raw is not None and raw.dtype != np.float32:
            problems.append(f"{node.name}: weight Q input is not float")
        if q is None and raw is not None and raw.dtype == np.int8 and raw.min() < -127:
            problems.append(f"{node.name}: int8 weights use -128 (TensorRT wants [-127, 127])")
        data_dq = producers.get(node.input[0])
        if data_dq is None or data_dq.op_type != "DequantizeLinear":
            problems.append(f"{node.name}: int8 weights but a float input")
        if len(node.input) > 2 and node.input[2]:
            bias = producers.get(node.input[2])
            if bias is not None and bias.op_type == "DequantizeLinear":
                problems.append(f"{node.name}: int32 bias through DequantizeLinear")
    return problems


def onnx_sha256(model: onnx.ModelProto | str | Path) -> str:
    import hashlib

    data = (model.SerializeToString() if isinstance(model, onnx.ModelProto)
            else Path(model).read_bytes())
    return hashlib.sha256(data).hexdigest()
