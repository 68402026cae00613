"""What a bench run measured, as typed objects; JSON only when written (bench.json).

One small dataclass per kind of row (latency, comparison, end to end, detection, compute
limit, parity, robustness, gate verdict) and ``BenchReport``, which holds the sections, the
machine, the data summary and the gate verdicts, as Polygraphy's ``comparator/struct.py``
holds ``RunResults`` and ``AccuracyResult``. Sections build these where they measure; the
report, the CLI and ``benchmarks/render_results.py`` read attributes.

``to_dict()`` writes bench.json's schema (``SCHEMA_VERSION``; the field list is in
``edge_smw.bench.report``'s docstring) and ``from_dict()`` reads it back: the round trip gives
the same JSON. A field's JSON name is its attribute name (gates in ``config/gates.toml`` name
fields by it), except ``GateVerdict.passed``, written ``pass``. Fields that a row only has
when measured (a ``reason`` when it did not run, ``mean_ms`` when it did) are left out of the
JSON while ``None``, so the written rows carry exactly the keys they always did.

Torch-free and numpy-free: plain values only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from edge_smw.errors import InputError
from edge_smw.stats import DecisionMargins

if TYPE_CHECKING:
    from edge_smw.bench.config import Suite, Tolerance

SCHEMA_VERSION = 1

R = TypeVar("R", bound="Record")


def optional(default: Any = None) -> Any:
    """A field written to JSON only when it is not ``None``."""
    return field(default=default, metadata={"omit": _is_none})


def _is_none(value: Any) -> bool:
    return value is None


def _is_false(value: Any) -> bool:
    return value is False


def inline(kind: type[Record]) -> Any:
    """A nested ``kind`` record whose fields are written into its parent's JSON object
    (bench.json's rows are flat); ``None`` writes nothing."""
    return field(default=None, metadata={"inline": kind})


def _plain(value: Any) -> Any:
    """JSON-ready: records and config objects by their ``to_dict``, containers element-wise."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _json_name(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("key", f.name)


class Record:
    """``to_dict`` / ``from_dict`` for the dataclasses below, driven by their fields.

    ``_read`` maps a field to the function that turns its JSON back into its type (nested
    records, lists of them); plain values need none.
    """

    _read: ClassVar[dict[str, Callable[[Any], Any]]] = {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if "inline" in f.metadata:
                if value is not None:
                    out.update(value.to_dict())
                continue
            omit = f.metadata.get("omit")
            if omit is not None and omit(value):
                continue
            out[_json_name(f)] = _plain(value)
        return out

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        if not isinstance(data, Mapping):
            raise InputError(f"bench.json: a {cls.__name__} must be an object, got "
                             f"{type(data).__name__}")
        unknown = set(data) - cls._json_keys()
        if unknown:
            raise InputError(f"bench.json: unknown {cls.__name__} field(s) {sorted(unknown)} "
                             "(written by a newer edge-smw?)")
        return cls._build(data)

    @classmethod
    def _json_keys(cls) -> set[str]:
        keys: set[str] = set()
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if "inline" in f.metadata:
                keys |= f.metadata["inline"]._json_keys()
            else:
                keys.add(_json_name(f))
        return keys

    @classmethod
    def _build(cls: type[R], data: Mapping[str, Any]) -> R:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if "inline" in f.metadata:
                nested = f.metadata["inline"]
                if any(k in data for k in nested._json_keys()):
                    values[f.name] = nested._build(data)
                continue
            read = cls._read.get(f.name)
            key = _json_name(f)
            if key not in data:
                if f.default is dataclasses.MISSING and \
                        f.default_factory is dataclasses.MISSING:
                    raise InputError(f"bench.json: a {cls.__name__} lacks {key!r}")
                continue
            value = data[key]
            values[f.name] = read(value) if read is not None and value is not None else value
        return cls(**values)


def _list_of(kind: type[R]) -> Callable[[Any], list[R]]:
    return lambda rows: [kind.from_dict(r) for r in rows]


def _dict_of(kind: type[R]) -> Callable[[Any], dict[str, R | None]]:
    return lambda rows: {k: None if v is None else kind.from_dict(v) for k, v in rows.items()}


def _tolerance(data: Mapping[str, Any]) -> Tolerance:
    from edge_smw.bench.config import Tolerance  # config imports this module (GateVerdict)

    return Tolerance(**data)


def _suite(data: Mapping[str, Any]) -> Suite:
    from edge_smw.bench.config import Suite

    # bench.json files from before turns timed every call, one call per candidate and round.
    return Suite(**{"calls_per_turn": 1, "rewarm_calls": 0, **data})


# -- what was benched, where ------------------------------------------------------------------

@dataclass
class Machine(Record):
    """What a reader needs to judge whether figures carry over to their machine."""

    hostname: str
    platform: str
    python: str
    cpu: str
    arch: str
    cores_logical: int | None
    cores_usable: int
    cpu_flags: dict[str, bool]
    memory_total_mb: float | None
    load_average_1_5_15: list[float] | None
    versions: dict[str, str]
    env: dict[str, str]
    time_utc: str
    load_average_end: list[float] | None = optional()  # set when the run ends


@dataclass
class BenchedModel(Record):
    """One model file of the export folder, as benched."""

    model: str
    path: str
    kind: str
    precision: str
    flavour: str | None
    size_mb: float
    label: str
    checkpoint_sha256: str | None
    calibration_sha256: str | None
    contract_sha256: str


@dataclass
class SkippedFile(Record):
    """A file in the export folder that is not a model the bench can run, and why."""

    file: str
    reason: str


@dataclass
class DataSummary(Record):
    """The labelled crops parity and robustness were judged on."""

    source: str
    n: int
    counts: dict[str, int]
    skipped: dict[str, Any]  # edge_smw.data.crops.SkipReport.to_dict()


@dataclass
class GoldenUse(Record):
    """``--golden save|check FILE``: the saved torch outputs this run wrote or read."""

    mode: str
    file: str


# -- latency ---------------------------------------------------------------------------------

@dataclass
class LatencyRow(Record):
    """One candidate at one batch size, timed interleaved (or why it was not)."""

    model: str
    backend: str
    precision: str
    flavour: str | None = None
    batch: int | None = None
    scope: str = "network"  # "network": a preprocessed batch in; "crop": a BGR crop in
    kind: str = "ours"  # "ours", "baseline" (torch eager) or "theirs" (what users write)
    intended: bool = True
    threads: int | str | None = None
    size_mb: float | None = None
    status: str = "ok"  # "ok", "skipped" (cannot run here) or "error"
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = optional()
    min_ms: float | None = optional()
    std_ms: float | None = optional()
    fps: float | None = None
    runs: int = 0
    reason: str | None = optional()
    label: str | None = optional()
    peak_rss_mb: float | None = None  # measured in a child process per model
    model_rss_mb: float | None = optional()  # the peak minus the child's baseline
    memory_note: str | None = optional()  # why memory was not measured

    @property
    def key(self) -> tuple[str, str]:
        return (self.model, self.backend)

    @property
    def measured(self) -> bool:
        return self.status == "ok" and bool(self.p50_ms)


@dataclass
class ComparisonRow(Record):
    """A speed-up: the other candidate's p50 over ours, same batch and scope."""

    model: str
    backend: str
    precision: str
    flavour: str | None
    intended: bool
    batch: int
    scope: str
    versus: str  # "fp32", "onnxruntime-cpu fp32", "torch-eager", "onnxruntime-default", or
    # the other backend
    versus_model: str
    versus_backend: str
    p50_ms: float
    versus_p50_ms: float
    speedup: float
    status: str = "ok"
    n: int = 0  # interleaved runs behind the fewer-timed of the two p50s (gates' ``min_n``)


# -- end to end ------------------------------------------------------------------------------

@dataclass
class StageTiming(Record):
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float


@dataclass
class ModeTiming(Record):
    """Frames through one configuration in one mode (``endtoend.interleaved``)."""

    mode: str  # "single-threaded" or "pipelined"
    frames: int
    rounds: int
    fps: float | None
    faces_found_rate: float | None
    stages: dict[str, StageTiming | None]

    _read: ClassVar[dict[str, Callable[[Any], Any]]] = {"stages": _dict_of(StageTiming)}


FACES_MISSED = "faces missed"  # an end-to-end row's status when its detector missed frames


@dataclass
class EndToEndRow(Record):
    """One (model, detector, threads, spinning, mode): JPEG frame in, scores out; status
    ``FACES_MISSED`` when the detector missed the face on some measured frames (those skip
    scoring, so the row times less work than a frame with a face costs)."""

    model: str
    backend: str
    precision: str
    threads: int
    onnxruntime_spinning: bool
    deployable: bool
    detector: str
    detector_settings: str
    detector_backend: str
    status: str = "ok"
    timing: ModeTiming | None = inline(ModeTiming)

    @property
    def fps(self) -> float | None:
        return self.timing.fps if self.timing else None


@dataclass
class FrameInfo(Record):
    """The synthetic camera frame the end-to-end rows decode."""

    width: int
    height: int
    face_side: int
    crop_index: int  # -1: no crop was found by every detector
    detected: bool
    jpeg_bytes: int


@dataclass
class EndToEndSection(Record):
    frame: FrameInfo | None = optional()
    rows: list[EndToEndRow] = field(default_factory=list)
    note: str | None = optional()  # why there are no rows

    _read: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "frame": FrameInfo.from_dict, "rows": _list_of(EndToEndRow)}


# -- face detection --------------------------------------------------------------------------

@dataclass
class DetectionCounts(Record):
    """One detector under one condition of the detection set."""

    frames: int
    faces: int
    found: int
    recall: float | None
    false_positives: int
    mean_iou: float | None


@dataclass
class DetectionOverall(DetectionCounts):
    precision: float | None = None


@dataclass
class DetectTiming(Record):
    p50: float
    p90: float


@dataclass
class DetectionRow(Record):
    detector: str  # the detector's settings, described
    name: str
    backend: str
    match_iou: float
    conditions: dict[str, DetectionCounts]
    overall: DetectionOverall
    detect_ms: DetectTiming | None

    _read: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "conditions": _dict_of(DetectionCounts), "overall": DetectionOverall.from_dict,
        "detect_ms": DetectTiming.from_dict}


@dataclass
class FrameSize(Record):
    width: int
    height: int


@dataclass
class DetectionSection(Record):
    frames: int | None = optional()
    per_condition: int | None = optional()
    crops: int | None = optional()
    match_iou: float | None = optional()
    frame: FrameSize | None = optional()
    conditions: list[str] | None = optional()
    rows: list[DetectionRow] = field(default_factory=list)
    note: str | None = optional()  # why there are no rows

    _read: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "frame": FrameSize.from_dict, "rows": _list_of(DetectionRow)}


# -- compute limit ---------------------------------------------------------------------------

@dataclass
class LimitRow(Record):
    """Achieved GFLOP/s of one timed network-scope row against the measured peak."""

    model: str
    backend: str
    precision: str
    batch: int
    kind: str
    achieved_gflops: float
    fraction_of_peak: float
    status: str = "ok"


@dataclass
class MacCount(Record):
    """Multiply-accumulates per image, counted from an ONNX graph (``flops.count_macs``)."""

    macs: int
    gmacs: float
    gflops: float
    by_op: dict[str, int]
    counted_nodes: int
    uncounted_nodes: list[str]  # counted operators whose shapes were not known
    counted_ops: list[str]


@dataclass(kw_only=True)
class PeakMeasurement(Record):
    """The machine's float32 compute ceiling, measured in this run (``machine``)."""

    numpy_gflops: float
    numpy_median_gflops: float
    onnxruntime_gflops: float | None = optional()
    onnxruntime_median_gflops: float | None = optional()
    onnxruntime_note: str | None = optional()  # why onnxruntime's GEMM was not measured
    peak_gflops: float  # the better of the two
    median_gflops: float
    method: str

    def rounded(self, digits: int = 2) -> PeakMeasurement:
        return dataclasses.replace(self, **{
            f.name: round(v, digits) for f in dataclasses.fields(self)
            if isinstance(v := getattr(self, f.name), float)})


@dataclass
class LimitSection(Record):
    model: str | None = optional()  # the model whose operations were counted
    counted: MacCount | None = inline(MacCount)
    macs_per_model: dict[str, int | None] | None = optional()
    peak_gflops: float | None = optional()
    peak_median_gflops: float | None = optional()
    peak_method: str | None = optional()
    peak_detail: PeakMeasurement | None = optional()  # both measurements, rounded
    note: str | None = optional()
    rows: list[LimitRow] = field(default_factory=list)

    _read: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "peak_detail": PeakMeasurement.from_dict, "rows": _list_of(LimitRow)}


# -- parity ----------------------------------------------------------------------------------

@dataclass
class ProbabilityDiff(Record):
    """Output differences against the reference, judged by a Polygraphy-style tolerance."""

    within_tolerance: bool
    tolerance: Tolerance
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    median_abs_prob_diff: float
    p99_abs_prob_diff: float
    max_rel_prob_diff: float
    elements_outside_tolerance: int

    _read: ClassVar[dict[str, Callable[[Any], Any]]] = {"tolerance": _tolerance}


@dataclass
class LevelParity(Record):
    accuracy: float | None
    mae: float | None
    count: int
    accuracy_delta: float | None
    mae_delta: float | None
    top1_agreement: float | None


@dataclass
class LabelledParity(Record):
    """The figures that need true levels: the decisions a user sees, against the reference's."""

    accuracy: float | None
    mae: float | None
    spearman: float | None
    reference_accuracy: float | None
    reference_mae: float | None
    accuracy_delta: float | None
    accuracy_drop_points: float | None
    mae_delta: float | None
    confusion: list[list[int]]
    per_level: dict[str, LevelParity]

    _read: ClassVar[dict[str, Callable[[Any], Any]]] = {"per_level": _dict_of(LevelParity)}


@dataclass
class ParityRow(Record):
    """One (model, backend) against the reference outputs; a row that did not run carries
    only who it is and why."""

    model: str
    backend: str
    precision: str
    flavour: str | None = None
    intended: bool = True
    reference: str | None = None  # "torch" or "golden"
    n: int | None = None
    status: str = "ok"
    reason: str | None = optional()
    top1_agreement: float | None = None
    disagreements: int | None = None
    diff: ProbabilityDiff | None = inline(ProbabilityDiff)
    max_abs_expected_score_diff: float | None = None
    # None: no true levels (a golden file without labels)
    labelled: LabelledParity | None = inline(LabelledParity)
    decision_margins: DecisionMargins | None = optional()
    is_reference: bool = field(default=False, metadata={"omit": _is_false})

    _read: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "decision_margins": DecisionMargins.from_dict}

    @property
    def key(self) -> tuple[str, str]:
        return (self.model, self.backend)

    @property
    def accuracy(self) -> float | None:
        return self.labelled.accuracy if self.labelled else None

    @property
    def mae(self) -> float | None:
        return self.labelled.mae if self.labelled else None

    def to_dict(self) -> dict[str, Any]:
        if self.status != "ok":
            return {"model": self.model, "backend": self.backend, "precision": self.precision,
                    "status": self.status, "reason": self.reason}
        return super().to_dict()


# -- robustness ------------------------------------------------------------------------------

@dataclass
class RobustnessRow(Record):
    """Success of one attack at one budget, judged by one model."""

    model: str
    backend: str
    precision: str
    flavour: str | None
    attack: str  # "pgd-untargeted", "pgd-targeted", "square-untargeted"
    crafted_on: str
    transfer: bool
    target: str | None
    budget: float  # L-infinity, pixel units (/255)
    n: int
    success_rate: float
    clean_success_rate: float | None = optional()  # PGD rows
    median_l2: float | None = None
    steps: int | None = optional()  # PGD rows
    mean_queries: float | None = optional()  # black-box rows
    iterations: int | None = optional()  # black-box rows
    status: str = "ok"
    matches_torch: float | None = optional()  # fp32 exports judging PGD images


@dataclass
class MedianBudget(Record):
    model: str
    backend: str
    attack: str
    median_budget: float | None
    flipped_at_max_budget: float
    note: str | None


@dataclass
class MaskingCheck(Record):
    """Is int8 harder to fool, or only harder to attack through torch's gradients?"""

    model: str
    backend: str
    budget: float
    pgd_transfer_success: float | None
    blackbox_success: float
    fp32_blackbox_success: float | None
    torch_pgd_success: float | None
    int8_worst_case_success: float
    fp32_worst_case_success: float | None
    verdict: str


@dataclass
class RobustnessSample(Record):
    n: int
    levels: dict[str, int]


@dataclass
class RobustnessSummary(Record):
    sample: RobustnessSample | None = optional()
    budgets: list[float] | None = optional()
    blackbox_budgets: list[float] | None = optional()
    median_budget: list[MedianBudget] | None = optional()
    gradient_masking: list[MaskingCheck] | None = optional()
    note: str | None = optional()  # why nothing was attacked

    _read: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "sample": RobustnessSample.from_dict, "median_budget": _list_of(MedianBudget),
        "gradient_masking": _list_of(MaskingCheck)}


# -- training feature pass ------------------------------------------------------------------

@dataclass
class FeaturePassRow(Record):
    """One candidate's crops/s from the crop files (``bench.features``)."""

    candidate: str
    crops: int
    seconds: float
    crops_per_s: float
    crops_per_s_min: float  # the slowest alternating chunk
    crops_per_s_max: float
    runtime: str


@dataclass
class FeaturePassSection(Record):
    rows: list[FeaturePassRow] = field(default_factory=list)
    speedup: float | None = optional()  # edge-smw's pass / torch eager
    rounds: int | None = optional()
    what: str | None = optional()  # which features (the checkpoint's head kind)
    threads: int | None = optional()
    detect: bool | None = optional()
    note: str | None = optional()  # what was timed, or why there are no rows

    _read: ClassVar[dict[str, Callable[[Any], Any]]] = {"rows": _list_of(FeaturePassRow)}


# -- gates -----------------------------------------------------------------------------------

@dataclass
class GateVerdict(Record):
    """One gate or target judged on bench.json: ``passed`` is None when no row could be."""

    name: str
    help: str
    section: str
    field: str
    where: dict[str, Any]
    op: str
    threshold: float
    reduce: str
    target: bool
    value: float | None
    interval: list[float] | None = optional()  # proportion gates: the Wilson interval
    n: int | None = optional()
    bound: float | None = optional()
    passed: bool | None = dataclasses.field(default=None, metadata={"key": "pass"})
    rows: int = 0
    worst: dict[str, Any] | None = optional()  # the row that decided it
    min_n: int | None = optional()
    note: str | None = optional()
    unjudged_rows: int | None = optional()

    @property
    def failed(self) -> bool:
        return self.passed is False

    @property
    def not_judged(self) -> bool:
        """No verdict because every row was too small a sample (not for want of rows)."""
        return self.passed is None and str(self.note or "").startswith("not judged")


# -- the whole run ---------------------------------------------------------------------------

@dataclass
class BenchReport(Record):
    """Everything one ``run_bench`` measured; ``to_dict()`` is bench.json."""

    schema_version: int
    command: str
    export_dir: str
    suite: Suite
    threads: int
    openmp: str
    interleaving: str
    machine: Machine
    models: list[BenchedModel]
    skipped_models: list[SkippedFile]
    reference: str
    data: DataSummary
    golden: GoldenUse | None
    latency: list[LatencyRow]
    comparisons: list[ComparisonRow]
    end_to_end: EndToEndSection
    limit: LimitSection
    detection: DetectionSection
    parity: list[ParityRow]
    robustness: list[RobustnessRow]
    robustness_summary: RobustnessSummary
    gates_config: dict[str, Any]  # GateSet.to_dict(): where the gates came from, tolerances
    features: FeaturePassSection = field(default_factory=FeaturePassSection)
    gates: list[GateVerdict] = field(default_factory=list)
    targets: list[GateVerdict] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    plots: list[str] | None = optional()  # PNG file names, once written beside bench.json

    _read: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "suite": _suite, "machine": Machine.from_dict, "models": _list_of(BenchedModel),
        "skipped_models": _list_of(SkippedFile), "data": DataSummary.from_dict,
        "golden": GoldenUse.from_dict, "latency": _list_of(LatencyRow),
        "comparisons": _list_of(ComparisonRow), "end_to_end": EndToEndSection.from_dict,
        "limit": LimitSection.from_dict, "detection": DetectionSection.from_dict,
        "parity": _list_of(ParityRow), "robustness": _list_of(RobustnessRow),
        "robustness_summary": RobustnessSummary.from_dict, "gates": _list_of(GateVerdict),
        "features": FeaturePassSection.from_dict,
        "targets": _list_of(GateVerdict)}

    @property
    def passed(self) -> bool:
        """No gate failed (a gate that could not judge does not fail the run)."""
        return not self.failed_gates

    @property
    def failed_gates(self) -> list[GateVerdict]:
        return [g for g in self.gates if g.failed]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in super().to_dict().items():
            out[key] = value
            if key == "targets":
                out["passed"] = self.passed  # derived, written for scripts that read it
        return out

    @classmethod
    def _json_keys(cls) -> set[str]:
        return super()._json_keys() | {"passed"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchReport:
        version = data.get("schema_version") if isinstance(data, Mapping) else None
        if version != SCHEMA_VERSION:
            raise InputError(f"bench.json has schema_version {version!r}; this edge-smw reads "
                             f"version {SCHEMA_VERSION}")
        return super().from_dict(data)
