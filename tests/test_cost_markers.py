"""The cost markers: a test without one, or with two, is refused at collection; a unit test
that starts a process fails."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit

PLUGIN = 'pytest_plugins = ["support.costs"]\n'
INI = """
[pytest]
addopts = -p no:cacheprovider --strict-markers
asyncio_default_fixture_loop_scope = function
markers =
    unit: in this process only
    kubernetes: kmock
    envoy: a real Envoy or a child process
"""


def run(pytester: pytest.Pytester, tests: str, *args: str) -> pytest.RunResult:
    pytester.makeini(INI)
    pytester.makeconftest(PLUGIN)
    pytester.makepyfile(test_sample=tests)
    return pytester.runpytest_inprocess(*args)


def test_a_test_without_a_cost_marker_is_refused(pytester: pytest.Pytester) -> None:
    result = run(pytester, "def test_plain():\n    pass\n")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_sample.py::test_plain: no cost marker*"])


def test_a_test_marked_apart_from_its_module_is_refused(pytester: pytest.Pytester) -> None:
    tests = (
        "import pytest\npytestmark = pytest.mark.unit\n\n@pytest.mark.envoy\ndef test_costly():\n    pass\n"
    )
    result = run(pytester, tests)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_sample.py::test_costly: *marked apart from its module*"])


def test_a_marked_test_runs_and_is_selected_by_its_marker(pytester: pytest.Pytester) -> None:
    tests = (
        "import pytest\npytestmark = pytest.mark.unit\n\n"
        "def test_cheap():\n    pass\n\n"
        "def test_also_cheap():\n    pass\n"
    )
    result = run(pytester, tests, "-m", "unit")
    result.assert_outcomes(passed=2)
    assert run(pytester, tests, "-m", "envoy").ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_a_unit_test_that_starts_a_process_fails(pytester: pytest.Pytester) -> None:
    tests = (
        "import subprocess, sys\nimport pytest\npytestmark = pytest.mark.unit\n\n"
        "def test_spawns():\n    subprocess.run([sys.executable, '-c', 'pass'], check=True)\n"
    )
    result = run(pytester, tests)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*a unit test started a process*"])
