"""megfm-hf: a Hugging Face-native foundation model for magnetoencephalography (MEG)."""

from .modeling.configuration_megfm import SENSOR_TYPES, MEGConfig

__version__ = "0.1.0"

__all__ = ["MEGConfig", "SENSOR_TYPES", "__version__"]
