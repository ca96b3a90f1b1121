"""What a GGUF file holds and what refspec would do with it, from its header alone (no weight is read or
converted): `refspec info` prints this."""
from __future__ import annotations

import os
from collections import Counter

from gguf import Keys

from refspec.errors import ModelFileError, TokenizerError
from refspec.gguf_model import GGUFHeader, check_weights, read_config, read_header
from refspec.tokenizer import Tokenizer, chat_template_of

# each special id `refspec info` shows ("pad" -> pad_id) and the GGUF key that holds it (gguf-py's name)
SPECIAL_ID_KEYS = {"bos": Keys.Tokenizer.BOS_ID, "eos": Keys.Tokenizer.EOS_ID, "eot": Keys.Tokenizer.EOT_ID,
                   "eom": Keys.Tokenizer.EOM_ID, "pad": Keys.Tokenizer.PAD_ID, "unknown": Keys.Tokenizer.UNK_ID}


def describe(path: str | os.PathLike) -> dict:
    """A plain dict (JSON-ready) describing the model file at ``path``. A file refspec cannot read at all
    (corrupt layout) raises ModelFileError; one it can read but would not run says so in ``refspec_would``
    and ``refuse_reason``."""
    header = read_header(path)
    info = {"path": header.name, "name": header.metadata.get("general.name"),
            "architecture": header.metadata.get("general.architecture"),
            "file_bytes": sum(os.path.getsize(f) for f in header.files), "n_tensors": len(header.tensors),
            "tensor_types": tensor_types(header)}
    if len(header.files) > 1:
        info["files"] = len(header.files)  # a split model: file_bytes and n_tensors are its parts' together
    refusal = None
    try:
        config = read_config(header)
        info.update(hyper_parameters(header, config))
        to_convert = check_weights(header, config)
    except ModelFileError as e:
        refusal = _without_path(str(e), header.name)
    info.update(tokenizer_summary(header.metadata))
    if refusal is None and info.get("tokenizer_error"):
        refusal = f"tokenizer: {info['tokenizer_error']}"
    if refusal is not None:
        info["refspec_would"], info["refuse_reason"] = "refuse", refusal
    elif to_convert:
        kinds = ", ".join(f"{n} {t}" if len(to_convert) > 1 else t for t, n in sorted(to_convert.items()))
        info["refspec_would"] = f"convert {sum(to_convert.values())} matrices ({kinds}) to Q8_0 at load"
    else:
        info["refspec_would"] = "load as is (every matrix is Q8_0)"
    return info


def tensor_types(header: GGUFHeader) -> dict[str, int]:
    counts = Counter(t.tensor_type.name for t in header.tensors.values())
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def hyper_parameters(header: GGUFHeader, config) -> dict:
    return {"n_layer": config.n_layer, "n_embd": config.n_embd, "n_ff": config.n_ff, "n_head": config.n_head,
            "n_head_kv": config.n_head_kv, "head_dim": config.head_dim, "n_rot": config.n_rot,
            "rope_base": config.rope_base, "rope": "neox" if config.rope_neox else "normal",
            "rope_scaling": rope_scaling_summary(config.rope_scaling),
            "rms_eps": config.rms_eps, "n_ctx": config.n_ctx, "n_vocab": config.n_vocab,
            "tied_output": "output.weight" not in header.tensors, **hybrid_parameters(config)}


def hybrid_parameters(config) -> dict:
    """qwen35: which layers are Gated DeltaNet, their sizes, the MTP block (nothing for other archs)."""
    if not any(config.recurrent):
        return {}
    return {"recurrent_layers": [i for i in range(config.n_layer) if config.is_recurrent(i)],
            "ssm_d_conv": config.ssm_d_conv, "ssm_d_state": config.ssm_d_state,
            "ssm_n_k_heads": config.ssm_n_k_heads, "ssm_n_v_heads": config.ssm_n_v_heads, "n_nextn": config.n_nextn}


def rope_scaling_summary(scaling) -> str:
    """One line: the scaling type and the values it uses (SPEC.md, "RoPE")."""
    parts = [scaling.kind]
    if scaling.kind != "none":
        parts.append(f"factor {scaling.factor:g}")
    if scaling.kind == "yarn":
        parts.append(f"original context {scaling.n_ctx_orig}")
    if scaling.attn_factor != 1.0:
        parts.append(f"attn_factor {scaling.attn_factor:g}")
    if scaling.freq_factors is not None:
        parts.append(f"rope_freqs {min(scaling.freq_factors):g}..{max(scaling.freq_factors):g}")
    return ", ".join(parts)


def tokenizer_summary(metadata: dict) -> dict:
    """The tokenizer's kind, pre-tokenizer, special ids (as the file names them) and end-of-generation ids
    (as refspec derives them; absent when the tokenizer cannot be built, with the reason)."""
    out = {"tokenizer": metadata.get("tokenizer.ggml.model"), "pre": metadata.get("tokenizer.ggml.pre")}
    for name, key in SPECIAL_ID_KEYS.items():
        out[f"{name}_id"] = metadata.get(key)
    try:
        out["chat_template"] = chat_template_of(metadata) is not None  # False: ChatML
    except TokenizerError:
        out["chat_template"] = False  # (a value refspec refuses: tokenizer_error, below, says which)
    try:
        tok = Tokenizer.from_metadata(metadata)
    except TokenizerError as e:
        out["tokenizer_error"] = str(e)
        return out
    out["add_bos"] = tok.add_bos
    out["eog_ids"] = sorted(tok.eog_ids)
    out["special_texts"] = {str(i): tok.token_text(i) for i in sorted(
        {out[f"{k}_id"] for k in SPECIAL_ID_KEYS if isinstance(out[f"{k}_id"], int) and 0 <= out[f"{k}_id"] < tok.n_vocab}
        | tok.eog_ids)}
    return out


def chat_template(path: str | os.PathLike) -> str | None:
    """The file's chat template source, or None when it has none (refspec uses ChatML then); TokenizerError where
    refspec refuses the file's template, as `refspec generate` does (``chat_template_of`` decides for both)."""
    return chat_template_of(read_header(path).metadata)


def _without_path(message: str, name: str) -> str:
    prefix = f"{name}: "
    return message[len(prefix):] if message.startswith(prefix) else message
