"""Static checks: ``mypy`` (strict, on ``drgn_vmemmap/``) and ``ruff`` (the
whole repository), both configured in ``pyproject.toml``.  They are test
extras, so the README's test command runs them; a finding fails the test
with the tool's own output."""

import subprocess
import sys

import pytest

from conftest import REPO


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.parametrize("tool", ["mypy", "ruff"])
def test_tool_installed(tool):
    """Installed with the package's test extra (pip install -e '.[test]')."""
    assert _run(tool, "--version").returncode == 0, f"{tool} is not installed"


def test_mypy_strict():
    proc = _run("mypy")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "Success" in proc.stdout


def test_ruff():
    proc = _run("ruff", "check", ".")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
