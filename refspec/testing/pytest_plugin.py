"""A pytest plugin for projects that test a backend against refspec: enable it with
`pytest -p refspec.testing.pytest_plugin`, or `pytest_plugins = ["refspec.testing.pytest_plugin"]` in the
root conftest.py, then:

    def test_my_backend_matches_the_spec(refspec_check_backend):
        refspec_check_backend(MyBackend)            # every op, then tiny models; fails listing each FAIL line
"""
import pytest

from refspec.testing.conformance import check_backend


@pytest.fixture
def refspec_check_backend():
    """check(factory_or_backend, models=True): run refspec's conformance checks, fail with every FAIL line."""

    def check(backend, *, models: bool = True):
        results = check_backend(backend, models=models)
        failed = [c.line() for c in results if not c.ok]
        assert not failed, "the backend differs from refspec's spec:\n" + "\n".join(failed)
        return results

    return check
