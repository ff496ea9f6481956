"""The registry: every key resolves to a class, and every family has a tiny recipe."""

import importlib

import pytest

from labeler import registry, testing


def test_every_registered_adapter_imports():
    for task, family in registry.ADAPTERS:
        cls = registry.load_adapter_class(task, family)
        assert callable(getattr(cls, "setup")) and callable(getattr(cls, "predict"))


def test_every_family_has_a_tiny_checkpoint_recipe():
    assert set(testing.FAMILIES) == set(registry.FAMILIES)
    for family in registry.FAMILIES:
        assert callable(importlib.import_module(f"labeler.testing.tiny_{family}").build)


def test_unknown_pair_lists_the_valid_ones():
    with pytest.raises(ValueError, match="supported task/family pairs: .*detect/owlv2"):
        registry.adapter_path("caption", "owlv2")
