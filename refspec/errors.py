"""refspec's exception types. Every error refspec raises on purpose is a RefspecError; the CLI prints
its message on one line and exits non-zero."""


class RefspecError(Exception):
    """Base class of every error refspec raises on purpose."""


class ModelFileError(RefspecError):
    """The model file is not a GGUF refspec can trust: corrupt, truncated, inconsistent or absurd."""


class UnsupportedModelError(ModelFileError):
    """A well-formed GGUF that uses something refspec does not support (architecture, tensor type, ...)."""


class TokenizerError(RefspecError):
    """The tokenizer described by the GGUF metadata cannot be built, or text cannot be encoded."""


class ContextLengthError(RefspecError):
    """A request needs more positions than the model's context length allows."""


class NumericsError(RefspecError):
    """NaN or infinity where the spec needs finite values (for example in the logits)."""


class DeviceError(RefspecError):
    """The GPU backend cannot be used: no CuPy, no device, or a kernel failed to compile."""


class ModelFetchError(RefspecError):
    """The default model could not be fetched or verified."""


class GoldenFileError(RefspecError):
    """A golden or logits file that `refspec compare` cannot use: wrong format, or not comparable with the other
    file (different token ids, shapes or vocabulary)."""


class BackendError(RefspecError):
    """A backend under test (refspec check-backend) cannot be loaded, or broke the backend protocol."""


class UsageError(RefspecError):
    """Arguments that cannot be honoured (for example a negative token count)."""
