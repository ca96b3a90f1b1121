import os

import pytest

from hypothesis import settings

# Property tests: a fixed, CI-sized budget; `--hypothesis-profile=thorough` draws more.
settings.register_profile("ci", max_examples=50, deadline=None, print_blob=True)
settings.register_profile("thorough", max_examples=300, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def default_model_path():
    """The default model (SmolLM2-135M-Instruct GGUF), fetched into the cache on first use."""
    from refspec.default_model import default_model_path as find

    return find(fetch=True)


def one_line_error(proc) -> str:
    """The run failed as every refspec error does: status 1, one line on stderr, nothing on stdout."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("refspec: error: "), proc.stderr
    return lines[0]
