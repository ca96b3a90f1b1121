"""refspec: a bit-reproducible reference for decoding Q8_0 GGUF models, and self-speculative decoding
whose output is bitwise identical to greedy decoding. See README.md ("Python API") and refspec/SPEC.md.

The public surface is what ``__all__`` names; everything else may change. Most names are imported on first
use (``refspec.load`` imports gguf-py then), so ``import refspec`` stays cheap for the command line.
"""
from __future__ import annotations

import importlib

from refspec.errors import (ContextLengthError, DeviceError, ModelFetchError, ModelFileError, NumericsError,
                            RefspecError, TokenizerError, UnsupportedModelError, UsageError)

__version__ = "0.1.0"

# Imported now, not on first use: importing the submodule refspec.generate (as refspec.speculative does) would
# otherwise bind the name `refspec.generate` to that module instead of the function.
from refspec.generate import GenerationResult, generate  # noqa: E402

# public name -> module that defines it
_LAZY = {
    "load": "refspec.gguf_model",
    "default_model_path": "refspec.default_model",
    "Model": "refspec.model",
    "ModelConfig": "refspec.model",
    "Tokenizer": "refspec.tokenizer",
    "make_backend": "refspec.backends",
    "Transformer": "refspec.forward",
    "speculative_generate": "refspec.speculative",
    "make_drafter": "refspec.speculative",
    "Drafter": "refspec.speculative",
}

__all__ = [
    "__version__", "generate", "GenerationResult", *_LAZY,
    "RefspecError", "ModelFileError", "UnsupportedModelError", "TokenizerError", "ContextLengthError",
    "NumericsError", "DeviceError", "ModelFetchError", "UsageError",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'refspec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
