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
