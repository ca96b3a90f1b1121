"""Write a GGUF whose matrices are all Q8_0: what `llama-quantize --allow-requantize IN OUT Q8_0` writes for
the tensors refspec runs, made with gguf-py's reference quantizer.

Each matrix of another type is dequantized to float32 and quantized to Q8_0 with ``gguf.quants`` (the same
conversion ``refspec.gguf_model.load`` does in memory, so loading the written file gives the same bits as
loading the original); Q8_0 matrices, norm weights and biases are copied byte for byte, as llama-quantize
copies a tensor already of the target type. Every metadata key is copied in order; ``general.file_type``
becomes MOSTLY_Q8_0. Only a file refspec would load is converted (the same checks as ``load``).
"""
from __future__ import annotations

import os

from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType

from refspec.errors import ModelFileError
from refspec.gguf_model import MATRIX, _requantize, _wanted_tensors, check_weights, read_config, read_header


def requantize_to_q8_0(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, int]:
    """Writes ``dst`` from ``src`` (see the module docstring); returns how many matrices of each type were
    converted. Raises ModelFileError / UnsupportedModelError for a file refspec would not load."""
    header = read_header(src)
    config = read_config(header)
    converted = check_weights(header, config)
    kinds = _wanted_tensors(config)
    arch = header.metadata["general.architecture"]
    writer = GGUFWriter(os.fspath(dst), arch)
    try:
        _copy_metadata(header, writer)
        for name, tensor in header.tensors.items():
            if kinds[name].kind == MATRIX and tensor.tensor_type != GGMLQuantizationType.Q8_0:
                writer.add_tensor(name, _requantize(header.name, tensor), raw_dtype=GGMLQuantizationType.Q8_0)
            else:
                writer.add_tensor(name, tensor.data, raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except OSError as e:
        raise ModelFileError(f"cannot write {os.fspath(dst)}: {e.strerror or e}") from e
    finally:
        writer.close()
    return dict(converted)


def _copy_metadata(header, writer: GGUFWriter) -> None:
    """Every key in the source's order (the writer adds general.architecture itself), file type Q8_0."""
    for key, field in header.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "general.file_type":
            writer.add_key_value(key, int(LlamaFileType.MOSTLY_Q8_0), GGUFValueType.UINT32)
            continue
        sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY and len(field.types) > 1 else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type)
