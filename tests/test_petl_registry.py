"""PETL components as registered folders (issue 18): the registry, self-validating configs, LN-tuning,
and a component defined outside the package that trains, saves, loads and merges."""

from __future__ import annotations

import pytest

from upperson.config import ModelConfig
from upperson.petl import AdapterConfig, LoraConfig, PrefixConfig


@pytest.mark.parametrize("make, key", [
    (lambda: AdapterConfig(placement="paralel"), "placement"),
    (lambda: AdapterConfig(ratio=0.0), "ratio"),
    (lambda: PrefixConfig(length=0), "length"),
    (lambda: LoraConfig(rank=0), "rank"),
    (lambda: LoraConfig(depth=-1), "depth"),
])
def test_a_component_config_built_in_python_refuses_a_bad_value(make, key):
    with pytest.raises(ValueError, match=key):
        make()


def test_a_typo_in_the_adapter_placement_does_not_become_sequential():
    with pytest.raises(ValueError, match="placement must be 'parallel' or 'sequential', got 'paralel'"):
        ModelConfig(pretrained="random", adapter=AdapterConfig(placement="paralel"))
