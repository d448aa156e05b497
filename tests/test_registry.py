import pytest

from replibook.errors import UnknownName
from replibook.registry import Registry


class Entry:
    def __init__(self, key, aliases, factory):
        self.key, self.aliases, self.factory = key, aliases, factory


def make_a():
    return "a"


def make_b():
    return "b"


def test_registry_aliases_collisions_and_errors():
    reg = Registry("widget", hint="Try harder.")
    reg.add("Big-One", make_a, ["B1"], make_entry=lambda k, al: Entry(k, al, make_a))
    assert reg.get("big_one") is reg.get("b1") and reg.names() == ["big_one"]
    assert reg.names(True) == ["b1", "big_one"] and "BIG-ONE" in reg
    reg.add("big_one", make_a, [], make_entry=lambda k, al: Entry(k, al, make_a))   # same factory: replaces
    assert "b1" not in reg
    with pytest.raises(ValueError, match="widget name 'big_one' is already registered"):
        reg.add("big_one", make_b, [], make_entry=lambda k, al: Entry(k, al, make_b))
    reg.add("big_one", make_b, [], make_entry=lambda k, al: Entry(k, al, make_b), overwrite=True)
    assert reg.get("big_one").factory is make_b
    with pytest.raises(UnknownName, match="unknown widget 'nope'.*Try harder"):
        reg.get("nope")
    reg.remove("big_one")
    assert reg.names() == [] and "big_one" not in reg
