"""Chat templates: Jinja code from the model file, rendered in a child process with bounded time, memory and
output.

A template is untrusted code. jinja2's sandbox stops it from reaching Python's internals, but not from
spending resources: nested loops, huge integers, ``'%10000000000s' % x``, ``center(2*10**9)``, repeated
doubling, or a deeply nested template that makes Python's own compiler fail (RecursionError, "too many
statically nested blocks", "too many levels of indentation"). So ``render`` runs the template in a fresh
interpreter (``python -I`` on this file; it imports only jinja2) that limits its own address space
(RLIMIT_AS) and CPU time (RLIMIT_CPU) before it compiles anything, and the parent waits a bounded wall time.
Every failure comes back as one line; the caller (``Tokenizer.apply_chat_template``) raises it as a
TokenizerError.

This module must stay importable without refspec (the child runs it as a plain script): refspec's own
modules are imported inside the functions the parent calls.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Limits. Real templates are a few kB to ~100 kB and render in milliseconds.
MAX_TEMPLATE_CHARS = 1 << 20  # a larger template is refused before it is compiled
CPU_SECONDS = 2  # the child's CPU time (compiling and rendering)
WALL_SECONDS = 30  # the parent's patience, start-up included, on a loaded machine
MEMORY_BYTES = 512 << 20  # address space the child may add to what it has once its input is read
OUTPUT_CHARS = 1 << 20  # rendered text beyond the messages' own size
_MAX_TEMPLATE_ITEMS = 1_000_000  # largest string or list a template may build with '*' (an early, clear refusal)
_MAX_TEMPLATE_EXPONENT = 1024  # largest integer exponent a template may use with '**'


def render(template: str, context: dict) -> str:
    """``template`` rendered with ``context`` (messages, add_generation_prompt, bos_token, ...), in a child
    process. Raises TokenizerError with one line for anything the template does wrong; UsageError when
    ``context`` cannot be passed on (it must be JSON: dicts, lists, strings, numbers, booleans, None)."""
    from refspec.errors import TokenizerError, UsageError

    if not isinstance(template, str):
        raise TokenizerError(f"the chat template is {type(template).__name__}, not a string")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TokenizerError(f"the chat template has {len(template)} characters, more than {MAX_TEMPLATE_CHARS}")
    try:
        payload = json.dumps({"template": template, "context": context}, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"chat messages and template variables must be JSON data (dicts, lists, strings, numbers): "
                         f"{exc}") from None
    limit = OUTPUT_CHARS + len(payload)
    try:
        proc = subprocess.run([sys.executable, "-I", os.path.abspath(__file__), str(limit)],
                              input=payload.encode("utf-8", "surrogatepass"), capture_output=True,
                              timeout=WALL_SECONDS)
    except subprocess.TimeoutExpired:
        raise TokenizerError(f"chat template took more than {WALL_SECONDS} s; stopped") from None
    except OSError as exc:
        raise TokenizerError(f"chat template: cannot start the rendering process ({exc})") from None
    return _result(proc, TokenizerError)


def _result(proc: subprocess.CompletedProcess, error) -> str:
    if proc.returncode < 0:
        import signal

        sig = -proc.returncode
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            raise error(f"chat template used more than {CPU_SECONDS} s of CPU time; stopped")
        raise error(f"chat template rendering died with signal {signal.Signals(sig).name}")
    try:
        reply = json.loads(proc.stdout.decode("utf-8", "surrogatepass"))
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or not ("text" in reply or "error" in reply):
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise error(f"chat template rendering failed (status {proc.returncode}): {tail[0][:200]}")
    if "error" in reply:
        raise error(str(reply["error"]))
    return reply["text"]


# ------------------------------------------------------------------------------------------------------------
# The child: everything below runs in the limited process.
# ------------------------------------------------------------------------------------------------------------
def _environment():
    """HF transformers' template environment in jinja2's immutable sandbox (no access to internals, no
    mutation of the values passed in): trim_blocks, lstrip_blocks, loop controls, ``raise_exception``,
    ``tojson``. No ``strftime_now``: templates that check for it use their fixed default date, which keeps
    prompts reproducible. '*' and '**' are bounded so the common blow-ups fail with a clear message rather
    than at the memory limit."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class TemplateEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator_name, left, right):
            if operator_name == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > _MAX_TEMPLATE_ITEMS:
                        raise SecurityError(f"'*' would build more than {_MAX_TEMPLATE_ITEMS} items")
            if operator_name == "**" and isinstance(right, int) and right > _MAX_TEMPLATE_EXPONENT:
                raise SecurityError(f"'**' exponent larger than {_MAX_TEMPLATE_EXPONENT}")
            return super().call_binop(context, operator_name, left, right)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        """HF's ``tojson``: plain JSON, no HTML escaping (Jinja's own filter escapes '<', '>', '&')."""
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(message):
        raise _TemplateRaised(str(message))

    env = TemplateEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


class _TemplateRaised(Exception):
    """The template called raise_exception(message)."""


def _limit_resources(input_bytes: int) -> None:
    import resource

    def lower(kind, soft, hard):  # never above a limit the process already has (raising one fails)
        cap = min((x for x in resource.getrlimit(kind) if x != resource.RLIM_INFINITY), default=hard)
        resource.setrlimit(kind, (min(soft, cap), min(hard, cap)))

    lower(resource.RLIMIT_CPU, CPU_SECONDS, CPU_SECONDS + 1)  # SIGXCPU, then SIGKILL
    try:
        with open("/proc/self/statm") as f:  # current address space, in pages
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # no /proc: CPU time and the output bound still hold
        return
    budget = used + MEMORY_BYTES + 8 * input_bytes
    lower(resource.RLIMIT_AS, budget, budget)


def _render_in_child(raw: bytes, output_limit: int) -> dict:
    import jinja2

    _limit_resources(len(raw))
    request = json.loads(raw.decode("utf-8", "surrogatepass"))
    try:
        template = _environment().from_string(request["template"])
    except jinja2.TemplateError as exc:
        return {"error": f"chat template does not compile: {_describe(exc)}"}
    except BaseException as exc:  # RecursionError, SyntaxError, MemoryError from Python's own compiler
        return {"error": f"chat template does not compile: {_describe(exc)}"}
    try:
        text = template.render(**request["context"])
    except _TemplateRaised as exc:
        return {"error": f"chat template raised: {exc}"}
    except BaseException as exc:  # the template is code from the model file: any failure is the template's
        return {"error": f"chat template failed: {_describe(exc)}"}
    if len(text) > output_limit:
        return {"error": f"chat template rendered {len(text)} characters, more than {output_limit}"}
    return {"text": text}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return f"MemoryError: needed more than its {MEMORY_BYTES >> 20} MiB of memory"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def _child_main() -> None:
    raw = sys.stdin.buffer.read()
    try:
        reply = _render_in_child(raw, int(sys.argv[1]))
    except MemoryError as exc:
        reply = {"error": f"chat template failed: {_describe(exc)}"}
    try:
        out = json.dumps(reply, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except MemoryError:
        out = b'{"error": "chat template: out of memory while returning its text"}'
    sys.stdout.buffer.write(out)


if __name__ == "__main__":
    _child_main()
