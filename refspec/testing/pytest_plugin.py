"""A pytest plugin for projects that test a backend against refspec: enable it with
`pytest -p refspec.testing.pytest_plugin`, or `pytest_plugins = ["refspec.testing.pytest_plugin"]` in the
root conftest.py, then:

    def test_my_backend_matches_the_spec(refspec_check_backend):
        refspec_check_backend(MyBackend)            # every op, then tiny models; fails listing each FAIL line
        refspec_check_backend(MyBackend, qwen35=True)  # ... and fails if qwen35's methods are missing

(A backend without qwen35's methods, protocol.QWEN35, is checked on the dense architectures only.)
"""
import pytest

from refspec.testing.conformance import as_backend, check_backend, qwen35_missing


@pytest.fixture
def refspec_check_backend():
    """check(factory_or_backend, models=True, qwen35=False): run refspec's conformance checks, fail with every FAIL
    line; with qwen35=True also fail where the backend lacks qwen35's methods (so qwen35 would go unchecked)."""

    def check(backend, *, models: bool = True, qwen35: bool = False):
        backend = as_backend(backend)
        lacking = qwen35_missing(backend)
        assert not (qwen35 and lacking), f"qwen35 is not checked: the backend lacks {', '.join(lacking)}"
        results = check_backend(backend, models=models)
        failed = [c.line() for c in results if not c.ok]
        assert not failed, "the backend differs from refspec's spec:\n" + "\n".join(failed)
        return results

    return check
