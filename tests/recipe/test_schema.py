"""The schema on its own: normalized values, frozen sections, booleans and fractions, documentation."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from nfcompile.recipe.schema import (BudgetSection, DataSection, NeuroFluxSection, Recipe, SelectSection,
                                     TrainSection)


def _sections(model: type[BaseModel] = Recipe) -> list[type[BaseModel]]:
    found = [model]
    for info in model.model_fields.values():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found += _sections(info.annotation)
    return found


def test_every_value_field_is_documented():
    # The README's recipe reference is built from these descriptions; sections document themselves.
    undocumented = [f"{section.__name__}.{name}" for section in _sections()
                    for name, info in section.model_fields.items()
                    if not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel))
                    and not (info.description or "").strip()]
    assert undocumented == []


def test_profile_batch_sizes_are_sorted_and_unique():
    assert NeuroFluxSection(profile_batch_sizes=(32, 4, 16, 4)).profile_batch_sizes == (4, 16, 32)


@pytest.mark.parametrize("memory, expected", [("auto", None), ("96MiB", 96 * 2**20), ("2GB", 2 * 10**9),
                                              (4096, 4096), ("1e9", 10**9)])
def test_budget_memory_in_bytes(memory, expected):
    assert BudgetSection(memory=memory).memory_bytes == expected


def test_sections_are_frozen():
    recipe = Recipe.model_validate({"name": "a"})
    with pytest.raises(ValidationError):
        recipe.train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize("section, field", [(TrainSection, "epochs"), (TrainSection, "lr"),
                                            (BudgetSection, "memory"), (DataSection, "image_size")])
def test_numbers_refuse_booleans(section, field):
    with pytest.raises(ValidationError, match="true/false"):
        section.model_validate({field: True})


def test_boolean_fields_take_booleans():
    assert DataSection.model_validate({"download": False}).download is False
    assert TrainSection.model_validate({"backprop": {"checkpointing": True}}).backprop.checkpointing is True


@pytest.mark.parametrize("value, ok", [(0.0, True), (1.0, True), (0.95, True), (1.5, False), (-0.1, False),
                                       (95, False), (float("nan"), False)])
def test_fractions(value, ok):
    if ok:
        assert SelectSection(min_accuracy=value).min_accuracy == value
        return
    with pytest.raises(ValidationError) as info:
        SelectSection(min_accuracy=value)
    message = str(info.value)
    # NaN is refused before any range check: every section takes finite numbers only.
    assert ("finite number" if value != value else "fraction from 0 to 1") in message
    # Only a value that reads like a percentage gets the percentage hint.
    assert ("write 0.95" in message) == (value == 95)


def test_validate_is_the_yaml_key():
    recipe = Recipe.model_validate({"name": "a", "validate": {"atol": 0.5}})
    assert recipe.validation.atol == 0.5
    assert Recipe.model_validate({"name": "a"}).model_dump()["validate"]["atol"] == 1e-4
    with pytest.raises(ValidationError, match="validation"):
        Recipe.model_validate({"name": "a", "validation": {"atol": 0.5}})
