"""The house: imports point down only, and the registries that users extend stay consistent."""

from __future__ import annotations

import ast
from collections import defaultdict

from conftest import REPO

PACKAGE = REPO / "nfcompile"


def _part(module: str) -> str | None:
    """nfcompile.core.io -> core; nfcompile.api -> api."""
    bits = module.split(".")
    return bits[1] if len(bits) > 1 and bits[0] == "nfcompile" else None


def _import_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        me = _part(".".join(path.relative_to(REPO).with_suffix("").parts))
        if me in (None, "__init__"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                other = _part(name)
                if other not in (None, me, "__init__"):
                    edges[me].add(other)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for other in sorted(edges.get(node, ())):
            if state.get(other) == 1:
                return path[path.index(other):] + [other]
            if other not in state and (found := visit(other)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_imports_form_no_cycle():
    edges = _import_graph()
    assert "learning" in edges and "core" in edges  # the walk sees the package
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_the_ground_imports_nothing_above_it():
    edges = _import_graph()
    assert edges["core"] <= {"errors"}, edges["core"]
    assert edges["recipe"] <= {"core", "errors"}, edges["recipe"]
    assert not edges.get("formats"), edges.get("formats")


def test_every_deliverable_format_is_made_and_checked_by_a_pipeline_stage():
    from nfcompile.formats import FORMATS
    from nfcompile.pipeline import STAGE_NAMES

    assert len({f.name for f in FORMATS}) == len(FORMATS)
    for entry in FORMATS:
        assert {entry.produced_by, entry.validated_by} <= set(STAGE_NAMES), entry
        assert STAGE_NAMES.index(entry.produced_by) < STAGE_NAMES.index(entry.validated_by)


def test_bench_backends_are_one_registry_that_the_schema_and_cli_name():
    import click
    import pytest

    from nfcompile.cli import cli
    from nfcompile.recipe.schema import BenchSection
    from nfcompile.runtime.backends import Backend, list_backends, register_backend

    names = list_backends()
    assert names[:3] == ["ort-cpu", "ort-cuda", "tensorrt"]
    description = BenchSection.model_fields["backend"].description
    assert all(name in description for name in names)
    option = next(p for p in cli.commands["bench"].params if p.name == "backend")
    assert isinstance(option.type, click.Choice) and list(option.type.choices) == names
    with pytest.raises(ValueError, match="twice"):
        register_backend(Backend("ort-cpu", "", False, False, lambda: None, lambda path, threads: None))
