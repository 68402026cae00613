"""The CPU a model runs on, as far as INT8 is concerned (no torch, no onnxruntime).

onnxruntime's x86 kernels for U8S8 (uint8 activations x int8 weights) multiply pairs of
bytes into one 16-bit sum before widening. With full 8-bit weights a pair can exceed 16 bits
and saturate on CPUs without VNNI (AVX2, AVX-512 without VNNI); 7-bit weights
(``reduce_range``) cannot. With VNNI (AVX512-VNNI, AVX-VNNI) and on ARM the sums are 32-bit.
So an INT8 model's weight width is decided by the CPU it is *built for*, and a model is only
right on a CPU kind it suits. The export decides from a named target; the runtime checks the
CPU it actually runs on and warns when the model does not suit it.

The tensorrt flavour's activations are signed int8, which onnxruntime rewrites to uint8 on x86
so that the same U8S8 kernels run them, with that flavour's 8-bit weights. On x86 without VNNI
every session therefore turns that rewrite off (``disabled_rewrites``): the model then runs
onnxruntime's S8S8 kernels and computes what its Q/DQ graph says.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

X86 = ("x86_64", "amd64", "i686", "x86")
ARM = ("aarch64", "arm64", "armv8l")


def read_cpuinfo(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[set[str], str, bool]:
    """The first CPU's flags (x86 ``flags``, ARM ``Features``), its model name, and whether
    the file could be read. The one reader of /proc/cpuinfo in the project."""
    flags: set[str] = set()
    model = ""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return flags, model, False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    return flags, model, True


def cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """Machine architecture and the int8 dot-product flags onnxruntime's kernels care about."""
    flags, model, readable = read_cpuinfo(cpuinfo)
    vnni = sorted(f for f in flags if "vnni" in f)
    return {
        "machine": platform.machine(),
        "model": model,
        "source": str(cpuinfo) if readable else "unavailable",
        "avx2": "avx2" in flags,
        "avx512": any(f.startswith("avx512") for f in flags),
        "vnni_flags": vnni,
        "vnni": bool(vnni),
        "arm_dotprod": "asimddp" in flags,
    }


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name, else what the platform says."""
    return read_cpuinfo(cpuinfo)[1] or platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, bool]:
    """The instruction sets that decide int8 speed (VNNI; AMX, which OpenVINO's oneDNN
    kernels use where present) and whether fp16 is native: what a speed figure is quoted
    with."""
    flags = read_cpuinfo(cpuinfo)[0]
    return {
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "amx_int8": "amx_int8" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "f16c": "f16c" in flags,
        "neon": "asimd" in flags or "neon" in flags,
    }


def cpu_kind(features: dict[str, Any] | None = None) -> str:
    """``x86-vnni``, ``x86-avx2`` (any x86 without VNNI), ``arm64`` or ``other``."""
    feats = features or cpu_features()
    machine = str(feats.get("machine", "")).lower()
    if machine in X86:
        return "x86-vnni" if feats.get("vnni") else "x86-avx2"
    if machine in ARM:
        return "arm64"
    return "other"


def needs_reduce_range(kind: str) -> bool:
    """Does U8S8 need 7-bit weights on this CPU kind? (x86 without VNNI only.)"""
    return kind == "x86-avx2"


# onnxruntime's graph rewrite that turns signed int8 activations (QDQ int8, the tensorrt
# flavour) into uint8 ones so its U8S8 kernels run them: with that flavour's 8-bit weights
# those kernels saturate on x86 without VNNI. Measured on an AMD EPYC with AVX2 only
# (benchmarks/RESULTS.md): naive tensorrt-flavour logits 2.56 from fp32 with the rewrite,
# 0.47 without it (0.45 running the Q/DQ operators as defined); with 7-bit weights 0.41.
S8_TO_U8_REWRITE = "QDQS8ToU8Transformer"


def disabled_rewrites(features: dict[str, Any] | None = None) -> tuple[str, ...]:
    """onnxruntime graph rewrites to turn off on this CPU so every INT8 model computes what
    its Q/DQ graph says: on x86 without VNNI, the signed-to-unsigned activation rewrite
    (signed int8 models then run onnxruntime's S8S8 kernels, which do not saturate)."""
    return (S8_TO_U8_REWRITE,) if needs_reduce_range(cpu_kind(features)) else ()


def int8_mismatch(int8: dict[str, Any], features: dict[str, Any] | None = None,
                  backend: str = "onnxruntime-cpu") -> str | None:
    """Why an INT8 model's settings (its ``int8`` metadata) do not suit this CPU, or None.

    Only the cases that give wrong numbers are reported, on an x86 CPU without VNNI where
    U8S8 sums can saturate: a cpu-flavour model with 8-bit weights on any backend, and a
    tensorrt-flavour model (8-bit weights, signed activations) on OpenVINO (onnxruntime
    runs it on S8S8 kernels there: ``disabled_rewrites``).
    """
    flavour = int8.get("flavour", "cpu")
    if int8.get("reduce_range") is not False or not needs_reduce_range(cpu_kind(features)):
        return None
    if flavour == "tensorrt" and backend.startswith("openvino"):
        return ("this tensorrt-flavour INT8 model has 8-bit weights, and on this CPU without "
                "VNNI (x86 AVX2) OpenVINO runs it on U8S8 kernels (oneDNN's) that can saturate "
                "their 16-bit sums and change scores; run it with --backend onnxruntime-cpu, "
                "or use the cpu flavour (model.int8.onnx) or model.onnx (fp32)")
    if flavour != "cpu":
        return None
    target = int8.get("target_cpu") or "a CPU with VNNI"
    return (f"this INT8 model has 8-bit weights (built for {target}), but this CPU has no VNNI "
            "(x86 AVX2): U8S8 kernels without VNNI (onnxruntime's, oneDNN's under OpenVINO) can "
            "saturate their 16-bit sums here and "
            "change scores; re-export it with `edge-smw export --int8 --target-cpu x86-avx2` "
            "(7-bit weights), or use model.onnx (fp32)")
