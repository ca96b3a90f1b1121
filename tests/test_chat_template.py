"""Hostile chat templates: each ends in one TokenizerError line within bounded time and memory (the template
renders in a child process with CPU-time and address-space limits); well-behaved templates render as before."""
import time

import pytest

from refspec import chat_template
from refspec.errors import TokenizerError, UsageError
from refspec.synthetic import CHAT_TEMPLATE

MESSAGES = [{"role": "user", "content": "hi"}]


def nested(opening: str, closing: str, depth: int, inner: str = "x") -> str:
    return opening * depth + inner + closing * depth


# name: (template, fragment of the one-line message)
ABUSE = {
    "80 nested parentheses": ("{{ " + nested("(", ")", 80, "1") + " }}", "does not compile"),
    "21 nested for loops": (nested("{% for i in [1] %}", "{% endfor %}", 21), "does not compile"),
    "200 nested ifs": (nested("{% if true %}", "{% endif %}", 200), "does not compile"),
    "nested range(100000) loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                                   "{% endfor %}", "CPU time"),
    "huge integer by squaring": ("{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}"
                                 "{% endfor %}{{ ns.x }}", ""),
    "center(2*10**9)": ("{{ 'a'.center(2*10**9) }}", "MiB of memory"),
    "'%10000000000s' % x": ("{{ '%10000000000s' % 'x' }}", ""),
    "format with a huge width": ("{{ '{:>3000000000}'.format('x') }}", ""),
    "ljust": ("{{ 'a'.ljust(3000000000) }}", "MiB of memory"),
    "zfill": ("{{ '1'.zfill(3000000000) }}", "MiB of memory"),
    "replace('', ...)": ("{{ ('a' * 1000000).replace('', 'x' * 1000) }}", "MiB of memory"),
    "join": ("{{ ('x' * 1000000).join(['y' * 1000000] * 1000) }}", "MiB of memory"),
    "doubling": ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
                 "{{ ns.s | length }}", ""),
    "output larger than the bound": ("{% for i in range(5000) %}{{ 'x' * 1000 }}{% endfor %}", "rendered 5000000"),
    "'*' beyond the item bound": ("{{ 'x' * 10**12 }}", "would build more than"),
    "'**' beyond the exponent bound": ("{{ 2 ** 100000 }}", "exponent larger than"),
    "raise_exception with newlines": ("{{ raise_exception('line one\nline two\r\nline three') }}",
                                      "chat template raised: line one line two line three"),
    "syntax error": ("{% for %}", "does not compile"),
    "sandbox escape": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError"),
    "undefined method": ("{{ messages.pop() }}", ""),
    "7 MB template": ("{{ 'x' }}" * 800_000, "more than 1048576"),
}


@pytest.mark.parametrize("case", sorted(ABUSE))
def test_abusive_template_is_one_bounded_error(case):
    template, fragment = ABUSE[case]
    t0 = time.perf_counter()
    with pytest.raises(TokenizerError) as info:
        chat_template.render(template, {"messages": MESSAGES, "add_generation_prompt": True})
    seconds = time.perf_counter() - t0
    message = str(info.value)
    assert "\n" not in message and "\r" not in message and fragment in message, message
    assert seconds < chat_template.WALL_SECONDS, seconds
    assert MESSAGES == [{"role": "user", "content": "hi"}]  # nothing the template did reached the caller


@pytest.mark.parametrize("template", [None, 7, ["{{ x }}"], b"{{ x }}"])
def test_a_template_that_is_not_a_string_is_an_error(template):
    with pytest.raises(TokenizerError, match="not a string"):
        chat_template.render(template, {"messages": MESSAGES})


def test_context_must_be_json_data():
    with pytest.raises(UsageError, match="JSON"):
        chat_template.render(CHAT_TEMPLATE, {"messages": [{"role": "user", "content": object()}]})


def test_well_behaved_templates_render_exactly():
    context = {"messages": [{"role": "user", "content": "Hi <é&>"}], "add_generation_prompt": True}
    assert chat_template.render(CHAT_TEMPLATE, context) == "<|im_start|>user\nHi <é&><|im_end|>\n<|im_start|>assistant\n"
    assert chat_template.render(chat_template.CHATML_TEMPLATE, context) == (
        "<|im_start|>user\nHi <é&><|im_end|>\n<|im_start|>assistant\n")
    assert chat_template.render("{{ messages | tojson }}", context) == '[{"role": "user", "content": "Hi <é&>"}]'
    long_content = "y" * 3_000_000  # the output bound grows with the messages themselves
    assert len(chat_template.render(CHAT_TEMPLATE, {"messages": [{"role": "user", "content": long_content}]})) > 3e6


# --- the template's variables and the prompt's ids (Tokenizer.apply_chat_template) -------------------------
BOS_TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
                "{% if enable_thinking is defined and not enable_thinking %}[no-think]{% endif %}"
                "{% if add_generation_prompt %}[assistant]{% endif %}{{ eos_token if close else '' }}")


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    from refspec.synthetic import rewrite_gguf, write_model

    directory = tmp_path_factory.mktemp("chat_bos")
    path = write_model(directory / "spm.gguf", arch="llama", n_layer=1, vocab="spm")
    return rewrite_gguf(path, directory / "bos.gguf", metadata={"tokenizer.chat_template": BOS_TEMPLATE})


def tokenizer_of(path, **metadata):
    from refspec.gguf_model import read_metadata
    from refspec.tokenizer import Tokenizer

    return Tokenizer.from_metadata({**read_metadata(path), **metadata})


def test_the_prompt_holds_one_bos_where_the_template_writes_one_and_the_tokenizer_adds_one(spm_model):
    tok = tokenizer_of(spm_model)
    assert tok.add_bos and tok.bos_id is not None
    text = tok.apply_chat_template(MESSAGES, close=False)
    assert text.startswith(tok.token_text(tok.bos_id))
    ids = tok.apply_chat_template(MESSAGES, tokenize=True, close=False)
    assert ids.count(tok.bos_id) == 1 and ids[0] == tok.bos_id
    assert tok.encode(text).count(tok.bos_id) == 2  # what encoding the text gives: the reason for tokenize=True
    assert ids == tok.encode(text[len(tok.token_text(tok.bos_id)):])
    quiet = tokenizer_of(spm_model, **{"tokenizer.ggml.add_bos_token": False})
    assert quiet.apply_chat_template(MESSAGES, tokenize=True, close=False) == ids  # the template's own BOS


def test_a_trailing_eos_is_dropped_where_the_tokenizer_adds_one(spm_model):
    tok = tokenizer_of(spm_model, **{"tokenizer.ggml.add_eos_token": True})
    ids = tok.apply_chat_template(MESSAGES, tokenize=True, close=True)
    assert ids.count(tok.eos_id) == 1 and ids[-1] == tok.eos_id
    assert tokenizer_of(spm_model).apply_chat_template(MESSAGES, tokenize=True, close=True)[-1] == tok.eos_id


def test_template_variables_reach_the_template_and_refspecs_own_are_refused(spm_model):
    tok = tokenizer_of(spm_model)
    assert "[no-think]" in tok.apply_chat_template(MESSAGES, enable_thinking=False, close=False)
    assert "[no-think]" not in tok.apply_chat_template(MESSAGES, enable_thinking=True, close=False)
    with pytest.raises(UsageError, match="bos_token: set by apply_chat_template itself"):
        tok.apply_chat_template(MESSAGES, bos_token="<x>")
    with pytest.raises(UsageError, match="tokenize must be True or False"):
        tok.apply_chat_template(MESSAGES, tokenize="yes")
    with pytest.raises(UsageError, match="JSON"):
        tok.apply_chat_template(MESSAGES, tools=object())


def test_the_command_line_passes_template_variables_as_llama_cpp_does(spm_model):
    import json
    import subprocess
    import sys

    def prompt_ids(*args):
        proc = subprocess.run([sys.executable, "-m", "refspec.cli", "generate", "-m", str(spm_model), "--chat", "-p",
                               "hi", "-n", "1", "--json", "--device", "cpu", *args], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["prompt_ids"]

    tok = tokenizer_of(spm_model)
    messages = [{"role": "user", "content": "hi"}]
    plain = prompt_ids()
    assert plain == tok.apply_chat_template(messages, tokenize=True, close=False) and plain.count(tok.bos_id) == 1
    no_think = tok.apply_chat_template(messages, tokenize=True, close=False, enable_thinking=False)
    assert prompt_ids("--reasoning-budget", "0") == no_think != plain
    assert prompt_ids("--chat-template-kwargs", '{"enable_thinking": false}') == no_think
