"""The README's set-up commands are the ones CI runs: the test command of `.ci/run` verbatim, and a
main-job command that installs and builds the embedded default recipe."""

from __future__ import annotations

import shlex

from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def _ci_test_command() -> str:
    lines = [line for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
             if line.startswith("TEST_COMMAND=")]
    assert len(lines) == 1, "expected one TEST_COMMAND=... line in .ci/run"
    (command,) = shlex.split(lines[0].partition("=")[2])  # the value as bash sees it, quotes removed
    return command


def test_readme_has_the_ci_test_command_verbatim():
    command = _ci_test_command()
    assert "pytest" in command
    assert command in README, f"README.md must contain this command verbatim:\n{command}"


def test_readme_main_job_installs_and_builds_the_quickstart_recipe():
    main_jobs = [line for line in README.splitlines() if "nfcompile build recipes/quickstart.yaml" in line]
    assert any("pip install" in line for line in main_jobs), \
        "README.md needs one line that installs and runs `nfcompile build recipes/quickstart.yaml`"
