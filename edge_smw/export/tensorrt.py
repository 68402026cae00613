"""TensorRT engines from the exported ONNX, with TensorRT's own Python API.

- INT8 comes from the ``tensorrt``-flavour Q/DQ model (explicit quantization: works on every
  TensorRT from 8.x; implicit calibrators are deprecated since 10.1 and removed in 11), FP16
  from the fp32 model with the FP16 builder flag.
- One optimisation profile for batch ``batch_min..batch_max``, a workspace limit, optional
  DLA core (Jetson) with GPU fallback, and a timing cache reused between builds.
- Engines are cached, keyed by ONNX sha256 + TensorRT version + GPU name and compute
  capability + precision + calibration hash + build settings, in a writable user cache
  (a clear error when it is not writable, instead of jetson-inference's silent failure).
- The ``.engine`` file is TensorRT's plan, byte for byte (``trtexec --loadEngine`` takes it);
  the model's metadata goes to the sidecar ``<engine>.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_smw.artifacts.formats import engine_format
from edge_smw.atomic import atomic_path, write_bytes, write_json
from edge_smw.cache import cache_root
from edge_smw.errors import BackendUnavailableError, InputError, ModelError
from edge_smw.metadata import INPUT_NAME, ModelInfo, sidecar_path

INSTALL_HINT = (
    "on a Jetson install JetPack (it ships TensorRT and its Python bindings, e.g. "
    "`sudo apt install nvidia-jetpack`); elsewhere install an NVIDIA driver and NVIDIA's "
    "TensorRT wheels (`pip install tensorrt`)"
)


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"building TensorRT engines (--engine) needs the `tensorrt` Python package ({exc}); "
            f"{INSTALL_HINT}. To export the ONNX models only (and build the engine on the "
            "device, e.g. `trtexec --onnx=model.int8-trt.onnx --int8`), drop --engine, or add "
            "--no-engine to a profile that builds one"
        ) from None
    except OSError as exc:
        raise BackendUnavailableError(
            f"`tensorrt` is installed but its libraries do not load ({exc}); {INSTALL_HINT}"
        ) from None
    return trt


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str

    @property
    def slug(self) -> str:
        name = self.name.lower().replace("nvidia", "").strip()
        return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "gpu"


def gpu_info(device: int = 0) -> GpuInfo:
    """Name and compute capability of the GPU the engine is built for (engines are per-GPU)."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(device)
            return GpuInfo(props.name, f"{props.major}.{props.minor}")
    except (ImportError, RuntimeError, AssertionError):
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", f"--id={device}", "--query-gpu=name,compute_cap",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True)
            name, cap = (part.strip() for part in out.stdout.strip().split(",", 1))
            return GpuInfo(name, cap)
        except (subprocess.SubprocessError, ValueError, OSError):
            pass
    raise BackendUnavailableError(
        f"no CUDA GPU {device} is visible (neither torch.cuda nor nvidia-smi sees one); a "
        "TensorRT engine is built on, and for, the GPU it will run on"
    )


MIN_WORKSPACE_MB = 16  # below this the builder finds no tactic for the first layers


@dataclass
class EngineSettings:
    precision: str  # "fp16" or "int8"
    batch_min: int = 1
    batch_opt: int = 1
    batch_max: int = 8
    workspace_mb: int = 1024
    dla_core: int = -1
    device: int = 0

    def check(self) -> None:
        if self.precision not in ("fp16", "int8"):
            raise InputError(f"engine precision {self.precision!r}: choose fp16 or int8")
        if not 1 <= self.batch_min <= self.batch_opt <= self.batch_max:
            raise InputError(f"engine batches: need 1 <= batch_min <= batch_opt <= batch_max, "
                             f"got {self.batch_min}, {self.batch_opt}, {self.batch_max}")
        if self.workspace_mb < MIN_WORKSPACE_MB:
            raise InputError(f"--workspace-mb {self.workspace_mb}: give at least "
                             f"{MIN_WORKSPACE_MB} MB")
        if self.dla_core < -1:
            raise InputError(f"--dla-core {self.dla_core}: give a DLA core number >= 0, or -1 "
                             "for none")


def engine_cache_dir() -> Path:
    """``<cache>/engines``, created and checked writable (a clear error if it is not)."""
    folder = cache_root() / "engines"
    probe = folder / ".write-test"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise InputError(
            f"the engine cache folder {folder} is not writable ({exc.strerror or exc}); set "
            "EDGE_SMW_CACHE to a writable folder (TensorRT engines and the timing cache live "
            "there)"
        ) from None
    return folder


def cache_key(onnx_sha256: str, trt_version: str, gpu: GpuInfo, settings: EngineSettings,
              calibration_sha256: str | None) -> str:
    parts = {"onnx": onnx_sha256, "tensorrt": trt_version, "gpu": gpu.name,
             "compute_capability": gpu.compute_capability, "precision": settings.precision,
             "calibration": calibration_sha256 or "", "batch": [settings.batch_min,
             settings.batch_opt, settings.batch_max], "workspace_mb": settings.workspace_mb,
             "dla_core": settings.dla_core}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _parse(trt: Any, onnx_path: Path, logger: Any) -> tuple[Any, Any, Any]:
    builder = trt.Builder(logger)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    flags = 0 if explicit is None or int(trt.__version__.split(".")[0]) >= 10 else 1 << int(
        explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    return builder, network, parser


def build_engine(onnx_path: str | Path, settings: EngineSettings, *, info: ModelInfo,
                 out_dir: str | Path, calibration_sha256: str | None = None,
                 input_size: int | None = None) -> dict[str, Any]:
    """Build (or take from the cache) the engine for ``onnx_path``; write it and its sidecar
    into ``out_dir`` as ``model.<gpu>.<precision>.engine``. Returns what was done."""
    settings.check()
    trt = import_tensorrt()
    gpu = gpu_info(settings.device)
    onnx_path = Path(onnx_path)
    onnx_sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    cache = engine_cache_dir()
    key = cache_key(onnx_sha, trt.__version__, gpu, settings, calibration_sha256)
    cached = cache / f"{key}.engine"
    timing_cache = cache / (f"timing-{gpu.slug}-sm{gpu.compute_capability}-"
                            f"trt{trt.__version__}.cache")
    reused = cached.is_file()
    if not reused:
        size = input_size or info.contract.input_size
        plan = _build(trt, onnx_path, settings, timing_cache, size)
        write_bytes(cached, plan)
    target = Path(out_dir) / engine_format(settings.precision).engine_name(gpu.slug)
    with atomic_path(target) as tmp:
        shutil.copyfile(cached, tmp)  # the plan, untouched
    engine = {"file": target.name, "tensorrt": trt.__version__, "gpu": gpu.name,
              "compute_capability": gpu.compute_capability, "precision": settings.precision,
              "batch": [settings.batch_min, settings.batch_opt, settings.batch_max],
              "workspace_mb": settings.workspace_mb, "dla_core": settings.dla_core,
              "onnx": onnx_path.name, "onnx_sha256": onnx_sha,
              "calibration_sha256": calibration_sha256, "cache_key": key,
              "from_cache": reused, "sha256": hashlib.sha256(target.read_bytes()).hexdigest()}
    sidecar = {**info.to_sidecar(), "engine": engine}
    write_json(sidecar_path(target), sidecar)
    return engine


def _build(trt: Any, onnx_path: Path, settings: EngineSettings, timing_cache: Path,
           size: int) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder, network, _parser = _parse(trt, onnx_path, logger)
    config = builder.create_builder_config()
    workspace = settings.workspace_mb << 20
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:  # TensorRT < 8.4
        config.max_workspace_size = workspace
    config.set_flag(trt.BuilderFlag.FP16)  # float layers (tail, islands) run in fp16 too
    if settings.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization from the Q/DQ nodes
    if settings.dla_core >= 0:
        if builder.num_DLA_cores <= settings.dla_core:
            raise InputError(f"DLA core {settings.dla_core} requested but this device has "
                             f"{builder.num_DLA_cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (settings.batch_min, 3, size, size),
                      (settings.batch_opt, 3, size, size), (settings.batch_max, 3, size, size))
    config.add_optimization_profile(profile)
    previous = timing_cache.read_bytes() if timing_cache.is_file() else b""
    timing = config.create_timing_cache(previous)
    config.set_timing_cache(timing, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"TensorRT {trt.__version__} could not build an engine from "
                         f"{onnx_path} (see TensorRT's log above)")
    write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)
