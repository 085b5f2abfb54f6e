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


def test_recipe_reference_is_the_one_the_schema_generates():
    from nfcompile.recipe.reference import BEGIN, END, recipe_reference

    start, end = README.index(BEGIN), README.index(END) + len(END)
    assert README[start:end] == recipe_reference(), \
        "regenerate the README's recipe reference: python -m nfcompile.recipe.reference"


def test_every_command_and_option_is_in_the_readme():
    import click

    from nfcompile.cli import cli

    section = README[README.index("## Command line"):]
    for name, command in cli.commands.items():
        assert f"`nfcompile {name} " in section, name
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert f"`{param.opts[0]}`" in section, f"{name} {param.opts[0]}"


def test_every_recipe_in_the_repository_validates():
    from nfcompile.recipe import load_recipe

    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert {p.name for p in recipes} >= {"quickstart.yaml", "resnet18_jetson.yaml", "vgg16_cifar10.yaml",
                                         "mobilenetv2_imagefolder.yaml"}
    for path in recipes:
        assert load_recipe(path).name == path.stem
