"""Inference on whole recordings: features of every window (``megfm features``)."""

from .features import RecordingFeatures, extract_features

__all__ = ["RecordingFeatures", "extract_features"]
