"""The lean runtime: exported model + preprocessing contract -> scores. No torch."""

from edge_smw.runtime.runtime import FaceScore, Runtime, ScoreResult, resolve_model_path

__all__ = ["FaceScore", "Runtime", "ScoreResult", "resolve_model_path"]
