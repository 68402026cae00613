"""Export settings in one place: one dataclass, layered defaults < profile < flags.

Every field of ``ExportSettings`` carries its default, its help text, its command-line flag
and its key in a target profile (TOML). ``edge-smw export``'s options and help are generated
from these fields, a profile may set exactly the keys declared here (an unknown key is an
error, so a key cannot be accepted and then ignored), and ``resolve_settings`` layers them:
the dataclass defaults, then the profile, then whatever the caller (or the command line) set.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edge_smw.errors import InputError

FLAVOURS = ("cpu", "tensorrt")
CALIB_METHODS = ("minmax", "entropy", "percentile", "auto")
REDUCE_RANGE = ("auto", "on", "off")
# The CPU an int8 cpu-flavour model is built for decides its weight width: x86 without VNNI
# runs onnxruntime's U8S8 kernels with 16-bit intermediate sums that 8-bit weights can
# saturate, so it needs 7-bit weights (reduce_range); VNNI and ARM do not.
TARGET_CPUS = ("x86-avx2", "x86-vnni", "arm64", "build-machine")
PRECISIONS = ("fp32", "fp16", "int8")
# onnxruntime's entropy (KL) search needs this many histogram bins at least; the percentile
# method takes a percentile in [low, high).
MIN_NUM_BINS = 256
ENTROPY_BINS = 2048  # onnxruntime's default, 128, leaves the KL search one candidate: minmax's
PERCENTILE_RANGE = (90.0, 100.0)

GROUP_WHAT = "what to build"
GROUP_CALIB = "INT8 calibration"
GROUP_INT8 = "INT8 accuracy"
GROUP_CHECK = "checks and output"
GROUP_TRT = "TensorRT engine"


def setting(default: Any = MISSING, *, help: str, group: str, flag: str | None = None,
            profile: str | None = None, choices: tuple[str, ...] | None = None,
            metavar: str | None = None, repeat: bool = False, negatable: bool = False,
            shown: str | None = None, default_factory: Any = MISSING) -> Any:
    """A settings field: ``flag`` is its command-line option (None: library only), ``profile``
    its ``section.key`` in a profile (None: not settable there), ``repeat`` an option given
    once per value (a tuple field), ``negatable`` a switch that also has ``--no-...`` (needed
    where a default or a profile can turn it on), ``shown`` the default as the help shows it
    (when the value itself does not say it)."""
    meta = {"help": help, "group": group, "flag": flag, "profile": profile, "choices": choices,
            "metavar": metavar, "repeat": repeat, "shown": shown,
            "negatable": negatable or default is True or profile is not None}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ExportSettings:
    """What ``edge-smw export`` builds and how; see the module doc for where values come from."""

    # -- what to build
    int8: bool = setting(False, help="static INT8 (cpu and tensorrt flavours unless the profile "
                         "picks one)", group=GROUP_WHAT, flag="--int8", negatable=True,
                         shown="a profile's precision, else off")
    fp16: bool = setting(False, help="FP16 ONNX (float32 inputs/outputs kept)", group=GROUP_WHAT,
                         flag="--fp16", negatable=True, shown="a profile's precision, else off")
    engine: bool = setting(False, help="build TensorRT engine(s) (needs TensorRT and an NVIDIA "
                           "GPU)", group=GROUP_WHAT, flag="--engine", profile="engine")
    flavours: tuple[str, ...] = setting(FLAVOURS, help="INT8 flavour(s) to write (repeatable)",
                                        group=GROUP_WHAT, flag="--flavour", profile="flavours",
                                        choices=FLAVOURS, repeat=True)
    feature_map: bool = setting(False, help="add the backbone's last feature map as an output "
                                "(CAM heat maps)", group=GROUP_WHAT, flag="--feature-map")
    # -- calibration
    calib_data: Path | None = setting(None, help="face photos to calibrate on",
                                      group=GROUP_CALIB, flag="--calib-data", metavar="DIR",
                                      shown="the run's training split")
    calib_size: int = setting(128, help="calibration crops, stratified by level (minimum 64)",
                              group=GROUP_CALIB, flag="--calib-size", profile="calibration.size",
                              metavar="N")
    calib_method: str = setting("minmax", help="activation ranges (auto picks per tensor)",
                                group=GROUP_CALIB, flag="--calib-method",
                                profile="calibration.method", choices=CALIB_METHODS)
    num_bins: int = setting(ENTROPY_BINS, help="histogram bins for entropy/percentile/auto",
                            group=GROUP_CALIB, flag="--num-bins",
                            profile="calibration.num_bins", metavar="N")
    percentile: float = setting(99.999, help="percentile of the percentile method",
                                group=GROUP_CALIB, flag="--percentile",
                                profile="calibration.percentile", metavar="P")
    # -- INT8 accuracy
    target_cpu: str = setting("x86-avx2", help="CPU the cpu-flavour model is built for: its "
                              "weight width follows from it (x86-avx2: 7-bit weights, safe on "
                              "every x86; x86-vnni / arm64: 8-bit; build-machine: this CPU)",
                              group=GROUP_INT8, flag="--target-cpu", profile="int8.target_cpu",
                              choices=TARGET_CPUS)
    reduce_range: str = setting("auto", help="7-bit weights for the cpu flavour (auto: from "
                                "--target-cpu)", group=GROUP_INT8, flag="--reduce-range",
                                profile="int8.reduce_range", choices=REDUCE_RANGE)
    input_grid: bool = setting(True, help="put the input on the pixels' exact 8-bit grid (a "
                               "half-step shift the first Conv absorbs)", group=GROUP_INT8,
                               flag="--input-grid", profile="int8.input_grid")
    centre_activations: bool = setting(False, help="tensorrt flavour: one quantizer per Conv "
                                       "and its ReLU (after it, as TensorRT fuses them), and "
                                       "each ReLU output centred so it uses the whole "
                                       "symmetric 8-bit grid (two measured steps; off: it "
                                       "makes the flavour all-integer but measured less "
                                       "agreement on unseen crops than float blocks, see "
                                       "benchmarks/RESULTS.md)",
                                       group=GROUP_INT8, flag="--centre-activations",
                                       profile="int8.centre_activations")
    equalize: bool = setting(False, help="rescale the linear bottleneck outputs channel by "
                             "channel so one activation scale fits them all, then recalibrate "
                             "(off: no gain measured on EfficientNet-Lite0, see "
                             "benchmarks/RESULTS.md)", group=GROUP_INT8, flag="--equalize",
                             profile="int8.equalize")
    equalize_clipped: bool = setting(False, help="rescale the ReLU6 outputs channel by channel, "
                                     "a step of its own after --equalize's (either runs "
                                     "alone): each channel clipped at 1.25x "
                                     "its largest value on the tuning crops (--tune-crops) "
                                     "and widened to the whole 8-bit range (see "
                                     "benchmarks/RESULTS.md)",
                                     group=GROUP_INT8,
                                     flag="--equalize-clipped",
                                     profile="int8.equalize_clipped")
    learned_rounding: bool = setting(True, help="choose each Conv's int8 weights for its "
                                     "output on the calibration crops (GPTQ), not each weight "
                                     "to nearest", group=GROUP_INT8, flag="--learned-rounding",
                                     profile="int8.learned_rounding")
    bias_correction: bool = setting(True, help="fold the weight-rounding shift into the biases "
                                    "(with --tune: tuned from both choices, the better kept)",
                                    group=GROUP_INT8, flag="--bias-correction",
                                    profile="int8.bias_correction")
    tune: bool = setting(False, help="quantization-aware tuning: train the int8 Convs' weights "
                         "and biases to the float model's logits on unlabelled training crops, "
                         "through the int8 rounding (minutes per pass on 2 cores; see "
                         "benchmarks/RESULTS.md)", group=GROUP_INT8, flag="--tune",
                         profile="int8.tune")
    tune_epochs: int = setting(6, help="passes over the tuning crops", group=GROUP_INT8,
                               flag="--tune-epochs", profile="int8.tune_epochs", metavar="N")
    tune_crops: int = setting(512, help="training-split crops the tuning learns from, stratified "
                              "by level (--calib-data's photos when given; minimum 64; more "
                              "than there are: all of them)",
                              group=GROUP_INT8, flag="--tune-crops", profile="int8.tune_crops",
                              metavar="N")
    tune_ranges: bool = setting(False, help="with --tune, learn each activation's quantization "
                                "scale too (LSQ-style; see benchmarks/RESULTS.md)",
                                group=GROUP_INT8, flag="--tune-ranges",
                                profile="int8.tune_ranges")
    tune_drop: float = setting(0.0, help="with --tune, QDrop: the probability that an activation "
                               "element skips its quantizer in each training pass (0: off; see "
                               "benchmarks/RESULTS.md)", group=GROUP_INT8, flag="--tune-drop",
                               profile="int8.tune_drop", metavar="P")
    tune_blocks: float = setting(0.0, help="with --tune, also match every block's output to the "
                                 "float model's (BRECQ-style), weighted W times the logits' "
                                 "error at the start (0: off; see benchmarks/RESULTS.md)",
                                 group=GROUP_INT8, flag="--tune-blocks",
                                 profile="int8.tune_blocks", metavar="W")
    target_agreement: float = setting(0.97, help="mixed precision keeps blocks in float until "
                                      "the lower end of the 95%% Wilson interval of top-1 "
                                      "agreement with torch on the validation split, widened "
                                      "for the models measured to pick it (as the gate "
                                      "judges), reaches X",
                                      group=GROUP_INT8,
                                      flag="--int8-target-agreement",
                                      profile="int8.target_agreement", metavar="X")
    max_mixed_steps: int = setting(6, help="most blocks mixed precision may try in float "
                                   "(0 disables it)", group=GROUP_INT8,
                                   flag="--mixed-steps", profile="int8.max_mixed_steps",
                                   metavar="N")
    aware_head: bool = setting(False, help="retrain the linear head on the int8 backbone's own "
                               "features", group=GROUP_INT8, flag="--int8-aware-head",
                               profile="int8.aware_head")
    pad_stem: bool = setting(True, help="cpu flavour: pad the stem's 3 input channels to 4 "
                             "with zero weights so onnxruntime's fast int8 conv kernels take it "
                             "(exact; OpenVINO runs the 3-channel stem a little faster: "
                             "--no-pad-stem for it, see benchmarks/RESULTS.md)", group=GROUP_INT8,
                             flag="--pad-stem", profile="int8.pad_stem")
    # -- checks and output
    report: bool = setting(False, help="write the per-tensor sensitivity report (Markdown, "
                           "JSON, PNG)", group=GROUP_CHECK, flag="--report")
    force: bool = setting(False, help="write models that fail a parity gate anyway (and say so)",
                          group=GROUP_CHECK, flag="--force")
    val_limit: int | None = setting(None, help="measure parity on at most N validation crops",
                                    group=GROUP_CHECK, flag="--val-limit", metavar="N",
                                    shown="all")
    latency_runs: int = setting(30, help="interleaved batch-1 runs per model when timing each "
                                "INT8 step", group=GROUP_CHECK)
    seed: int = setting(0, help="seed of every sample the export draws", group=GROUP_CHECK)
    # -- TensorRT engine
    batch_min: int = setting(1, help="smallest batch of the engine's profile", group=GROUP_TRT,
                             profile="tensorrt.batch_min")
    batch_opt: int = setting(1, help="batch the engine is tuned for", group=GROUP_TRT,
                             profile="tensorrt.batch_opt")
    batch_max: int = setting(8, help="largest batch of the engine's profile", group=GROUP_TRT,
                             flag="--batch-max", profile="tensorrt.batch_max",
                             metavar="N")
    workspace_mb: int = setting(1024, help="builder workspace limit in MB", group=GROUP_TRT,
                                flag="--workspace-mb", profile="tensorrt.workspace_mb",
                                metavar="MB")
    dla_core: int = setting(-1, help="build for this DLA core (Jetson), GPU fallback; -1: none",
                            group=GROUP_TRT, flag="--dla-core", profile="tensorrt.dla_core",
                            metavar="CORE")
    # -- where the values came from (recorded in export.json)
    profile: str | None = setting(None, help="the target profile applied (name or file)",
                                  group=GROUP_WHAT)

    def __post_init__(self) -> None:
        object.__setattr__(self, "flavours", tuple(self.flavours))
        if self.calib_data is not None:
            object.__setattr__(self, "calib_data", Path(self.calib_data))
        for name in ("flavours",):
            bad = [v for v in getattr(self, name) if v not in FLAVOURS]
            if bad:
                raise InputError(f"INT8 flavour {bad[0]!r}: choose one of {', '.join(FLAVOURS)}")
        for name, allowed in (("calib_method", CALIB_METHODS), ("reduce_range", REDUCE_RANGE),
                              ("target_cpu", TARGET_CPUS)):
            value = getattr(self, name)
            if value not in allowed:
                raise InputError(f"{_flag(name)} {value!r}: choose one of {', '.join(allowed)}")
        self._check_calibration()
        if not 0.0 < self.target_agreement <= 1.0:
            raise InputError(f"--int8-target-agreement {self.target_agreement}: give a fraction "
                             "in (0, 1], e.g. 0.98")
        if self.max_mixed_steps < 0:
            raise InputError(f"--mixed-steps {self.max_mixed_steps}: the mixed-precision step "
                             "budget must be >= 0")
        if self.int8 and not self.flavours:
            raise InputError("--int8 with no flavour: choose cpu and/or tensorrt")
        if self.tune_epochs < 1:
            raise InputError(f"--tune-epochs {self.tune_epochs}: give at least 1 pass")
        if not 0.0 <= self.tune_drop < 1.0:
            raise InputError(f"--tune-drop {self.tune_drop}: give a probability in [0, 1), "
                             "e.g. 0.5")
        if self.tune_blocks < 0.0:
            raise InputError(f"--tune-blocks {self.tune_blocks}: give a weight >= 0, e.g. 1")
        for name in ("tune_ranges", "tune_drop", "tune_blocks"):
            if getattr(self, name) and not self.tune:
                raise InputError(f"{_flag(name)} changes quantization-aware tuning: give --tune "
                                 "too")
        if self.aware_head and not self.int8:
            raise InputError("--int8-aware-head needs --int8 (it retrains the head for the int8 "
                             "backbone)")
        if self.latency_runs < 1:
            raise InputError(f"latency runs {self.latency_runs}: must be >= 1")
        if self.val_limit is not None and self.val_limit < 1:
            raise InputError(f"--val-limit {self.val_limit}: give at least 1 crop")
        if self.calib_data is not None and not self.int8:
            raise InputError(f"--calib-data {self.calib_data} calibrates INT8 models: add --int8, "
                             "or leave --calib-data out")
        from edge_smw.export.tensorrt import EngineSettings

        # the engine's own checks (batches, workspace, DLA core), now: not after calibration
        EngineSettings("int8", self.batch_min, self.batch_opt, self.batch_max,
                       self.workspace_mb, self.dla_core).check()

    def _check_calibration(self) -> None:
        """The calibration values, here rather than where they are used: a bad one must fail
        before the export loads its validation crops, not minutes later."""
        from edge_smw.export.crops import MIN_CALIBRATION  # cv2: not at import (--help)

        for name in ("calib_size", "tune_crops"):
            if getattr(self, name) < MIN_CALIBRATION:
                raise InputError(f"{_flag(name)} {getattr(self, name)}: give at least "
                                 f"{MIN_CALIBRATION} face crops (default {default_of(name)})")
        if self.num_bins < MIN_NUM_BINS:
            raise InputError(f"--num-bins {self.num_bins}: the entropy search needs at least "
                             f"{MIN_NUM_BINS} histogram bins (default {default_of('num_bins')})")
        low, high = PERCENTILE_RANGE
        if not low <= self.percentile < high:
            raise InputError(f"--percentile {self.percentile}: choose a value in [{low:g}, "
                             f"{high:g}) (default {default_of('percentile')})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (export.json's ``settings``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = (list(value) if isinstance(value, tuple)
                           else str(value) if isinstance(value, Path) else value)
        return out


def _flag(name: str) -> str:
    flag = _fields()[name].metadata.get("flag")
    return flag or name


def _fields() -> dict[str, Field]:
    return {f.name: f for f in fields(ExportSettings)}


def default_of(name: str) -> Any:
    f = _fields()[name]
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


# -- profiles ----------------------------------------------------------------------------------
def profile_keys() -> dict[str, str]:
    """``section.key`` (or top-level key) -> settings field: everything a profile may set,
    besides ``description`` and ``precision``."""
    return {f.metadata["profile"]: f.name for f in fields(ExportSettings)
            if f.metadata.get("profile")}


def profile_values(data: Mapping[str, Any], source: object) -> dict[str, Any]:
    """A parsed profile (TOML tables) -> settings values; unknown keys are an error."""
    keys = profile_keys()
    sections = {k.split(".")[0] for k in keys if "." in k}
    top = {k for k in keys if "." not in k} | {"description", "precision"}
    unknown = [k for k in data if k not in top and k not in sections]
    if unknown:
        raise InputError(f"profile {source}: unknown setting(s) {sorted(unknown)}; known: "
                         f"{sorted(top | sections)}")
    values: dict[str, Any] = {}
    precision = str(data.get("precision", "fp32"))
    if precision not in PRECISIONS:
        raise InputError(f"profile {source}: precision {precision!r}; choose one of "
                         f"{list(PRECISIONS)}")
    values["int8"] = precision == "int8"
    values["fp16"] = precision == "fp16"
    for key, value in data.items():
        if key in sections:
            if not isinstance(value, dict):
                raise InputError(f"profile {source}: [{key}] must be a table")
            known = sorted(k.split(".", 1)[1] for k in keys if k.startswith(key + "."))
            for sub, item in value.items():
                name = keys.get(f"{key}.{sub}")
                if name is None:
                    raise InputError(f"profile {source}: unknown [{key}] setting {sub!r}; "
                                     f"known: {known}")
                values[name] = _coerce(name, item, f"profile {source}: [{key}] {sub}")
        elif key in keys:
            values[keys[key]] = _coerce(keys[key], value, f"profile {source}: {key}")
    if precision == "int8" and not values.get("flavours", FLAVOURS):
        raise InputError(f"profile {source}: an int8 profile needs at least one flavour")
    if precision != "int8":
        if values.pop("flavours", ()):
            raise InputError(f"profile {source}: flavours are INT8 flavours; this profile's "
                             f"precision is {precision}")
    return values


def _coerce(name: str, value: Any, where: str) -> Any:
    """A profile value checked against the field's type (TOML gives native types)."""
    default = default_of(name)
    expected = type(default) if default is not None else None
    if name == "flavours":
        if not isinstance(value, list) or any(v not in FLAVOURS for v in value):
            raise InputError(f"{where}: give a list drawn from {list(FLAVOURS)}")
        return tuple(value)
    if expected is bool and not isinstance(value, bool):
        raise InputError(f"{where}: give true or false, not {value!r}")
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InputError(f"{where}: give a whole number, not {value!r}")
    if expected is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise InputError(f"{where}: give a number, not {value!r}")
    if expected is str and not isinstance(value, str):
        raise InputError(f"{where}: give a string, not {value!r}")
    return float(value) if expected is float else value


def resolve_settings(profile: str | Path | None = None,
                     overrides: Mapping[str, Any] | None = None) -> ExportSettings:
    """Defaults < ``profile`` (a name or a .toml file) < ``overrides`` (None values ignored)."""
    from edge_smw.export.profiles import resolve_profile

    values: dict[str, Any] = {}
    if profile is not None:
        found = resolve_profile(profile)
        values.update(found.values)
        values["profile"] = str(profile)
    known = _fields()
    for name, value in (overrides or {}).items():
        if name not in known:
            raise InputError(f"unknown export setting {name!r}")
        if value is not None:
            values[name] = value
    return ExportSettings(**values)


def with_values(settings: ExportSettings, **changes: Any) -> ExportSettings:
    return replace(settings, **changes)


# -- the command line ----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per settings field that has a flag, grouped, with its default in the help."""
    groups: dict[str, Any] = {}
    for f in fields(ExportSettings):
        meta = f.metadata
        if not meta.get("flag"):
            continue
        group = groups.get(meta["group"])
        if group is None:
            group = groups[meta["group"]] = parser.add_argument_group(meta["group"])
        default = default_of(f.name)
        shown = meta.get("shown") or (("a profile's, else " if meta.get("profile") else "")
                                      + _show(default))
        kwargs: dict[str, Any] = {"dest": f.name, "default": None,
                                  "help": f"{meta['help']} (default: {shown})"}
        if isinstance(default, bool):
            if meta["negatable"]:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs.update(action="store_const", const=True)
        elif meta.get("repeat"):
            kwargs["action"] = "append"
        elif isinstance(default, int | float) or f.type in ("int | None", "int", "float"):
            kwargs["type"] = float if isinstance(default, float) else int
        if meta.get("choices"):
            kwargs["choices"] = list(meta["choices"])
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        group.add_argument(meta["flag"], **kwargs)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return " and ".join(value) if value else "none"
    return "none" if value is None else str(value)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line set (options left out stay None: not an override)."""
    out: dict[str, Any] = {}
    for f in fields(ExportSettings):
        if not f.metadata.get("flag"):
            continue
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if f.metadata.get("repeat"):
            value = tuple(dict.fromkeys(value))
        elif f.name == "calib_data":
            value = Path(value)
        out[f.name] = value
    return out
