"""Does the exported model judge photos as the torch model does? Measured, not assumed.

The reference is the torch model itself on the run's validation crops; every exported model
runs through ``edge_smw.Runtime`` (onnxruntime CPU, no face detection) on the very same
contract-normalised crops, which also proves the runtime needs nothing but the .onnx file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_smw.artifacts.sessions import SessionSettings, load_session, usable_cores
from edge_smw.contract import PreprocessContract
from edge_smw.export.crops import CropSet
from edge_smw.train.model import ScoreModel

FP32_MAX_ABS_DIFF = 1e-4
# The INT8 gate is a claim about unseen crops: the lower end of the 95% Wilson interval of
# top-1 agreement on the validation split, widened for the models measured to pick the kept
# one (results.Gate.min_agreement), reaches 97% (on 1,490 crops: about 98.2% observed).
INT8_MIN_AGREEMENT = 0.97


def torch_probabilities(model: ScoreModel, crops: CropSet, contract: PreprocessContract, *,
                        batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """The torch model's probabilities: the reference every export is held to."""
    from tqdm.auto import tqdm

    out = []
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(crops), batch_size), desc="parity: torch", unit="batch",
                          disable=not progress, leave=False):
            inputs = torch.from_numpy(crops.inputs(contract, start, start + batch_size))
            out.append(model(inputs).softmax(dim=1).double().numpy())
    return np.concatenate(out)


def runtime_probabilities(path: str | Path, crops: CropSet, contract: PreprocessContract, *,
                          batch_size: int = 32, threads: int | None = None,
                          progress: bool = True, desc: str = "parity") -> np.ndarray:
    """An exported model's probabilities through ``edge_smw.Runtime`` on onnxruntime CPU."""
    from tqdm.auto import tqdm

    from edge_smw.runtime import Runtime

    out = []
    with Runtime(path, backend="onnxruntime-cpu", detect_faces=False, threads=threads,
                 warmup=False) as runtime:
        if runtime.contract != contract:
            from edge_smw.errors import ModelError

            raise ModelError(f"{path} carries a different preprocessing contract than its "
                             "checkpoint: the export is inconsistent; re-export it")
        for start in tqdm(range(0, len(crops), batch_size), desc=desc, unit="batch",
                          disable=not progress, leave=False):
            outputs = runtime.infer(crops.inputs(contract, start, start + batch_size))
            out.append(np.asarray(outputs["probabilities"], dtype=np.float64))
    return np.concatenate(out)


def compare(probs: np.ndarray, reference: np.ndarray, true_levels: np.ndarray | None
            ) -> dict[str, Any]:
    """Top-1 agreement (with its Wilson interval), probability differences, and accuracy /
    MAE against the reference, as a dict (``results.Parity`` is the typed form)."""
    from edge_smw.export.results import Parity

    return Parity.measure(probs, reference, true_levels).to_dict()


def latency(paths: Mapping[str, str | Path], size: int, *, runs: int = 30, warmup: int = 5,
            threads: int | None = None, rounds: int = 1,
            settings: Mapping[str, SessionSettings] | None = None,
            ) -> dict[str, dict[str, Any]]:
    """Batch-1 latency of several models in ONE process, timed in turns as the bench's full
    suite times them (``edge_smw.bench.latency``: a re-warming call, then calls back to back,
    the first model rotating) so a busy machine slows them alike; p50/p90 in milliseconds
    over every run.

    ``rounds`` splits the ``runs * rounds`` timed calls into ``rounds`` consecutive blocks and
    also gives each block's p50 (``round_p50_ms``): on a shared machine one round's ratio
    between two models can be off by a fifth (measured here: 1.51-2.06x for one pair in 42
    rounds of 30 runs), and the spread between rounds shows it. ``settings`` opens the named
    models otherwise (``benchmarks/spinning.py`` times one model with spinning on and off)."""
    from edge_smw.bench.config import load_suite
    from edge_smw.bench.latency import timed_turns

    # As the Runtime and the bench open them: threads spin inside a run and stop when it
    # returns, so no session's pool steals the cores of the next one.
    default = SessionSettings(threads=threads)
    sessions = {name: load_session(path, (settings or {}).get(name, default))
                for name, path in paths.items()}
    feed = {"input": np.random.default_rng(0).standard_normal((1, 3, size, size),
                                                                dtype=np.float32)}
    fns = {name: (lambda x, session=session: session.run(None, x))
           for name, session in sessions.items()}
    for fn in fns.values():
        for _ in range(warmup):
            fn(feed)
    suite = load_suite("full")
    times = timed_turns(fns, [feed], runs * rounds, calls_per_turn=suite.calls_per_turn,
                        rewarm_calls=suite.rewarm_calls)
    out: dict[str, dict[str, Any]] = {}
    for name, every in times.items():
        per_round = [every[k * runs:(k + 1) * runs] for k in range(rounds)]
        out[name] = {"p50_ms": float(np.median(every)),
                     "p90_ms": float(np.percentile(every, 90)), "runs": len(every),
                     "round_p50_ms": [float(np.median(one)) for one in per_round],
                     "threads": threads or usable_cores()}
    return out
