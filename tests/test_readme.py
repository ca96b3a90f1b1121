"""The README's quick start and its Python API example run as written (code blocks extracted from README.md)."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

import refspec

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def run_env() -> dict:
    """This checkout's refspec first on the import path, and this interpreter's scripts (refspec) on PATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def quick_start_commands() -> list[str]:
    """The first shell block's commands, minus the `pip install` steps (the package is installed already)."""
    first = code_blocks("sh")[0]
    commands = []
    for line in first.splitlines():
        for part in line.split("&&"):
            part = part.strip()
            if part and not re.match(r"python3? -m pip install", part):
                commands.append(part)
    return commands


def test_quick_start_is_found():
    commands = quick_start_commands()
    assert commands and all(c.startswith("refspec ") for c in commands), commands


@pytest.mark.slow
def test_quick_start_runs_as_written(default_model_path):
    for command in quick_start_commands():
        proc = subprocess.run(command, shell=True, capture_output=True, text=True, env=run_env(), cwd=ROOT,
                              timeout=600)
        assert proc.returncode == 0, (command, proc.stderr)
        assert proc.stdout.strip() and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(code_blocks("python"))))
def test_python_example_runs_as_written(index, default_model_path):
    proc = subprocess.run([sys.executable, "-c", code_blocks("python")[index]], capture_output=True, text=True,
                          env=run_env(), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_name_the_readme_api_table_gives_is_exported():
    section = README.split("## Python API", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"^\| `(\w+)", section, flags=re.M))
    names |= set(re.findall(r"`(\w+Error)`", section))
    assert len(names) >= 15, names
    for name in names:
        assert name in refspec.__all__ and getattr(refspec, name) is not None, name


def test_generate_is_the_function_after_the_submodule_is_imported():
    code = "import refspec.speculative, refspec; print(callable(refspec.generate), refspec.generate.__module__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env(), timeout=60)
    assert proc.stdout.split() == ["True", "refspec.generate"], proc.stderr
