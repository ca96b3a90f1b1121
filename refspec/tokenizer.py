"""The tokenizer a GGUF describes, reproducing llama.cpp's tokenization of text into ids and of ids into text.

refspec supports byte-level BPE vocabularies (``tokenizer.ggml.model == 'gpt2'``: llama-3, Qwen2/3/3.5, SmolLM2,
DeepSeek, Falcon, ...), SentencePiece vocabularies (``'llama'``: Llama-2, Mistral, TinyLlama, Phi-3), Gemma 4's
BPE (``'gemma4'``) and BERT's WordPiece (``'bert'``). The merging itself is done by HF ``tokenizers``
(``models.BPE``, ``models.WordPiece``); this module only assembles it from the GGUF
metadata the way llama.cpp's ``src/llama-vocab.cpp`` and ``src/unicode.cpp`` do (read in llama-cpp-python
0.3.36's llama.cpp, which passes llama.cpp's own tokenizer test suite: tests/test_llama_vocabs.py). Encoding
``text`` runs:

1. **Special-token split.** Control, unknown and user-defined tokens are cut out of the text, longest token
   text first, each at every occurrence left to right (llama.cpp ``tokenizer_st_partition``). Control and
   unknown tokens are recognised only with ``parse_special=True`` (the default, as llama.cpp's tools use for
   prompts); user-defined tokens always are.
2. **Byte-level BPE** (``_ByteLevelBPE``). Each remaining text piece is split by the regexes llama.cpp picks by
   ``tokenizer.ggml.pre`` (``_PRE_TOKENIZERS`` below), applied one after the other, every match and every gap
   between matches kept as a piece of its own. Each piece's UTF-8 bytes are mapped to GPT-2's printable byte
   alphabet and merged by the ranks in ``tokenizer.ggml.merges`` (lowest rank first, leftmost first among equal
   ranks). For some pre-tokenizers (the llama-3 family, ...) llama.cpp sets ``ignore_merges``: a piece that is
   itself a token is emitted whole. A byte no token covers (``missing_bytes``; SmolLM2 lacks 21 of the 256) is
   dropped, as llama.cpp drops it.
2'. **SentencePiece** (``_SentencePieceBPE``): no pre-tokenizer; spaces become '▁', a space goes in front of the
   text and of every text after a special token (``tokenizer.ggml.add_space_prefix``, default true), and the
   pair that forms the highest-scoring token (``tokenizer.ggml.scores``) merges first; characters that are no
   token become byte tokens ``<0xXX>``.
2''. **Gemma 4** (``_SpaceEscapedBPE``, ``tokenizer.ggml.model = gemma4``): spaces become '▁', the text is cut
   into runs of newlines and runs of other characters, each merged by the ranks of ``tokenizer.ggml.merges``
   over raw characters, with byte fallback; a newline run that is a token is emitted whole; BOS always added.
2'''. **WordPiece** (``_WordPiece``, ``bert``): BERT's normalizer and word split, longest token first;
   [CLS] (llama.cpp's BOS) before and [SEP] after, by default.
3. **BOS/EOS.** ``add_bos`` prepends ``bos_id`` (and ``add_eos`` appends ``end_id``: ``eos_id``, or WordPiece's [SEP]).

Defaults, as llama.cpp decides them:

* ``add_bos``: ``tokenizer.ggml.add_bos_token`` when the file has it. When it is absent, llama.cpp's default is
  True for SentencePiece, and for BPE False except for the pre-tokenizers it marks ``add_bos = true`` (the
  llama-3 family, tekken, chameleon), ``llama_vocab::impl::load``.
* SentencePiece without ``bos_token_id``/``eos_token_id``: ids 1 and 2, llama.cpp's defaults.
* ``tokenizer.ggml.pre`` absent: the ``default`` pre-tokenizer (llama.cpp warns that quality degrades).
* ``eog_ids`` (the ids that end generation), llama.cpp's rule: ``eos_id``, ``eot_id`` and ``eom_id`` (from the
  file's keys), every token whose text is in ``EOG_TEXTS`` (``<|im_end|>``, ``<|endoftext|>``, ``<|eot_id|>``,
  ...), and the FIM pad/repo/file-separator tokens (``tokenizer.ggml.fim_{pad,rep,sep}_token_id``, or found by
  text when those keys are absent: SmolLM2's ``<reponame>`` is one). Tokens found by text are treated as
  control tokens even where the file marks them otherwise, as llama.cpp does.

Decoding is llama.cpp's ``token_to_piece`` concatenated: normal tokens map back from the byte alphabet to bytes
(BPE) or '▁' to spaces (SentencePiece); byte tokens ``<0xXX>`` print their byte; control and unknown tokens print
their text unless ``skip_special``; user-defined tokens always print their text; unused and undefined tokens
print nothing. With ``add_space_prefix`` the first piece loses one leading space, the one encoding put there,
as llama.cpp's detokenize does (``continuation=True`` keeps it: for generated tokens that continue a prompt).
A '▁' written in the text encodes as a space would, so it decodes as a space (SentencePiece, Gemma 4; llama.cpp
alike). Spaces are never cleaned up (llama.cpp's detokenize drops the space in " ?", " ," ... for some pre-tokenizers;
refspec's ``decode(encode(s)) == s`` holds there too). The bytes are decoded as UTF-8 with U+FFFD for invalid
sequences; ``StreamDecoder`` yields the same text one token at a time.

Where refspec deliberately differs from llama.cpp (none of it matters for a well-formed GGUF of a supported
model): missing BPE ``bos_token_id``/``eos_token_id`` stay None (llama.cpp substitutes id 11); out of range
special ids (llama.cpp warns and keeps its default), malformed merges and merges whose pieces are not tokens
raise ``TokenizerError``; llama.cpp's per-model token-attribute workarounds, chosen by model name (phi-3's
right-stripping of special tokens, jina, gpt-oss), are not reproduced; where several FIM tokens match by text
all of them are EOG (llama.cpp keeps whichever its hash map yields first). Unicode categories (``\\p{L}``, ``\\p{N}``, ``\\s``) come from Oniguruma's tables inside
``tokenizers``; llama.cpp carries its own tables, so code points whose category changed between Unicode versions
may split differently. SentencePiece: llama.cpp breaks a tie between two different tokens of equal score by
position, refspec by id (they differ only where such candidate pairs overlap).
"""
from __future__ import annotations

import codecs
import operator
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tokenizers import Regex, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

from refspec import chat_template, checks
from refspec.chat_template import CHATML_TEMPLATE  # noqa: F401 (part of this module's interface)
from refspec.errors import TokenizerError, UsageError
from refspec.metadata import MetadataReader

# GGUF token types (gguf.TokenType)
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# --- pre-tokenizer regexes, as in llama.cpp's llm_tokenizer_bpe (src/llama-vocab.cpp) ------------------------
# llama.cpp writes the HF tokenizer.json regexes without (?i:...) and possessive quantifiers; these are its forms.
# Where llama.cpp runs std::regex, '$' is the end of the piece being split: Oniguruma's '\z' (its '$' is a line end).
# Before std::regex runs, llama.cpp turns every non-ASCII whitespace character into '\v' (so that '\s' matches
# it): a character class written with non-ASCII ranges then never matches U+2028, U+3000 and the like, which
# those ranges contain. Those classes carry '&&[^\s]' here.
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")  # llama-3's regex with single digits
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")  # qwen2's, with combining marks kept in words
# Upper/lower case approximated with ASCII classes under a letter look-ahead (llama.cpp's form of \p{Lu}..\p{Lo})
_UPPER, _LOWER = r"((?=[\p{L}])([^a-z]))", r"((?=[\p{L}])([^A-Z]))"
_GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
          rf"{_CONTRACTIONS}?|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*|\p{{N}}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_UPPER_M, _LOWER_M = r"((?=[\p{L}\p{M}])([^a-z]))", r"((?=[\p{L}\p{M}])([^A-Z]))"
_GRANITE_MULTI = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER_M}*{_LOWER_M}+{_CONTRACTIONS}?|[^\r\n\p{{L}}\p{{N}}]?{_UPPER_M}+"
                  rf"{_LOWER_M}*{_CONTRACTIONS}?|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CASED = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_YOUTU = (r"[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+",
          rf"[^\r\n\p{{L}}\p{{N}}]?{_CASED[0]}*{_CASED[1]}+{_CONTRACTIONS}?|[^\r\n\p{{L}}\p{{N}}]?{_CASED[0]}+"
          rf"{_CASED[1]}*{_CONTRACTIONS}?|\p{{N}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEEPSEEK3 = (r"[!" + '"' + r"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
              r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEEPSEEK_LETTERS = "A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃"  # deepseek-llm's list of cased-letter ranges
_CJK_HANGUL = r"[一-龥ࠀ-一가-퟿&&[^\s]]+"
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
_TINY_AYA = (rf"[^\r\n\p{{L}}\p{{N}}]?{_CASED[0]}*{_CASED[1]}+{_CONTRACTIONS}?|[^\r\n\p{{L}}\p{{N}}]?{_CASED[0]}+"
             rf"{_CASED[1]}*{_CONTRACTIONS}?|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Kimi-K2: llama.cpp's hand-written splitter (unicode_regex_split_custom_kimi_k2) in regex form: Han characters
# (its own list of CJK blocks) on their own; words of other letters (no marks), contractions any case.
_HAN = "\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f" \
       "\U0002b820-\U0002ceaf\U0002ceb0-\U0002ebef\uf900-\ufaff\U0002f800-\U0002fa1f"
_KIMI_K2 = (rf"[{_HAN}]+|[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}&&[^{_HAN}]]+{_CONTRACTIONS}?|\p{{N}}{{1,3}}"
            r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Marks a step that is llama.cpp's hand-written digit grouping rather than a regex (_DigitGroups).
_DIGIT_GROUPS = r"\p{AFMoE_digits}"

_REGEXES = {  # llama.cpp's LLAMA_VOCAB_PRE_TYPE_* -> regexes applied in order
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "gpt2": (_GPT2,),
    "llama3": (_LLAMA3,),
    "jais2": (_LLAMA3.replace(r"|\s+(?!\S)|\s+", "") + "".join(rf"|\s{{{n}}}(?!\S)" for n in
              (512, 256, 128, 64, 32, 16, 8, 4)) + r"|\s{1,2}(?!\S)|\s{1}",),
    "qwen2": (_QWEN2,),
    "qwen35": (_QWEN35,),
    "starcoder": (r"\p{N}", _GPT2),  # gpt-2's regex after isolating every digit
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"),
    "deepseek-llm": (r"[\r\n]", rf"\s?[{_DEEPSEEK_LETTERS}]+", r"\s?[!-/:-~！-／：-～‘-‟　-。&&[^\s]]+", r"\s+\z",
                     _CJK_HANGUL, r"\p{N}+"),
    "deepseek-coder": (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_HANGUL, r"\p{N}"),
    "deepseek3": (r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+", _DEEPSEEK3),
    "spark2_5": (r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+", _DEEPSEEK3.replace(r"+[\r\n]*|\s*[\r\n]+", r"+|[\r\n]"),
                 r"\p{N}"),
    "youtu": _YOUTU,
    "bloom": (_BLOOM,),
    "viking": (_BLOOM, r"\p{N}"),
    "tekken": (_TEKKEN,),
    "chameleon": (r"<sentinel:[0-9]+>", r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", r"([\t\n]|    |  )", r"\p{N}",
                  r"[\p{P}!-/:-@\[-`{-~]", _GPT2),
    "gpt4o": (_GPT4O,),
    "granite-multi": (_GRANITE_MULTI,),
    "bailingmoe": (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",),
    "seed-coder": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
                   r"|\s+(?!\S)|\s+",),
    "ufakzeka": (_QWEN2[len(_CONTRACTIONS) + 1:],),  # qwen2's without the English contractions
    "laguna": (r"[^\n]+|[\n]+", _QWEN2),
    "exaone-moe": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",),
    "minicpm5": (r"\p{N}{1,3}", _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}+")),
    "tiny-aya": (_DIGIT_GROUPS, _TINY_AYA),
    "afmoe": (_DIGIT_GROUPS, r"[一-鿿㐀-䶿豈-﫿぀-ゟ゠-ヿ･-ﾟ⼀-⿟เ-๿຀-໿ក-៿က-႟ꩠ-ꩿꧠ-꧿가-힯ᄀ-ᇿ]+", _DEEPSEEK3),
    "kimi-k2": (_KIMI_K2,),
    "superbpe": (r"\p{N}+", r"(?=(\d{3})+(?!\d))"),
}


@dataclass(frozen=True)
class _PreTokenizer:
    regexes: str  # key of _REGEXES
    ignore_merges: bool = False  # a piece that is a whole token is emitted without merging
    add_bos: bool = False  # llama.cpp's add_bos default when the GGUF has no tokenizer.ggml.add_bos_token


def _named(regexes: str, names: str, **flags) -> dict[str, _PreTokenizer]:
    return {name: _PreTokenizer(regexes, **flags) for name in names.split()}


# tokenizer.ggml.pre -> pre-tokenizer; the names, groupings and flags are llama.cpp's (llama_vocab::impl::load).
# gemma4, granite-embed-multi-311m and sarvam-moe are _SPACE_ESCAPED below. Left out: whitespace, which llama.cpp
# tokenizes in a session of its own. (jina-v1-en, jina-v2-code and roberta-bpe set llama.cpp's add_sep, which its
# BPE tokenizer never reads.)
_PRE_TOKENIZERS = {
    "default": _PreTokenizer("default"),
    **_named("gpt2", "gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert mpt "
                     "olmo jais exaone4 trillion granite-docling jina-v1-en jina-v2-code roberta-bpe"),
    **_named("llama3", "llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano",
             ignore_merges=True, add_bos=True),
    **_named("llama3", "dbrx smaug-bpe chatglm-bpe"),
    **_named("llama3", "glm4 glm5", ignore_merges=True),
    **_named("jais2", "jais-2"),
    **_named("qwen2", "qwen2 deepseek-r1-qwen kormo f2llmv2 stablelm2 megrez hunyuan solar-open"),
    **_named("qwen35", "qwen35"),
    **_named("starcoder", "smollm starcoder refact command-r codeshell exaone minerva-7b mellum2"),
    **_named("falcon", "falcon"),
    **_named("deepseek-llm", "deepseek-llm"),
    **_named("deepseek-coder", "deepseek-coder"),
    **_named("deepseek3", "deepseek-v3 hunyuan-dense joyai-llm hy_v4"),
    **_named("spark2_5", "spark2_5"),
    **_named("youtu", "youtu", ignore_merges=True),
    **_named("bloom", "poro-chat bloom gpt3-finnish"),
    **_named("viking", "viking"),
    **_named("tekken", "tekken", ignore_merges=True, add_bos=True),
    **_named("chameleon", "chameleon", add_bos=True),
    **_named("gpt4o", "gpt-4o llama4 kanana2 talkie minimax-m2"),
    **_named("granite-multi", "granite-embed-multi-97m", ignore_merges=True),
    **_named("bailingmoe", "bailingmoe bailingmoe2 llada-moe"),
    **_named("seed-coder", "seed-coder"),
    **_named("ufakzeka", "ufakzeka"),
    **_named("qwen2", "grok-2"),
    **_named("laguna", "laguna"),
    **_named("exaone-moe", "exaone-moe"),
    **_named("minicpm5", "minicpm5", ignore_merges=True),
    **_named("tiny-aya", "tiny_aya cohere2moe"),
    **_named("afmoe", "afmoe"),
    **_named("kimi-k2", "kimi-k2"),
    **_named("superbpe", "superbpe"),
}
# Pre-tokenizers of BPE over raw characters with spaces written '▁' (_SpaceEscapedBPE) -> whether a run of
# newlines that is a token is emitted whole (llama.cpp's LLAMA_VOCAB_PRE_TYPE_GEMMA4; it also forces add_bos).
_SPACE_ESCAPED = {"gemma4": True, "granite-embed-multi-311m": True, "sarvam-moe": False}
SUPPORTED_PRE_TOKENIZERS = tuple(sorted([*_PRE_TOKENIZERS, *_SPACE_ESCAPED]))

# --- special tokens llama.cpp recognises by their text (llama_vocab::impl::load) -----------------------------
# (llama.cpp also looks for an EOT token by text; its candidates are all in EOG_TEXTS, so they add nothing here.)
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
})
_FIM_TEXTS = {  # FIM slot -> texts; pad, rep and sep also end generation
    "pre": {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
            "<|code_prefix|>", "<|prefix|>"},
    "suf": {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
            "<|code_suffix|>", "<|suffix|>"},
    "mid": {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
            "<|code_middle|>", "<|middle|>"},
    "pad": {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"},
    "rep": {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"},
    "sep": {"<|file_sep|>"},
}


# --- GPT-2's byte alphabet: every byte as a printable character ----------------------------------------------
def byte_alphabet() -> list[str]:
    """``alphabet[b]`` is the character byte-level BPE writes for byte b: printable Latin-1 bytes stand for
    themselves, the other 68 take the code points 256, 257, ... in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    alphabet, n_moved = [""] * 256, 0
    for b in range(256):
        if b in printable:
            alphabet[b] = chr(b)
        else:
            alphabet[b] = chr(256 + n_moved)
            n_moved += 1
    return alphabet


_BYTE_ALPHABET = byte_alphabet()
_CHAR_TO_BYTE = {c: b for b, c in enumerate(_BYTE_ALPHABET)}


def _byte_level_to_bytes(text: str) -> bytes:
    """Undo the byte alphabet. A character outside it (only in a malformed vocabulary) is kept as its UTF-8
    bytes, where llama.cpp would print an ``[UNK_BYTE_0x..]`` marker."""
    out = bytearray()
    for c in text:
        b = _CHAR_TO_BYTE.get(c)
        out += c.encode() if b is None else bytes((b,))
    return bytes(out)


def _byte_token_value(text: str) -> bytes:
    """The byte a byte token ``<0xXX>`` stands for; a byte-typed token of another form prints nothing (llama.cpp
    would parse whatever follows '<0x')."""
    if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
        try:
            return bytes((int(text[3:5], 16),))
        except ValueError:
            pass
    return b""


# --- reading metadata (types and ranges checked by refspec.metadata) ------------------------------------------
def _read_vocab(md: MetadataReader) -> tuple[list[str], dict[str, int]]:
    """The token texts by id, and the id of each text."""
    tokens = md.strings("tokenizer.ggml.tokens")
    if not tokens:
        raise md.fail("tokenizer.ggml.tokens is empty")
    vocab: dict[str, int] = {}
    for i, text in enumerate(tokens):
        if not text:  # llama.cpp renames empty tokens the same way
            text = tokens[i] = f"[EMPTY_{i}]"
        if text in vocab:
            raise TokenizerError(f"duplicate token in vocabulary: {text!r} has ids {vocab[text]} and {i}")
        vocab[text] = i
    return tokens, vocab


def _read_token_types(md: MetadataReader, n_vocab: int) -> list[int]:
    """One GGUF token type (0 undefined .. 6 byte) per token; all normal when the key is absent."""
    types = md.integers("tokenizer.ggml.token_type", None, length=n_vocab, lo=0, hi=TOKEN_BYTE)
    return [TOKEN_NORMAL] * n_vocab if types is None else types


def _read_pre(md: MetadataReader) -> str:
    pre = md.string("tokenizer.ggml.pre", None) or "default"
    if pre not in SUPPORTED_PRE_TOKENIZERS:
        raise TokenizerError(f"unknown pre-tokenizer {pre!r} (tokenizer.ggml.pre); "
                             f"supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)}")
    return pre


def _default_ids(ids: dict[str, int | None], n_vocab: int, **defaults: int) -> None:
    """Fill special ids the file does not give with llama.cpp's defaults for the vocabulary type (where they
    are inside the vocabulary; llama.cpp disables them otherwise)."""
    for name, default in defaults.items():
        if ids[name] is None and default < n_vocab:
            ids[name] = default


def _id_or(token_id: int | None, default: int, n_vocab: int, what: str) -> int:
    if token_id is None:
        if default >= n_vocab:
            raise TokenizerError(f"no {what} token id, and llama.cpp's default {default} is outside the vocabulary")
        token_id = default
    return token_id


def _read_scores(md: MetadataReader, n_vocab: int) -> list[float]:
    """One score per token (SentencePiece merges the pair whose token scores highest); all 0 when absent, as
    llama.cpp reads a file without scores."""
    scores = md.numbers("tokenizer.ggml.scores", None, length=n_vocab)
    return [0.0] * n_vocab if scores is None else scores


def _read_merges(md: MetadataReader) -> list[tuple[str, str]]:
    merges = md.strings("tokenizer.ggml.merges", None)
    if merges is None:
        raise TokenizerError("tokenizer.ggml.merges is missing (a 'gpt2' tokenizer needs its BPE merges)")
    pairs = []
    for rank, merge in enumerate(merges):
        split = merge.find(" ", 1)  # as llama.cpp: a piece may start with ' '
        if split < 0:
            raise TokenizerError(f"tokenizer.ggml.merges[{rank}] = {merge!r} is not two pieces joined by a space")
        pairs.append((merge[:split], merge[split + 1:]))
    return pairs


_SPECIAL_ID_NAMES = ("bos", "eos", "eot", "eom", "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")


def _special_tokens(vocab: dict[str, int], types: list[int], ids: dict[str, int | None]):
    """(control ids, end-of-generation ids), by llama.cpp's rules. ``ids`` holds the special ids the GGUF's keys
    name (bos, eos, eot, eom, fim_*), None where a key is absent. llama.cpp also finds some special tokens by
    their text; those become control tokens whatever their type in the file."""
    def ids_of(texts):
        return {vocab[t] for t in texts if t in vocab}

    found_by_text = ids_of(EOG_TEXTS)
    eom_id = ids["eom"] if ids["eom"] is not None else vocab.get("<|eom_id|>")
    fim_eog: set[int] = set()
    for slot, texts in _FIM_TEXTS.items():
        key_id = ids[f"fim_{slot}"]
        if key_id is None:
            found_by_text |= ids_of(texts)
        if slot in ("pad", "rep", "sep"):  # these end generation too
            fim_eog |= ids_of(texts) if key_id is None else {key_id}
    control = found_by_text | {i for i, t in enumerate(types) if t in (TOKEN_CONTROL, TOKEN_UNKNOWN)}
    eog = {i for i in (ids["eos"], ids["eot"], eom_id) if i is not None} | ids_of(EOG_TEXTS) | fim_eog
    return frozenset(control), frozenset(eog)


def _special_ids(md: MetadataReader, model: str | None, n_vocab: int) -> dict[str, int | None]:
    """The special ids the GGUF's keys name (None where absent), with llama.cpp's defaults for the vocabulary
    type: BOS 1 and EOS 2 for SentencePiece, BOS 101 ([CLS]) for WordPiece."""
    ids = {name: md.token_id(f"tokenizer.ggml.{name}_token_id", n_vocab) for name in _SPECIAL_ID_NAMES}
    if model == "llama":
        _default_ids(ids, n_vocab, bos=1, eos=2)
    elif model == "bert":
        _default_ids(ids, n_vocab, bos=101)
    return ids


def end_of_generation_ids(metadata: Mapping) -> frozenset[int]:
    """The end-of-generation ids ``Tokenizer.from_metadata(metadata).eog_ids`` holds, without building the BPE
    (so ``generate()`` can stop where the model's tokenizer would); empty when the metadata has no vocabulary."""
    if metadata.get("tokenizer.ggml.tokens") is None:
        return frozenset()
    md = MetadataReader(metadata, error=TokenizerError)
    tokens, vocab = _read_vocab(md)
    types = _read_token_types(md, len(tokens))
    ids = _special_ids(md, md.string("tokenizer.ggml.model", None), len(tokens))
    return _special_tokens(vocab, types, ids)[1]


def chat_template_of(metadata: Mapping) -> str | None:
    """The chat template a GGUF's metadata gives (``tokenizer.chat_template``), or None where the file has none,
    the key absent or its text empty: refspec then uses ChatML (``CHATML_TEMPLATE``), as llama.cpp does. A value
    that is not a string is a TokenizerError. The one place this is decided: ``refspec generate --chat`` (through
    ``Tokenizer``) and ``refspec info --template`` both ask here, so they cannot disagree."""
    return MetadataReader(metadata, error=TokenizerError).string("tokenizer.chat_template", None) or None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# --- text -> ids for one piece of text: the two kinds of vocabulary ---------------------------------------------
class _DigitGroups:
    """llama.cpp's hand-written digit split of afmoe, tiny_aya and cohere2moe (unicode.cpp,
    unicode_regex_split_custom_afmoe), as an HF pre-tokenizer step: each run of numbers (Unicode category N) is
    cut into groups of three counted from its end, and the text before a run stays glued to the run's first
    group (the next regex step separates them)."""

    def pre_tokenize(self, pretok) -> None:
        pretok.split(self._split)

    @staticmethod
    def _split(_, normalized):
        text, pieces, start, pos = str(normalized), [], 0, 0

        def cut(end: int) -> None:
            nonlocal start
            if end > start:
                pieces.append(normalized[start:end])
                start = end

        while pos < len(text):
            if unicodedata.category(text[pos])[0] != "N":
                pos += 1
                continue
            run = pos
            while pos < len(text) and unicodedata.category(text[pos])[0] == "N":
                pos += 1
            first = (pos - run) % 3 or 3
            for end in range(run + first, pos + 1, 3):
                cut(end)
        cut(len(text))
        return pieces


class _ByteLevelBPE:
    """``tokenizer.ggml.model = gpt2``: the pre-tokenizer's regexes, GPT-2's byte alphabet, then BPE merges by
    rank (HF ``models.BPE``)."""

    escaped_spaces = False  # normal tokens are written in GPT-2's byte alphabet

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], pre: _PreTokenizer):
        self._splitter = pre_tokenizers.Sequence([
            pre_tokenizers.PreTokenizer.custom(_DigitGroups()) if r == _DIGIT_GROUPS
            else pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _REGEXES[pre.regexes]])
        try:
            bpe = models.BPE(vocab, merges, ignore_merges=pre.ignore_merges)
        except Exception as exc:  # tokenizers raises a bare Exception for merges whose pieces are not tokens
            raise TokenizerError(f"BPE merges do not fit the vocabulary: {_one_line(exc)}") from None
        self._hf = _HFTokenizer(bpe)
        self._hf.pre_tokenizer = pre_tokenizers.Sequence(
            [self._splitter, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        # bytes no token covers: encode() drops them, as llama.cpp does (SmolLM2 lacks 21 of the 256)
        self.missing_bytes = frozenset(b for b, c in enumerate(_BYTE_ALPHABET) if c not in vocab)

    def encode(self, text: str, after_special: bool) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def pre_tokenize(self, text: str) -> list[str]:
        return [piece for piece, _ in self._splitter.pre_tokenize_str(text)]


class _SentencePieceBPE:
    """``tokenizer.ggml.model = llama``, as llama.cpp's llm_tokenizer_spm_session tokenizes it: spaces become
    '▁' (U+2581), a space is put in front of the text and of every text that follows a special token
    (``add_space_prefix``, the default), and then the whole text, with no pre-tokenizer, is merged from single
    characters: again and again the adjacent pair whose concatenation is a token of the highest score (the
    leftmost among equals) becomes one symbol. A character that is no token becomes its UTF-8 bytes' tokens
    ``<0xXX>`` (byte fallback).

    That is BPE whose merges are all the splits of every token into two tokens, ranked by the merged token's
    score: HF ``models.BPE`` with ``byte_fallback``. Where llama.cpp breaks a tie between two different tokens
    of equal score by position, this ranks them by id; the two differ only if such pairs overlap."""

    escaped_spaces = True  # normal tokens write spaces as '▁'

    def __init__(self, vocab: dict[str, int], scores: list[float], add_space_prefix: bool):
        self._add_space_prefix = add_space_prefix
        self._hf = _HFTokenizer(models.BPE(vocab, _merges_from_scores(vocab, scores), byte_fallback=True))
        self.missing_bytes = frozenset(b for b in range(256) if f"<0x{b:02X}>" not in vocab)
        self._vocab = vocab

    def encode(self, text: str, after_special: bool) -> list[int]:
        if self._add_space_prefix and after_special:
            text = " " + text
        text = text.replace(" ", "\u2581")
        _check_byte_fallback(text, self._vocab, self.missing_bytes)
        return self._hf.encode(text, add_special_tokens=False).ids

    def pre_tokenize(self, text: str) -> list[str]:
        return [(" " * self._add_space_prefix + text).replace(" ", "\u2581")] if text else []


class _SpaceEscapedBPE:
    """Gemma 4's tokenizer (``tokenizer.ggml.model = gemma4``; pre-tokenizers ``gemma4``, ``sarvam-moe``) as
    llama.cpp runs it: spaces become '▁', the text is cut only into runs of newlines and runs of anything else,
    and each run is merged by the ranks in ``tokenizer.ggml.merges`` over its characters (no byte alphabet);
    what is left that is no token becomes byte tokens ``<0xXX>``. For gemma4 a run of newlines that is itself a
    token is emitted whole."""

    escaped_spaces = True

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], whole_newlines: bool):
        self._splitter = pre_tokenizers.Split(Regex(r"[^\n]+|[\n]+"), behavior="isolated")
        try:
            self._hf = _HFTokenizer(models.BPE(vocab, merges, byte_fallback=True))
        except Exception as exc:  # tokenizers raises a bare Exception for merges whose pieces are not tokens
            raise TokenizerError(f"BPE merges do not fit the vocabulary: {_one_line(exc)}") from None
        self._vocab = vocab
        self._whole_newlines = whole_newlines
        self.missing_bytes = frozenset(b for b in range(256) if f"<0x{b:02X}>" not in vocab)

    def encode(self, text: str, after_special: bool) -> list[int]:
        ids = []
        for piece in self.pre_tokenize(text):
            if self._whole_newlines and piece[0] == "\n" and piece in self._vocab:
                ids.append(self._vocab[piece])
            else:
                _check_byte_fallback(piece, self._vocab, self.missing_bytes)
                ids.extend(self._hf.encode(piece, add_special_tokens=False).ids)
        return ids

    def pre_tokenize(self, text: str) -> list[str]:
        return [piece for piece, _ in self._splitter.pre_tokenize_str(text.replace(" ", "\u2581"))]


class _WordPiece:
    """BERT's WordPiece (``tokenizer.ggml.model = bert``), as llama.cpp's llm_tokenizer_wpm_session: the text is
    lower-cased and stripped of accents (NFD, marks dropped; ``tokenizer.ggml.normalizer.lowercase`` and
    ``strip_accents``, both default true), control characters dropped, cut at whitespace and around every
    punctuation mark and CJK ideograph; each word is then matched greedily, longest token first. GGUF writes a
    word-initial token with a leading '▁' and a continuation without BERT's '##'; HF ``models.WordPiece`` gets
    them back in BERT's form. A word no tokens cover becomes the unknown token."""

    escaped_spaces = True  # a word-initial token prints with its space

    def __init__(self, tokens: list[str], types: list[int], unk_id: int, lowercase: bool, strip_accents: bool):
        vocab: dict[str, int] = {}
        for i, (text, kind) in enumerate(zip(tokens, types)):
            key = text if kind == TOKEN_CONTROL else text[1:] if text.startswith("\u2581") else "##" + text
            if key and key not in vocab:
                vocab[key] = i
        unk = next((k for k, i in vocab.items() if i == unk_id), None)
        if unk is None:
            vocab[unk := tokens[unk_id]] = unk_id
        self._hf = _HFTokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=1 << 30))
        self._hf.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                         strip_accents=strip_accents, lowercase=lowercase)
        self._hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self.missing_bytes = frozenset()

    def encode(self, text: str, after_special: bool) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def pre_tokenize(self, text: str) -> list[str]:
        normalized = self._hf.normalizer.normalize_str(text)
        return [word for word, _ in self._hf.pre_tokenizer.pre_tokenize_str(normalized)]


def _check_byte_fallback(text: str, vocab: dict[str, int], missing_bytes: frozenset[int]) -> None:
    """llama.cpp fails on a character that needs a byte token the vocabulary lacks; so does refspec."""
    if not missing_bytes:
        return
    for c in set(text):
        if c not in vocab:
            missing = [b for b in c.encode() if b in missing_bytes]
            if missing:
                raise TokenizerError(f"cannot encode {c!r}: the vocabulary has no byte token <0x{missing[0]:02X}>")


def _merges_from_scores(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """Every split of a token into two tokens, highest-scoring merged token first (ties: lower id first)."""
    ranked = []
    for text, token_id in vocab.items():
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[token_id], token_id, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


# --- the tokenizer --------------------------------------------------------------------------------------------
class Tokenizer:
    """A GGUF's tokenizer (byte-level BPE or SentencePiece); build it with ``Tokenizer.from_metadata``. See the
    module docstring for what each step reproduces."""

    def __init__(self, *, tokens: list[str], token_types: list[int], engine, model: str, pre: str,
                 bos_id: int | None, eos_id: int | None, end_id: int | None, eog_ids: frozenset[int],
                 control_ids: frozenset[int], add_bos: bool, add_eos: bool, add_space_prefix: bool,
                 chat_template: str | None):
        self.n_vocab = len(tokens)
        self.model = model
        self.pre = pre
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.end_id = end_id  # what add_eos appends: eos_id, or WordPiece's SEP (llama.cpp's add_sep)
        self.eog_ids = eog_ids
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.add_space_prefix = add_space_prefix
        self.chat_template = chat_template
        self.missing_bytes = engine.missing_bytes
        self._engine = engine
        self._tokens = tokens
        self._types = token_types
        self._control_ids = control_ids  # control or unknown: recognised in text only with parse_special
        # split-out tokens, longest text first as llama.cpp's cache_special_tokens (ties by id, to be stable)
        self._special_ids = sorted(
            (i for i, t in enumerate(token_types) if i in control_ids or t == TOKEN_USER_DEFINED),
            key=lambda i: (-len(tokens[i]), i))
        self._pieces: list[bytes | None] = [None] * self.n_vocab  # token_to_piece, filled on first use

    @classmethod
    def from_metadata(cls, metadata: Mapping) -> Tokenizer:
        """Build from a dict of GGUF ``tokenizer.*`` keys holding plain Python values."""
        md = MetadataReader(metadata, error=TokenizerError)
        model = md.string("tokenizer.ggml.model", None)
        if model not in ("gpt2", "llama", "gemma4", "bert"):
            raise TokenizerError(f"unsupported tokenizer model {model!r}: refspec supports byte-level BPE ('gpt2'), "
                                 "SentencePiece ('llama'), Gemma 4's BPE ('gemma4') and WordPiece ('bert')")
        tokens, vocab = _read_vocab(md)
        n_vocab = len(tokens)
        types = _read_token_types(md, n_vocab)
        ids = _special_ids(md, model, n_vocab)
        add_space_prefix = md.boolean("tokenizer.ggml.add_space_prefix", model == "llama")
        add_eos_default = False
        end_id = ids["eos"]  # what add_eos appends
        if model == "llama":
            pre = "default"  # llama.cpp gives SentencePiece vocabularies no pre-tokenizer
            end_id = ids["eos"]
            engine = _SentencePieceBPE(vocab, _read_scores(md, n_vocab), add_space_prefix)
            add_bos_default = True
        elif model == "bert":
            pre = "default"
            lowercase = md.boolean("tokenizer.ggml.normalizer.lowercase", True)
            engine = _WordPiece(tokens, types, _id_or(md.token_id("tokenizer.ggml.unknown_token_id", n_vocab), 100,
                                                      n_vocab, "unknown"), lowercase,
                                md.boolean("tokenizer.ggml.normalizer.strip_accents", lowercase))
            end_id = _id_or(md.token_id("tokenizer.ggml.seperator_token_id", n_vocab), 102, n_vocab, "separator")
            add_bos_default = add_eos_default = True  # llama.cpp puts [CLS] before and [SEP] after
        elif model == "gemma4" or _read_pre(md) in _SPACE_ESCAPED:
            pre = "gemma4" if model == "gemma4" else _read_pre(md)  # llama.cpp's choice for model gemma4
            engine = _SpaceEscapedBPE(vocab, _read_merges(md), whole_newlines=_SPACE_ESCAPED[pre])
            add_bos_default = False
        else:
            pre = _read_pre(md)
            engine = _ByteLevelBPE(vocab, _read_merges(md), _PRE_TOKENIZERS[pre])
            add_bos_default = _PRE_TOKENIZERS[pre].add_bos
        control_ids, eog_ids = _special_tokens(vocab, types, ids)

        add_bos = md.boolean("tokenizer.ggml.add_bos_token", add_bos_default)
        add_bos = add_bos or _SPACE_ESCAPED.get(pre, False)  # llama.cpp forces BOS on for gemma4
        add_eos = md.boolean("tokenizer.ggml.add_eos_token", add_eos_default)
        for flag, name, token_id in ((add_bos, "bos", ids["bos"]), (add_eos, "eos", end_id)):
            if flag and token_id is None:
                raise TokenizerError(f"tokenizer.ggml.add_{name}_token is true but {name}_token_id is not set")
        return cls(tokens=tokens, token_types=types, engine=engine, model=model, pre=pre,
                   bos_id=ids["bos"], eos_id=ids["eos"], end_id=end_id, eog_ids=eog_ids, control_ids=control_ids,
                   add_bos=add_bos, add_eos=add_eos, add_space_prefix=add_space_prefix,
                   chat_template=chat_template_of(metadata))

    # --- text -> ids ------------------------------------------------------------------------------------------
    def encode(self, text: str, *, add_bos: bool | None = None, add_eos: bool | None = None,
               parse_special: bool = True) -> list[int]:
        """Token ids of ``text``. ``add_bos``/``add_eos`` None: the GGUF's choice (``self.add_bos``/``add_eos``).
        ``parse_special``: recognise control tokens written in the text (``"<|im_start|>"``). A byte of the text's
        UTF-8 that no token covers (``self.missing_bytes``) is dropped by byte-level BPE, as llama.cpp drops it;
        SentencePiece raises TokenizerError, where llama.cpp fails."""
        if not isinstance(text, str):
            raise UsageError(f"encode takes text (str), not {type(text).__name__}; decode bytes first")
        for name, value in (("add_bos", add_bos), ("add_eos", add_eos)):
            if value is not None:
                checks.flag(name, value)
        checks.flag("parse_special", parse_special)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TokenizerError(f"text is not valid Unicode: lone surrogate at index {exc.start}") from None
        ids = []
        if self.add_bos if add_bos is None else add_bos:
            ids.append(self._required_id(self.bos_id, "bos"))
        after_special = True  # SentencePiece puts a space in front of the text and of text after a special token
        for piece in self._split_special(text, parse_special):
            if isinstance(piece, int):
                ids.append(piece)
            else:
                ids.extend(self._engine.encode(piece, after_special))
            after_special = isinstance(piece, int)
        if self.add_eos if add_eos is None else add_eos:
            ids.append(self._required_id(self.end_id, "eos"))
        return ids

    def pre_tokenize(self, text: str) -> list[str]:
        """The pieces the pre-tokenizer cuts plain ``text`` into, before BPE (no special-token split). A
        SentencePiece vocabulary has no pre-tokenizer: one piece, spaces written '▁'."""
        return self._engine.pre_tokenize(text)

    def _split_special(self, text: str, parse_special: bool) -> list[str | int]:
        """``text`` as non-empty text pieces and special-token ids, cut as llama.cpp's tokenizer_st_partition."""
        pieces: list[str | int] = [text] if text else []
        for token_id in self._special_ids:
            if not parse_special and token_id in self._control_ids:
                continue
            needle = self._tokens[token_id]
            cut: list[str | int] = []
            for piece in pieces:
                if isinstance(piece, int) or needle not in piece:
                    cut.append(piece)
                    continue
                for k, part in enumerate(piece.split(needle)):
                    if k:
                        cut.append(token_id)
                    if part:
                        cut.append(part)
            pieces = cut
        return pieces

    @staticmethod
    def _required_id(token_id: int | None, name: str) -> int:
        if token_id is None:
            raise TokenizerError(f"{name} token requested but the GGUF has no tokenizer.ggml.{name}_token_id")
        return token_id

    # --- ids -> text ------------------------------------------------------------------------------------------
    def token_text(self, token_id: int) -> str:
        """The token's text as stored in the vocabulary (byte-level characters for normal tokens)."""
        return self._tokens[self._check_id(token_id)]

    def token_bytes(self, token_id: int, *, skip_special: bool = False) -> bytes:
        """The bytes llama.cpp's token_to_piece prints for the token (see the module docstring)."""
        token_id = self._check_id(token_id)
        if checks.flag("skip_special", skip_special) and token_id in self._control_ids:
            return b""
        piece = self._pieces[token_id]
        if piece is None:
            text, kind = self._tokens[token_id], self._types[token_id]
            if token_id in self._control_ids or kind == TOKEN_USER_DEFINED:
                piece = text.encode()
            elif kind == TOKEN_NORMAL:
                piece = (text.replace("\u2581", " ").encode() if self._engine.escaped_spaces
                         else _byte_level_to_bytes(text))
            elif kind == TOKEN_BYTE:
                piece = _byte_token_value(text)
            else:  # unused or undefined: llama.cpp's token_to_piece copies nothing
                piece = b""
            self._pieces[token_id] = piece
        return piece

    def decode(self, ids: Iterable[int], *, skip_special: bool = False, continuation: bool = False) -> str:
        """The text of ``ids``: their pieces joined, decoded as UTF-8 (U+FFFD for invalid bytes). With
        ``add_space_prefix`` (SentencePiece) the space that encoding put in front of the text is taken off the
        first piece, as llama.cpp's detokenize does, unless ``continuation``: ids that continue earlier text,
        such as generated tokens, print as llama.cpp prints them. (llama.cpp's detokenize also cleans up spaces
        before punctuation for some pre-tokenizers; refspec never does, so its round trip keeps the text.)"""
        return self.decode_bytes(ids, skip_special=skip_special, continuation=continuation).decode("utf-8", "replace")

    def decode_bytes(self, ids: Iterable[int], *, skip_special: bool = False, continuation: bool = False) -> bytes:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise UsageError(f"decode takes a sequence of token ids, not {type(ids).__name__}")
        checks.flag("skip_special", skip_special)
        checks.flag("continuation", continuation)
        pieces = [self.token_bytes(i, skip_special=skip_special) for i in ids]
        if pieces and self.add_space_prefix and not continuation and pieces[0].startswith(b" "):
            pieces[0] = pieces[0][1:]
        return b"".join(pieces)

    def stream(self, *, skip_special: bool = False, continuation: bool = False) -> StreamDecoder:
        """A decoder fed one id at a time; see ``StreamDecoder``."""
        return StreamDecoder(self, skip_special=checks.flag("skip_special", skip_special),
                             continuation=checks.flag("continuation", continuation))

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids

    def _check_id(self, token_id: int) -> int:
        if isinstance(token_id, bool):
            raise UsageError("a token id must be an integer, not a bool")
        try:
            token_id = operator.index(token_id)
        except TypeError:
            raise UsageError(f"a token id must be an integer, not {type(token_id).__name__} {token_id!r:.40}") from None
        if not 0 <= token_id < self.n_vocab:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary of {self.n_vocab} tokens")
        return token_id

    # --- chat -------------------------------------------------------------------------------------------------
    TEMPLATE_NAMES = ("messages", "add_generation_prompt", "bos_token", "eos_token")  # set by refspec

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True,
                            tokenize: bool = False, **template_kwargs) -> str | list[int]:
        """Render the GGUF's ``tokenizer.chat_template`` with ``messages``, ``add_generation_prompt``,
        ``bos_token`` and ``eos_token``, in a sandboxed child process with bounded time, memory and output (the
        template is untrusted code: refspec/chat_template.py). A GGUF without a template gets ChatML
        (``CHATML_TEMPLATE``), llama.cpp's fallback too. Any template failure is a TokenizerError.
        As HF's method: ``template_kwargs`` are further variables of the template (``enable_thinking=False``
        for Qwen3's, ``tools=[...]``; JSON data), and ``tokenize=True`` returns the prompt's ids instead, as
        llama.cpp's chat path makes them: where the tokenizer adds BOS (EOS) itself, a BOS (EOS) text the
        template wrote at the very start (end) is dropped first, so the prompt holds one, not two."""
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise UsageError("messages must be a list of dicts (each with 'role' and 'content')")
        checks.flag("add_generation_prompt", add_generation_prompt)
        checks.flag("tokenize", tokenize)
        taken = sorted(set(template_kwargs) & set(self.TEMPLATE_NAMES))
        if taken:
            raise UsageError(f"{', '.join(taken)}: set by apply_chat_template itself, not a template variable "
                             "to pass")
        bos = "" if self.bos_id is None else self._tokens[self.bos_id]
        eos = "" if self.eos_id is None else self._tokens[self.eos_id]
        text = chat_template.render(self.chat_template or CHATML_TEMPLATE, {
            **template_kwargs, "messages": messages, "add_generation_prompt": add_generation_prompt,
            "bos_token": bos, "eos_token": eos})
        if not tokenize:
            return text
        if self.add_bos and bos and text.startswith(bos):
            text = text[len(bos):]
        if self.add_eos and eos and text.endswith(eos):
            text = text[:-len(eos)]
        return self.encode(text)


class StreamDecoder:
    """Turns ids, one at a time, into text as soon as it is complete: a character whose UTF-8 bytes span
    several tokens comes out with the token that completes it. ``push`` returns the new text, ``flush`` what
    remains at the end (U+FFFD for an unfinished character). All outputs joined equal ``Tokenizer.decode``
    with the same ``skip_special`` and ``continuation``."""

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False, continuation: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._first = not continuation  # the next id is the first of a text (decode's leading-space rule)
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, token_id: int) -> str:
        piece = self._tokenizer.decode_bytes([token_id], skip_special=self._skip_special,
                                             continuation=not self._first)
        self._first = False
        return self._utf8.decode(piece)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
