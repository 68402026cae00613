"""The formats table: every artifact edge-smw writes, one row each (as Ultralytics'
``export_formats()``). File names, suffixes, precision, INT8 flavour, the backends each model is
meant for and the order an export folder offers them in are facts stated here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Backend names (``Runtime`` decides which of them it tries first).
ONNXRUNTIME_BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt")
# OpenVINO is an optional extra: named, never picked by ``auto`` (onnxruntime-cpu is what
# every install has, and the two give the same files different kernels).
ONNX_BACKENDS = (*ONNXRUNTIME_BACKENDS, "openvino-cpu")
CPU_BACKENDS = ("onnxruntime-cpu", "openvino-cpu")
ENGINE_BACKENDS = ("tensorrt",)
BACKENDS = (*ONNX_BACKENDS, *ENGINE_BACKENDS)
GPU_BACKENDS = ("onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")

ONNX_SUFFIX = ".onnx"
ENGINE_SUFFIXES = (".engine", ".plan")
MODEL_SUFFIXES = (ONNX_SUFFIX, *ENGINE_SUFFIXES)


@dataclass(frozen=True)
class ArtifactFormat:
    """One kind of file: how it is named and where it is meant to run."""

    key: str  # stable id, used in export.json ("fp32", "int8-cpu", ...)
    label: str  # human name, the "format" column of bench tables
    file_name: str  # the name in a run or export folder ({gpu} filled in for engines)
    precision: str | None  # fp32 / int8 / fp16; None for the training checkpoint
    flavour: str | None  # INT8 flavour: cpu (U8S8) or tensorrt (symmetric Q/DQ)
    backends: tuple[str, ...]  # the backends this file is built for
    preference: int | None  # order an export folder offers its models in; None: not offered

    @property
    def suffix(self) -> str:
        return Path(self.file_name).suffix

    @property
    def kind(self) -> str:
        """``onnx``, ``engine`` or ``checkpoint``."""
        if self.suffix == ONNX_SUFFIX:
            return "onnx"
        return "engine" if self.suffix in ENGINE_SUFFIXES else "checkpoint"

    def intended(self, backend: str) -> bool:
        """Is ``backend`` what this file was built for? (Speed gates only judge those.)"""
        return backend in self.backends

    def engine_name(self, gpu_slug: str) -> str:
        return self.file_name.format(gpu=gpu_slug)


CHECKPOINT = ArtifactFormat("checkpoint", "PyTorch checkpoint", "checkpoint.pt", None, None,
                            ("torch-eager",), None)
# fp32 runs well everywhere; int8 cpu (U8S8) is for the CPU backends' kernels, int8 tensorrt
# (symmetric Q/DQ) for TensorRT; fp16 only pays off on a GPU.
FP32 = ArtifactFormat("fp32", "ONNX fp32", "model.onnx", "fp32", None, ONNX_BACKENDS, 1)
INT8_CPU = ArtifactFormat("int8-cpu", "ONNX int8 (cpu)", "model.int8.onnx", "int8", "cpu",
                          CPU_BACKENDS, 0)
# Not offered by an export folder: on onnxruntime's CPU kernels it is slower than fp32.
INT8_TENSORRT = ArtifactFormat("int8-tensorrt", "ONNX int8 (tensorrt)", "model.int8-trt.onnx",
                               "int8", "tensorrt", ("onnxruntime-tensorrt", "tensorrt"), None)
FP16 = ArtifactFormat("fp16", "ONNX fp16", "model.fp16.onnx", "fp16", None, GPU_BACKENDS, 2)
ENGINE_INT8 = ArtifactFormat("engine-int8", "TensorRT engine int8", "model.{gpu}.int8.engine",
                             "int8", "tensorrt", ENGINE_BACKENDS, None)
ENGINE_FP16 = ArtifactFormat("engine-fp16", "TensorRT engine fp16", "model.{gpu}.fp16.engine",
                             "fp16", None, ENGINE_BACKENDS, None)

FORMATS: tuple[ArtifactFormat, ...] = (CHECKPOINT, FP32, INT8_CPU, INT8_TENSORRT, FP16,
                                       ENGINE_INT8, ENGINE_FP16)


def export_formats() -> list[dict[str, object]]:
    """The table as rows (docs, ``--help``, tests)."""
    return [{"key": f.key, "label": f.label, "file": f.file_name, "suffix": f.suffix,
             "precision": f.precision, "flavour": f.flavour, "backends": list(f.backends),
             "preference": f.preference} for f in FORMATS]


def by_key(key: str) -> ArtifactFormat:
    for fmt in FORMATS:
        if fmt.key == key:
            return fmt
    raise KeyError(f"no artifact format {key!r}; known: {[f.key for f in FORMATS]}")


def int8_format(flavour: str) -> ArtifactFormat:
    """The ONNX INT8 row of a flavour (``cpu`` or ``tensorrt``)."""
    for fmt in (INT8_CPU, INT8_TENSORRT):
        if fmt.flavour == flavour:
            return fmt
    raise KeyError(f"no INT8 flavour {flavour!r}; known: cpu, tensorrt")


def engine_format(precision: str) -> ArtifactFormat:
    for fmt in (ENGINE_INT8, ENGINE_FP16):
        if fmt.precision == precision:
            return fmt
    raise KeyError(f"no TensorRT engine precision {precision!r}; known: int8, fp16")


def model_format(kind: str, precision: str, flavour: str | None) -> ArtifactFormat:
    """The row describing a model file, from what its own metadata says (never its name)."""
    if kind == "engine":
        return engine_format(precision)
    if precision == "int8":
        return int8_format(flavour or "cpu")
    for fmt in (FP32, FP16):
        if fmt.precision == precision:
            return fmt
    raise KeyError(f"no ONNX format for precision {precision!r}")


def offered_models() -> list[ArtifactFormat]:
    """The ONNX models an export folder offers to ``Runtime``, most deployable first."""
    return sorted((f for f in FORMATS if f.preference is not None and f.kind == "onnx"),
                  key=lambda f: f.preference or 0)


def is_model_file(path: str | Path) -> bool:
    return Path(path).suffix in MODEL_SUFFIXES
