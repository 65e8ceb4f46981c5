"""scratchlm: a complete small-LLM stack written from scratch on PyTorch tensors."""

from scratchlm.errors import (
    ConfigError,
    DataError,
    OutputExistsError,
    ScratchLMError,
    TokenizerError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "OutputExistsError",
    "ScratchLMError",
    "TokenizerError",
    "__version__",
]
