"""refspec's exception types. Every error refspec raises on purpose is a RefspecError; the CLI prints
its message on one line and exits with status 1."""


def one_line(text: str) -> str:
    """``text`` on one printable line: line breaks become spaces and other control characters are escaped.
    Messages may quote untrusted text (a chat template's ``raise_exception``, a key from a model file)."""
    joined = " ".join(part.strip() for part in str(text).splitlines())
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in joined)


class RefspecError(Exception):
    """Base class of every error refspec raises on purpose. Its message is always one line (``one_line``)."""

    def __str__(self) -> str:
        return one_line(super().__str__())


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


class OutputError(RefspecError):
    """A file refspec was asked to write cannot be written (a missing directory, a full disk, no permission)."""
