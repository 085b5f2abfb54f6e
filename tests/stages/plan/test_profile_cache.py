"""Profiles reused across runs: the same measurement is read back, anything that enters it measures afresh."""

from __future__ import annotations

import dataclasses
import json
import logging

import torch

from nfcompile.models import AuxHead
from nfcompile.recipe.schema import AugmentSection, BudgetSection, TrainSection
from nfcompile.stages.plan import plan_training
from nfcompile.stages.plan.profile import profile_local_step
from nfcompile.stages.plan.profile_cache import ProfileCache, cache_folder, profile_key

from conftest import TINY_CLASSES, TINY_SIZE, make_tiny_unit_net

CPU = torch.device("cpu")


def _unit_and_head(width: int = 8):
    net = make_tiny_unit_net()
    in_shape, out_shape = net.unit_shapes((3, TINY_SIZE, TINY_SIZE))[1]
    return net.units[1], AuxHead(out_shape[0], width, TINY_CLASSES), in_shape


def _fit(cache: ProfileCache, unit, head, in_shape, *, budget: int = 8 * 2**20, train: TrainSection = TrainSection(),
         calls: list | None = None):
    def measure():
        if calls is not None:
            calls.append(1)
        return profile_local_step(unit, head, in_shape, TINY_CLASSES, batch_sizes=(4, 16), budget=budget,
                                  max_batch=512, section=train, device=CPU)

    return cache.fit("local_step", [unit, head], measure, train=train, device=CPU, in_shape=in_shape,
                     num_classes=TINY_CLASSES, batch_sizes=(4, 16), budget=budget, max_batch=512)


def test_a_second_plan_reads_back_the_same_measurement(tmp_path):
    unit, head, in_shape = _unit_and_head()
    calls: list = []
    first = _fit(ProfileCache(tmp_path), unit, head, in_shape, calls=calls)
    again = ProfileCache(tmp_path)
    second = _fit(again, unit, head, in_shape, calls=calls)
    assert len(calls) == 1 and second == first
    assert (again.measured, again.reused) == (0, 1)
    (entry,) = tmp_path.glob("*.json")
    assert json.loads(entry.read_text())["kind"] == "local_step"


def test_anything_that_enters_the_measurement_measures_afresh(tmp_path):
    unit, head, in_shape = _unit_and_head()
    calls: list = []
    _fit(ProfileCache(tmp_path), unit, head, in_shape, calls=calls)
    _fit(ProfileCache(tmp_path), unit, head, in_shape, budget=4 * 2**20, calls=calls)  # refines elsewhere
    wider = _unit_and_head(width=16)
    _fit(ProfileCache(tmp_path), wider[0], wider[1], in_shape, calls=calls)  # another head
    _fit(ProfileCache(tmp_path), unit, head, in_shape, train=TrainSection(optimizer="adam"), calls=calls)
    _fit(ProfileCache(tmp_path), unit, head, in_shape, train=TrainSection(momentum=0.0), calls=calls)
    assert len(calls) == 5
    # Settings no step reads keep the profile: the learning rate and the number of epochs.
    _fit(ProfileCache(tmp_path), unit, head, in_shape, train=TrainSection(lr=0.3, epochs=2), calls=calls)
    assert len(calls) == 5


def test_weights_do_not_enter_the_key_but_shapes_do():
    unit, head, in_shape = _unit_and_head()
    key = profile_key("local_step", [unit, head], train=TrainSection(), device=CPU, in_shape=in_shape)
    with torch.no_grad():
        for parameter in unit.parameters():
            parameter.add_(1.0)
    assert profile_key("local_step", [unit, head], train=TrainSection(), device=CPU, in_shape=in_shape) == key
    assert profile_key("local_step", [unit, head], train=TrainSection(), device=CPU, in_shape=(8, 9, 9)) != key
    assert profile_key("block_step", [unit, head], train=TrainSection(), device=CPU, in_shape=in_shape) != key


def test_a_damaged_entry_is_measured_again_and_replaced(tmp_path):
    unit, head, in_shape = _unit_and_head()
    calls: list = []
    first = _fit(ProfileCache(tmp_path), unit, head, in_shape, calls=calls)
    (entry,) = tmp_path.glob("*.json")
    for damage in ("{not json", "[1, 2]", json.dumps({"format": "nfcompile.profile/1", "key": entry.stem,
                                                      "value": {**dataclasses.asdict(first), "bytes_per_sample": -5}})):
        entry.write_text(damage)
        again = ProfileCache(tmp_path)
        assert _fit(again, unit, head, in_shape, calls=calls).measurements == first.measurements
        assert again.measured == 1
    assert len(calls) == 4 and json.loads(entry.read_text())["value"]["bytes_per_sample"] > 0


def test_an_unwritable_cache_warns_once_and_the_plan_goes_on(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder should be")
    cache = ProfileCache(blocked / "profiles")
    with caplog.at_level(logging.WARNING):
        plan = _plan(cache)
    assert plan.profiles_measured > 3 and plan.profiles_reused == 0
    assert caplog.text.count("profile cache: cannot write") == 1


def _plan(cache: ProfileCache | None):
    return plan_training(make_tiny_unit_net(), TINY_CLASSES, image_size=TINY_SIZE, train_samples=512,
                         val_samples=64, budget=BudgetSection(memory="2MiB"), train=TrainSection(),
                         augment=AugmentSection(), device=CPU, cache=cache)


def test_a_plan_with_every_profile_reused_is_the_same_plan(tmp_path):
    measured = _plan(ProfileCache(tmp_path))
    reused = _plan(ProfileCache(tmp_path))
    assert measured.profiles_measured >= 3 + 2  # three units, the two backprop baselines, and block checks
    assert (reused.profiles_measured, reused.profiles_reused) == (0, measured.profiles_measured
                                                                  + measured.profiles_reused)
    same = dataclasses.replace(reused, profiles_measured=measured.profiles_measured,
                               profiles_reused=measured.profiles_reused)
    assert same == measured
    # No cache: every profile measured, as before.
    assert _plan(None).profiles_reused == 0


def test_the_cache_lives_where_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.setenv("NFCOMPILE_CACHE_DIR", str(tmp_path))
    assert cache_folder() == tmp_path / "profiles"
    assert ProfileCache.for_recipe(True).folder == tmp_path / "profiles"
    assert ProfileCache.for_recipe(False).folder is None


def test_the_cache_keeps_only_the_newest_entries(tmp_path, monkeypatch):
    import os

    import nfcompile.stages.plan.profile_cache as profile_cache

    for age, name in enumerate(["c", "b", "a"]):  # a is the oldest
        entry = tmp_path / f"{name}.json"
        entry.write_text("{}")
        os.utime(entry, (1_000_000 - age * 100, 1_000_000 - age * 100))
    monkeypatch.setattr(profile_cache, "MAX_ENTRIES", 3)
    unit, head, in_shape = _unit_and_head()
    _fit(ProfileCache(tmp_path), unit, head, in_shape)  # the fourth entry: the oldest goes
    assert sorted(p.stem for p in tmp_path.glob("*.json") if len(p.stem) == 1) == ["b", "c"]
    assert len(list(tmp_path.glob("*.json"))) == 3
