"""The generic `Registry` and the registries built on it (methods, scopes, scorers, detectors, attacks, packs)."""

import sys

import pytest

from erasekit.models.registry import Registry, UnknownNameError


def test_lazy_targets_load_on_first_get_and_are_kept():
    calls = []
    reg: Registry = Registry("widget")
    reg.lazy("called", lambda: calls.append(1) or "built")
    reg.lazy("attribute", "erasekit.models.registry:Registry")
    reg.add("plain", 3)
    assert reg.names() == ["attribute", "called", "plain"] and "called" in reg and "nope" not in reg
    assert calls == []  # listing loads nothing
    assert reg.get("called") == reg.get("called") == "built" and calls == [1]
    assert reg.get("attribute") is Registry and reg.get("plain") == 3


def test_a_module_target_registers_itself_on_import():
    from erasekit.methods.base import METHODS, get_method

    module = METHODS._targets.get("uce")
    if module is None:  # another test already loaded it
        assert get_method("uce").name == "uce"
        return
    assert module == "erasekit.methods.uce"
    assert get_method("uce").name == "uce" and "erasekit.methods.uce" in sys.modules

    reg: Registry = Registry("widget")
    reg.lazy("silent", "erasekit.models.registry")  # imports, but adds nothing
    with pytest.raises(KeyError, match="does not register widget 'silent'"):
        reg.get("silent")


def test_unknown_names_suggest_close_ones_and_list_all():
    class UnknownWidgetError(UnknownNameError):
        pass

    reg: Registry = Registry("widget", UnknownWidgetError, also=("auto",))
    reg.add("sprocket", 1)
    reg.lazy("spindle", lambda: 2)
    with pytest.raises(UnknownWidgetError) as info:
        reg.get("sprockt")
    assert str(info.value) == "unknown widget 'sprockt'; did you mean sprocket? (available: auto, spindle, sprocket)"
    assert isinstance(info.value, KeyError)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("sprocket", 5)
    with pytest.raises(ValueError, match="already registered"):
        reg.lazy("spindle", lambda: 3)
    assert reg.add("sprocket", 5, overwrite=True) == 5 and reg.get("sprocket") == 5


@pytest.mark.parametrize("lookup, error, close", [
    ("erasekit.methods.base:get_method", "UnknownMethodError", "esd-x"),
    ("erasekit.models.scopes:get_scope", "UnknownScopeError", "cross_attn_kv"),
    ("erasekit.eval.detectors:get_detector", "UnknownDetectorError", "shapes"),
    ("erasekit.eval.attacks.run:attack_config", "UnknownAttackError", "ringabell"),
    ("erasekit.concepts.packs:list_concepts", "UnknownConceptError", "shapes"),
])
def test_every_registry_answers_a_typo_with_its_own_error_and_a_suggestion(lookup, error, close):
    import importlib

    module, name = lookup.split(":")
    typo = close[:-1] + ("x" if close[-1] != "x" else "y")
    with pytest.raises(UnknownNameError) as info:
        getattr(importlib.import_module(module), name)(typo)
    assert type(info.value).__name__ == error and f"did you mean {close}" in str(info.value)


def test_scorer_registry_keeps_auto_and_raises_a_value_error():
    from erasekit.methods.saliency import SCORERS, make_scorer

    assert SCORERS.names() == ["clip", "detector", "forget"]
    with pytest.raises(ValueError, match="unknown saliency scorer 'forgt'; did you mean forget"):
        make_scorer("forgt", None, None)
