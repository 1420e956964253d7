"""megfm-hf: a Hugging Face-native foundation model for magnetoencephalography (MEG).

Importing the package registers the model with the transformers Auto classes, so
``AutoModel.from_pretrained(folder)`` works without ``trust_remote_code`` where the package is
installed; folders saved by the model also carry the model code for where it is not.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
)

from .modeling.configuration_megfm import SENSOR_TYPES, MEGConfig
from .modeling.modeling_megfm import (
    MEGForMaskedSignalModeling,
    MEGForSequenceClassification,
    MEGMaskedSignalModelingOutput,
    MEGModel,
    MEGModelOutput,
    MEGPreTrainedModel,
    MEGSequenceClassifierOutput,
    compute_signal_mask,
)

__version__ = "0.1.0"

AutoConfig.register(MEGConfig.model_type, MEGConfig, exist_ok=True)
AutoModel.register(MEGConfig, MEGModel, exist_ok=True)
AutoModelForPreTraining.register(MEGConfig, MEGForMaskedSignalModeling, exist_ok=True)
AutoModelForSequenceClassification.register(MEGConfig, MEGForSequenceClassification, exist_ok=True)

__all__ = [
    "SENSOR_TYPES",
    "MEGConfig",
    "MEGForMaskedSignalModeling",
    "MEGForSequenceClassification",
    "MEGMaskedSignalModelingOutput",
    "MEGModel",
    "MEGModelOutput",
    "MEGPreTrainedModel",
    "MEGSequenceClassifierOutput",
    "__version__",
    "compute_signal_mask",
]
