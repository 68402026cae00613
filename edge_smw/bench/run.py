"""``run_bench``: one export folder in, one ``BenchReport`` out (latency, end to end, compute
limit, parity, robustness, gates), every model side by side in this one process.

Torch is imported only for what needs it (the reference outputs, the eager baseline, the
attacks); ``--golden check`` runs without it, as on a Jetson.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.artifacts.sessions import (
    SessionSettings,
    check_threads,
    load_session,
    usable_cores,
)
from edge_smw.atomic import check_writable_file
from edge_smw.bench import latency as lat
from edge_smw.bench.config import GateSet, Suite, load_gates, load_suite
from edge_smw.bench.data import BenchData, load_bench_data
from edge_smw.bench.machine import describe_machine, load_average, measure_peak_gflops
from edge_smw.bench.models import (
    ALL_BACKENDS,
    TORCH_BACKEND,
    ModelEntry,
    TorchReference,
    discover_models,
    find_checkpoint,
    reference_model,
    require_torch,
)
from edge_smw.bench.parity import parity_row
from edge_smw.bench.results import (
    FACES_MISSED,
    SCHEMA_VERSION,
    BenchReport,
    DetectionSection,
    EndToEndRow,
    EndToEndSection,
    FeaturePassSection,
    FrameInfo,
    GoldenUse,
    LatencyRow,
    LimitRow,
    LimitSection,
    ParityRow,
    RobustnessRow,
    RobustnessSummary,
)
from edge_smw.errors import BackendUnavailableError, EdgeSmwError, InputError, ModelError
from edge_smw.metadata import OUTPUT_PROBABILITIES

log = logging.getLogger("edge_smw.bench")
GOLDEN_MODES = ("save", "check")
NOT_REQUESTED = "not requested"


def interleaving(suite: Suite) -> str:
    """How the latency rows were timed, for the report (``bench.latency``'s method)."""
    rewarm = (f"{suite.rewarm_calls} untimed call(s) that re-warm its caches, then "
              if suite.rewarm_calls else "")
    return (f"every candidate in turn each round: {rewarm}{suite.calls_per_turn} timed "
            f"call(s) back to back; onnxruntime sessions as the Runtime opens them (intra-op "
            f"threads spin inside a call and stop when it returns) and torch's OpenMP pool "
            f"passive, so no candidate's idle threads steal the next one's cores")


@dataclass
class BenchOptions:
    export_dir: Path
    checkpoint: str | None = None
    data: str | None = None
    backends: list[str] | None = None  # None: every backend (unavailable ones are skipped)
    batches: list[int] | None = None  # None: the suite's
    suite: str = "quick"
    golden_mode: str | None = None
    golden_file: Path | None = None
    gates: str | None = None
    threads: int | None = None
    detect: bool | None = None  # None: as the model was trained
    command: str = ""
    sections: tuple[str, ...] = ("latency", "end_to_end", "limit", "parity", "robustness",
                                 "detection", "features")
    detectors: list[str] | None = None  # None: the suite's
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.backends is not None:
            unknown = sorted(set(self.backends) - set(ALL_BACKENDS))
            if unknown or not self.backends:
                raise InputError(f"unknown backend(s) {unknown}; choose from {list(ALL_BACKENDS)}")
        if self.batches is not None and (not self.batches or min(self.batches) < 1):
            raise InputError(f"--batch needs whole numbers >= 1, got {self.batches}")
        if (self.golden_mode is None) != (self.golden_file is None):
            raise InputError("--golden takes a mode and a file: --golden save|check FILE")
        if self.golden_mode is not None and self.golden_mode not in GOLDEN_MODES:
            raise InputError(f"--golden mode must be save or check, got {self.golden_mode!r}")
        check_threads(self.threads, "--threads")  # and no more than this machine can use
        if self.gates is not None and not Path(self.gates).exists():
            raise InputError(f"--gates {self.gates}: file not found; give a gates TOML or "
                             "leave --gates out for the packaged gates")
        if self.golden_mode == "save" and self.golden_file is not None:
            check_writable_file(self.golden_file, "--golden save")  # before the bench's work
        from edge_smw.detect import resolve_spec
        from edge_smw.detect.registry import is_file_name

        for name in self.detectors or []:  # now, not at the end-to-end section
            if is_file_name(resolve_spec(name).name) and not Path(name).is_file():
                raise InputError(f"--detector {name}: file not found; give a face-detector "
                                 ".onnx file, or haar / blazeface-short")


@dataclass
class Session:
    """One exported model opened on one backend."""

    entry: ModelEntry
    backend: str
    runtime: Any  # edge_smw.Runtime

    @property
    def key(self) -> tuple[str, str]:
        return (self.entry.name, self.backend)

    @property
    def intended(self) -> bool:
        return self.entry.intended(self.backend)

    def probs(self, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
        contract = self.runtime.contract
        parts = [self.runtime.infer(contract.normalize(pixels[i : i + batch]))
                 [OUTPUT_PROBABILITIES] for i in range(0, len(pixels), batch)]
        return np.concatenate(parts).astype(np.float64)


def quiet_openmp() -> str:
    """Make torch's OpenMP pool sleep, not spin, between calls (before torch is imported).

    Interleaved timing runs torch, then onnxruntime, then torch...: a pool that keeps
    spinning after its call steals the cores from the next candidate, and on a loaded
    machine a spinning pool waits whole scheduler slices at every layer's barrier (measured
    here: EfficientNet-Lite0 at batch 1 went from ~35 ms to seconds). A user's OMP_WAIT_POLICY
    is kept; the report records what was in force.
    """
    import os
    import sys

    if "torch" in sys.modules:
        return (f"torch was imported before the bench; OMP_WAIT_POLICY is "
                f"{os.environ.get('OMP_WAIT_POLICY', 'unset (spinning)')}")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} for torch's OpenMP pool"


# A plain session's defaults (its threads spin inside a call), except that they stop spinning
# when the call returns: in interleaved timing a pool still spinning steals the cores from
# whatever runs next (measured on 2 cores: torch eager went from 18 ms to 53 ms per call right
# after a spinning onnxruntime call).
PLAIN_SESSION = SessionSettings(threads=0, log_severity=2)


def uses_onnxruntime(sessions: list[Session]) -> bool:
    return any(s.backend.startswith("onnxruntime-") for s in sessions)


def _wanted(options: BenchOptions, backend: str) -> bool:
    return options.backends is None or backend in options.backends


def open_sessions(models: list[ModelEntry], options: BenchOptions, threads: int,
                  ) -> tuple[list[Session], list[LatencyRow]]:
    """Open every (model, backend); the ones that cannot run here, or not right on this CPU
    (an INT8 model whose weights saturate its kernels here), become skipped rows."""
    from edge_smw.runtime import Runtime
    from edge_smw.runtime.runtime import cpu_mismatch

    sessions: list[Session] = []
    skipped: list[LatencyRow] = []
    for entry in models:
        for backend in entry.backends():
            if not _wanted(options, backend):
                continue
            mismatch = cpu_mismatch(entry.info, backend)
            if mismatch is not None:  # its figures would be this CPU's fault: not run
                skipped.append(lat.skipped_row(entry.name, backend, entry.precision, None,
                                               f"not run on this CPU: {mismatch}",
                                               flavour=entry.flavour, size_mb=entry.size_mb,
                                               label=entry.label))
                continue
            try:
                rt = Runtime(entry.path, backend=backend, threads=threads, detect_faces=False,
                             warmup=True, backend_options=entry.backend_options(backend))
            except (BackendUnavailableError, ModelError) as exc:
                status = "skipped" if isinstance(exc, BackendUnavailableError) else "error"
                skipped.append(lat.skipped_row(entry.name, backend, entry.precision, None,
                                               str(exc), flavour=entry.flavour,
                                               size_mb=entry.size_mb, status=status,
                                               label=entry.label))
                continue
            sessions.append(Session(entry, backend, rt))
    return sessions, skipped


class Bench:
    """Holds everything one bench run shares between its sections."""

    def __init__(self, options: BenchOptions) -> None:
        options.validate()
        self.omp_note = quiet_openmp()
        self.options = options
        self.suite: Suite = load_suite(options.suite)
        if options.batches:
            self.suite.batches = sorted(set(options.batches))
        self.gates: GateSet = load_gates(options.gates)
        self.export_dir = Path(options.export_dir)
        self.models, self.skipped_models = discover_models(self.export_dir)
        self.contract = self.models[0].info.contract
        self.threads = options.threads or self.suite.threads or usable_cores()
        self.ref: TorchReference | None = None
        self.golden = None
        self.data: BenchData | None = None
        self.ref_probs: np.ndarray | None = None
        self.reference = ""
        self.sessions: list[Session] = []
        self.unavailable: list[LatencyRow] = []
        self.timings: dict[str, float] = {}

    # -- setup ----------------------------------------------------------------------------
    def prepare(self) -> None:
        opts = self.options
        if opts.golden_mode == "check":
            from edge_smw.bench.golden import check_compatible, load_golden

            golden = load_golden(opts.golden_file)
            for m in self.models:
                check_compatible(golden, Path(opts.golden_file), m.info.contract,
                                 m.info.checkpoint_sha256, m.name)
            self.golden = golden
            self.data = BenchData(golden.pixels, golden.labels, [], golden.levels,
                                  f"golden file {opts.golden_file}")
            self.ref_probs = golden.probabilities
            self.reference = (f"golden outputs {opts.golden_file} (torch "
                              f"{golden.meta.get('torch_version', '?')}, checkpoint "
                              f"{(golden.checkpoint_sha256 or '?')[:12]})")
        else:
            try:  # before looking for its checkpoint: without torch there is nothing to load
                require_torch()
            except BackendUnavailableError as exc:
                raise BackendUnavailableError(
                    f"{exc}; without torch, compare against saved outputs with --golden check "
                    "FILE") from None
            ckpt = find_checkpoint(self.export_dir, opts.checkpoint, self.models)
            self.ref = TorchReference(ckpt, threads=self.threads)
            if self.ref.contract.sha256 != self.contract.sha256:
                raise ModelError(f"{ckpt} has a different preprocessing contract from the "
                                 f"models in {self.export_dir}: pass the run they came from")
            self.data = load_bench_data(opts.data, self.contract, run_dir=ckpt.parent,
                                        trained_detect=self.ref.checkpoint.detect,
                                        limit=self.suite.parity_max, detect=opts.detect)
            log.info("bench: torch reference on %d crops from %s", len(self.data),
                     self.data.source)
            self.ref_probs = self.ref.probabilities(self.data.pixels)
            self.reference = f"torch {self.ref.torch.__version__} eager fp32 ({ckpt})"
            if opts.golden_mode == "save":
                from edge_smw.bench.data import stratified_sample
                from edge_smw.bench.golden import GOLDEN_MAX, save_golden

                keep = stratified_sample(self.data.labels, GOLDEN_MAX)
                pixels = self.data.pixels[keep]
                save_golden(opts.golden_file, pixels, self.data.labels[keep],
                            self.ref_probs[keep], self.ref.logits(pixels), self.contract,
                            self.ref.checkpoint.sha256, source=self.data.source,
                            torch_version=self.ref.torch.__version__,
                            checkpoint=str(ckpt))
                log.info("bench: golden outputs saved to %s", opts.golden_file)
        self.sessions, self.unavailable = open_sessions(self.models, opts, self.threads)
        if not self.sessions:
            reasons = "; ".join(f"{r.model}@{r.backend}: {r.reason}" for r in self.unavailable)
            raise BackendUnavailableError(f"no model in {self.export_dir} runs on the requested "
                                          f"backends here ({reasons})")

    def crops_bgr(self, n: int = 8) -> list[np.ndarray]:
        """Decoded face crops as a user holds them (their own size; from photos, the face the
        contract crops out) for crop-scope timing and the synthetic camera frames: a seeded
        shuffle of the data, so every level is in them (the data is ordered by level)."""
        from edge_smw.data.crops import SkipReport, read_face

        assert self.data is not None
        crops: list[np.ndarray] = []
        for i in np.random.default_rng(0).permutation(len(self.data.paths)):
            if len(crops) == n:
                break
            face = read_face(self.data.paths[i], self.contract, detect=self.data.detect,
                             report=SkipReport())
            if face is not None:
                crops.append(face)
        if not crops:  # golden data: model pixels only
            order = slice(None, None, -1) if self.contract.color_order == "RGB" else slice(None)
            crops = [np.ascontiguousarray(p[..., order]) for p in self.data.pixels[:n]]
        return crops

    # -- sections -------------------------------------------------------------------------
    def parity(self) -> list[ParityRow]:
        assert self.data is not None and self.ref_probs is not None
        rows: list[ParityRow] = []
        labels = self.data.labels
        if self.ref is not None:
            rows.append(parity_row("torch", TORCH_BACKEND, "fp32", self.ref_probs,
                                   self.ref_probs, labels, self.contract.levels,
                                   self.gates.tolerance("fp32"), reference="torch"))
            rows[-1].is_reference = True
        elif self.golden is not None and labels is not None:
            rows.append(parity_row("torch (golden)", "golden-file", "fp32", self.ref_probs,
                                   self.ref_probs, labels, self.contract.levels,
                                   self.gates.tolerance("fp32"), reference="golden"))
            rows[-1].is_reference = True
        ref_name = "golden" if self.golden is not None else "torch"
        for s in self.sessions:
            log.info("parity: %s on %s", s.entry.name, s.backend)
            try:
                probs = s.probs(self.data.pixels)
            except EdgeSmwError as exc:
                rows.append(ParityRow(model=s.entry.name, backend=s.backend,
                                      precision=s.entry.precision, status="error",
                                      reason=str(exc)))
                continue
            rows.append(parity_row(s.entry.name, s.backend, s.entry.precision, probs,
                                   self.ref_probs, labels, self.contract.levels,
                                   self.gates.tolerance(s.entry.precision), reference=ref_name,
                                   flavour=s.entry.flavour, intended=s.intended))
        for r in self.unavailable:
            rows.append(ParityRow(model=r.model, backend=r.backend, precision=r.precision,
                                  status=r.status, reason=r.reason))
        return rows

    def latency(self) -> list[LatencyRow]:
        assert self.data is not None
        suite, opts = self.suite, self.options
        pixels = self.data.pixels
        rng = np.random.default_rng(0)
        candidates: list[lat.Candidate] = []
        if self.ref is not None and _wanted(opts, TORCH_BACKEND):
            candidates.append(lat.Candidate(
                "torch", TORCH_BACKEND, "fp32", self.ref.forward, kind="baseline",
                size_mb=self.torch_size_mb(), threads=self.ref.threads,
                label="PyTorch fp32 (eager)"))
        for s in self.sessions:
            candidates.append(lat.Candidate(
                s.entry.name, s.backend, s.entry.precision, s.runtime.infer,
                flavour=s.entry.flavour, size_mb=s.entry.size_mb, threads=self.threads,
                intended=s.intended, label=s.entry.label))
        plain = self._plain_sessions() if suite.theirs else []
        candidates += plain
        rows: list[LatencyRow] = []
        for batch in suite.batches:
            inputs = []
            for _ in range(4):  # a few different real batches, cycled
                idx = rng.choice(len(pixels), size=batch, replace=len(pixels) < batch)
                inputs.append(self.contract.normalize(pixels[idx]))
            log.info("latency: batch %d, %d candidates interleaved", batch, len(candidates))
            rows += lat.measure_interleaved(
                candidates, inputs, batch, warmup=suite.warmup, min_runs=suite.min_runs,
                max_runs=suite.max_runs, seconds=suite.seconds_per_batch,
                calls_per_turn=suite.calls_per_turn, rewarm_calls=suite.rewarm_calls)
        if suite.theirs:
            rows += self._crop_scope()
        rows += [dataclasses.replace(r) for r in self.unavailable]
        self._attach_memory(rows)
        return rows

    def torch_size_mb(self) -> float | None:
        if self.ref is None:
            return None
        return sum(p.numel() * p.element_size() for p in self.ref.model.parameters()) / 2**20

    def _plain_sessions(self) -> list[lat.Candidate]:
        """What a user writes without this toolkit: ``InferenceSession(path)``, defaults."""
        if not _wanted(self.options, "onnxruntime-cpu"):
            return []
        out = []
        for m in self.models:
            if m.kind != "onnx" or not m.intended("onnxruntime-cpu"):
                continue
            sess = load_session(m.path, PLAIN_SESSION)
            name = sess.get_inputs()[0].name

            def run(x: np.ndarray, sess: Any = sess, name: str = name) -> Any:
                return sess.run(None, {name: x})

            out.append(lat.Candidate(m.name, "onnxruntime-default", m.precision, run,
                                     flavour=m.flavour, kind="theirs", size_mb=m.size_mb,
                                     threads="default", label=f"{m.label}, plain session"))
        return out

    def _crop_scope(self) -> list[LatencyRow]:
        """From a decoded BGR crop to probabilities: ours vs torchvision-style pipelines."""
        crops = self.crops_bgr()
        candidates: list[lat.Candidate] = []
        for s in self.sessions:
            if s.backend != "onnxruntime-cpu" or not s.intended:
                continue
            candidates.append(lat.Candidate(
                s.entry.name, "edge-smw Runtime.score_crop", s.entry.precision,
                s.runtime.score_crop, scope="crop", flavour=s.entry.flavour,
                size_mb=s.entry.size_mb, threads=self.threads, intended=True,
                label=s.entry.label))
        candidates += self._theirs_crop()
        if not candidates:
            return []
        suite = self.suite
        log.info("latency: crop scope, %d candidates interleaved", len(candidates))
        return lat.measure_interleaved(candidates, crops, 1, warmup=suite.warmup,
                                       min_runs=suite.min_runs, max_runs=suite.max_runs,
                                       seconds=suite.seconds_per_batch,
                                       calls_per_turn=suite.calls_per_turn,
                                       rewarm_calls=suite.rewarm_calls)

    def _theirs_crop(self) -> list[lat.Candidate]:
        """torchvision transforms (PIL resize, ToTensor, Normalize) then torch eager or a
        plain onnxruntime session: the usual tutorial pipeline, configured from our contract."""
        if self.ref is None:
            return []
        try:
            from PIL import Image
            from torchvision import transforms as T
        except ModuleNotFoundError:
            log.info("latency: torchvision not installed; no torchvision baseline")
            return []
        c = self.contract
        transform = T.Compose([T.Resize((c.input_size, c.input_size)), T.ToTensor(),
                               T.Normalize(c.mean, c.std)])
        rgb = c.color_order == "RGB"
        ref = self.ref
        torch = ref.torch

        def to_tensor(crop: np.ndarray) -> Any:
            image = Image.fromarray(np.ascontiguousarray(crop[..., ::-1]) if rgb else crop)
            return transform(image).unsqueeze(0)

        def torch_eager(crop: np.ndarray) -> Any:
            with torch.inference_mode():
                return ref.model(to_tensor(crop)).softmax(1).numpy()

        out = [lat.Candidate("torch", "torchvision+torch-eager", "fp32", torch_eager,
                             scope="crop", kind="theirs", size_mb=self.torch_size_mb(),
                             threads=ref.threads, label="torchvision + PyTorch")]
        fp32 = reference_model(self.models)
        if fp32.kind == "onnx" and _wanted(self.options, "onnxruntime-cpu"):
            sess = load_session(fp32.path, PLAIN_SESSION)
            name = sess.get_inputs()[0].name

            def plain_ort(crop: np.ndarray) -> Any:
                return sess.run(None, {name: to_tensor(crop).numpy()})

            out.append(lat.Candidate(fp32.name, "torchvision+onnxruntime-default", "fp32",
                                     plain_ort, scope="crop", kind="theirs",
                                     size_mb=fp32.size_mb, threads="default",
                                     label="torchvision + plain onnxruntime"))
        return out

    def _attach_memory(self, rows: list[LatencyRow]) -> None:
        mode = self.suite.memory
        if mode == "none":
            return
        probes: dict[tuple[str, str], dict[str, Any]] = {}
        for s in self.sessions:
            probes[s.key] = {"kind": "onnx", "path": str(s.entry.path), "backend": s.backend,
                             "threads": self.threads,
                             "options": s.entry.backend_options(s.backend)}
        if mode == "all" and self.ref is not None:
            probes[("torch", TORCH_BACKEND)] = {"kind": "torch", "checkpoint": str(self.ref.path),
                                                "threads": self.threads}
        for key, spec in probes.items():
            log.info("memory: %s on %s in a child process", *key)
            result = lat.measure_memory(spec, self.suite.batches)
            for r in rows:
                if r.key != key or r.scope != "network" or r.status != "ok":
                    continue
                if "error" in result:
                    r.memory_note = result["error"]
                    continue
                peak = result["peak_rss_mb"].get(str(r.batch))
                r.peak_rss_mb = peak
                r.model_rss_mb = None if peak is None else round(
                    peak - result["baseline_rss_mb"], 2)

    def end_to_end(self) -> EndToEndSection:
        from edge_smw.bench import endtoend
        from edge_smw.runtime import Runtime

        suite = self.suite
        cpu = [s for s in self.sessions if s.intended]
        if not cpu or suite.e2e_frames < 1:
            return EndToEndSection(note="no model on its intended backend here" if not cpu
                                   else "suite has e2e_frames = 0")
        int8 = [s for s in cpu if s.entry.precision == "int8"]
        deployable = (int8 or [s for s in cpu if s.entry.precision == "fp32"] or cpu)[0]
        chosen = cpu if suite.e2e_models == "all" else [deployable]
        detectors = self.detector_names()
        rows: list[EndToEndRow] = []
        # The runtime's defaults (onnxruntime threads spin-wait inside a run), then variants:
        # with spinning off, a 2-thread pool never competes with decoding and face detection.
        many = self.threads > 1
        configs = [("single-threaded", self.threads, True)]
        if many and uses_onnxruntime(chosen):
            configs.append(("single-threaded", self.threads, False))
        configs.append(("pipelined", max(1, self.threads - 1), True))
        if many and uses_onnxruntime(chosen):
            configs.append(("pipelined", self.threads, False))
        runtimes: list[tuple[Session, str, int, bool, Any]] = []
        try:
            for s in chosen:
                for detector in detectors:
                    for mode, threads, spinning in configs:
                        options = s.entry.backend_options(s.backend, spinning=spinning)
                        # Camera frames are not crops: always detect. Detectors are compared
                        # on purpose: the model's own is not enforced.
                        rt = Runtime(s.entry.path, backend=s.backend, threads=threads,
                                     backend_options=options, detect_faces=True,
                                     detector=detector, allow_detector_mismatch=True)
                        runtimes.append((s, mode, threads, spinning, rt))
            frame, index = endtoend.pick_frame(self.crops_bgr(50),
                                               [rt.detector for *_, rt in runtimes])
            jpeg = endtoend.encode_frame(frame)
            log.info("end to end: %d configurations interleaved, %d frames each",
                     len(runtimes), suite.e2e_frames)
            results = endtoend.interleaved([(mode, rt) for _, mode, _, _, rt in runtimes], jpeg,
                                           suite.e2e_frames, rounds=suite.e2e_frames // 30)
            for (s, _, threads, spinning, rt), timing in zip(runtimes, results, strict=True):
                # a frame without a face skips scoring: such a row times less work, and the
                # gates and targets skip it
                complete = timing.faces_found_rate == 1
                rows.append(EndToEndRow(
                    model=s.entry.name, backend=s.backend, precision=s.entry.precision,
                    threads=threads, onnxruntime_spinning=spinning, deployable=s is deployable,
                    detector=rt.detector.name, detector_settings=rt.detector.spec.describe(),
                    detector_backend=rt.detector.backend, timing=timing,
                    status="ok" if complete else FACES_MISSED))
        finally:
            for *_, rt in runtimes:
                rt.close()
        frame = FrameInfo(width=endtoend.FRAME_W, height=endtoend.FRAME_H,
                          face_side=endtoend.FACE_SIDE, crop_index=index, detected=index >= 0,
                          jpeg_bytes=len(jpeg))
        return EndToEndSection(frame=frame, rows=rows)

    def detector_names(self) -> list[str]:
        return list(self.options.detectors or self.suite.detectors)

    def detection(self) -> DetectionSection:
        """Recall and false positives per condition and detector on a detection set built
        from this bench's own face crops (``edge_smw.bench.detection``)."""
        from edge_smw.bench import detection as det
        from edge_smw.detect import open_detector, resolve_spec

        per = self.suite.detection_frames
        if per < 1:
            return DetectionSection(note="suite has detection_frames = 0")
        crops = self.crops_bgr(400)
        frames = det.build_detection_set(crops, per_condition=per, seed=0)
        opened = []
        try:
            for name in self.detector_names():
                opened.append(open_detector(resolve_spec(name, self.contract),
                                            backend="onnxruntime-cpu", threads=self.threads,
                                            options={"allow_spinning": False}))
            rows = det.evaluate_detectors(opened, frames)
        finally:
            for d in opened:
                d.close()
        return det.detection_section(crops, frames, per, rows)

    def limit(self, latency_rows: list[LatencyRow]) -> LimitSection:
        from edge_smw.bench.flops import count_macs

        ref = reference_model(self.models)
        if ref.kind != "onnx":
            return LimitSection(note="no ONNX model to count operations in")
        try:
            counted = count_macs(ref.path)
        except BackendUnavailableError as exc:
            return LimitSection(note=str(exc))
        per_model: dict[str, int | None] = {}
        for m in self.models:
            if m.kind == "onnx":
                try:
                    per_model[m.name] = count_macs(m.path).macs
                except EdgeSmwError:
                    per_model[m.name] = None
        peak = measure_peak_gflops(self.suite.peak_matmul, self.suite.peak_repeats,
                                   threads=self.threads)
        gflops = counted.gflops
        rows = []
        for r in latency_rows:
            if not r.measured or r.scope != "network":
                continue
            assert r.p50_ms is not None and r.batch is not None
            achieved = gflops * r.batch / (r.p50_ms / 1000)
            rows.append(LimitRow(model=r.model, backend=r.backend, precision=r.precision,
                                 batch=r.batch, kind=r.kind,
                                 achieved_gflops=round(achieved, 3),
                                 fraction_of_peak=round(achieved / peak.peak_gflops, 4)))
        return LimitSection(
            model=ref.name, counted=counted, macs_per_model=per_model,
            peak_gflops=round(peak.peak_gflops, 2),
            peak_median_gflops=round(peak.median_gflops, 2),
            peak_method=peak.method, peak_detail=peak.rounded(2),
            note="fraction of the measured float32 peak, also for int8 rows (int8 kernels can "
                 "exceed it)",
            rows=rows)

    def robustness(self) -> tuple[list[RobustnessRow], RobustnessSummary]:
        if self.ref is None:
            return [], RobustnessSummary(note="needs torch (PGD gradients on the torch model); "
                                              "run it where torch is installed")
        if self.suite.robust_n < 1 or not self.suite.budgets:
            return [], RobustnessSummary(note="suite has robust_n = 0")
        from edge_smw.bench.robustness import Judge, run_robustness

        assert self.data is not None and self.ref_probs is not None
        ref = self.ref
        torch_judge = Judge("torch", TORCH_BACKEND, "fp32", None, ref.probabilities)
        judges = [Judge(s.entry.name, s.backend, s.entry.precision, s.entry.flavour, s.probs,
                        s.runtime) for s in self.sessions]
        return run_robustness(ref.pixel_model(), torch_judge, judges, self.data.pixels,
                              self.data.labels, self.ref_probs, self.contract.levels, self.suite)

    def features(self) -> FeaturePassSection:
        """The training feature pass: torch eager vs edge-smw's, crops/s side by side."""
        if self.ref is None:
            return FeaturePassSection(note="needs torch and the checkpoint (it times the "
                                           "training feature pass)")
        from edge_smw.bench.features import measure_feature_pass

        assert self.data is not None
        return measure_feature_pass(self.ref.checkpoint, self.data.files,
                                    crops=self.suite.features_crops, threads=self.threads)

    # -- everything ------------------------------------------------------------------------
    def run(self) -> BenchReport:
        """Every section; the models' runtimes are closed however it ends."""
        try:
            return self._run()
        finally:
            self.close()

    def close(self) -> None:
        for s in self.sessions:
            s.runtime.close()

    def _run(self) -> BenchReport:
        t_start = time.perf_counter()
        machine = describe_machine()
        self.prepare()
        assert self.data is not None
        self.timings["prepare_s"] = time.perf_counter() - t_start
        sections = self.options.sections
        latency = self._timed("latency", self.latency) if "latency" in sections else []
        end_to_end = self._timed("end_to_end", self.end_to_end) \
            if "end_to_end" in sections else EndToEndSection(note=NOT_REQUESTED)
        limit = self._timed("limit", lambda: self.limit(latency)) \
            if "limit" in sections else LimitSection(note=NOT_REQUESTED)
        detection = self._timed("detection", self.detection) \
            if "detection" in sections else DetectionSection(note=NOT_REQUESTED)
        parity = self._timed("parity", self.parity) if "parity" in sections else []
        if "robustness" in sections:
            robustness, robustness_summary = self._timed("robustness", self.robustness)
        else:
            robustness, robustness_summary = [], RobustnessSummary(note=NOT_REQUESTED)
        features = self._timed("features", self.features) if "features" in sections \
            else FeaturePassSection(note=NOT_REQUESTED)
        opts = self.options
        report = BenchReport(
            schema_version=SCHEMA_VERSION, command=opts.command, export_dir=str(self.export_dir),
            suite=self.suite, threads=self.threads, openmp=self.omp_note,
            interleaving=interleaving(self.suite), machine=machine,
            models=[m.describe() for m in self.models], skipped_models=self.skipped_models,
            reference=self.reference, data=self.data.summary(),
            golden=None if opts.golden_mode is None else GoldenUse(
                mode=opts.golden_mode, file=str(opts.golden_file)),
            latency=latency, comparisons=lat.comparisons(latency), end_to_end=end_to_end,
            limit=limit, detection=detection, parity=parity, robustness=robustness,
            robustness_summary=robustness_summary, gates_config=self.gates.to_dict(),
            features=features)
        judge_gates(report, self.gates)
        machine.load_average_end = load_average()
        self.timings["total_s"] = time.perf_counter() - t_start
        report.timings_s = {k: round(v, 2) for k, v in self.timings.items()}
        return report

    def _timed(self, name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.timings[f"{name}_s"] = time.perf_counter() - t0


def judge_gates(report: BenchReport, gates: GateSet) -> None:
    """Set the report's gate and target verdicts. Gates judge bench.json's form of the report,
    the field names they are configured by."""
    written = report.to_dict()
    report.gates = [g.evaluate(written) for g in gates.gates]
    report.targets = [g.evaluate(written) for g in gates.targets]


def run_bench(options: BenchOptions) -> BenchReport:
    """Run every section and return the report (``to_dict()`` is bench.json's content)."""
    return Bench(options).run()
