"""refspec: a bit-reproducible reference for decoding Q8_0 GGUF models, and self-speculative decoding
whose output is bitwise identical to greedy decoding. See README.md and refspec/SPEC.md."""

from refspec.errors import RefspecError

__version__ = "0.1.0"
__all__ = ["RefspecError", "__version__"]
