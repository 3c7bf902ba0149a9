"""``steerscope.artifacts.child_path``: the one helper writers use for a path built from a
name they did not choose; it keeps every write inside its output folder (issue 29, point 3)."""

from __future__ import annotations

import pytest

from steerscope.artifacts import atomic_write_json, check_child_name, child_path
from steerscope.errors import SteerscopeError


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b", "a\0b",
                                  None, 3])
def test_names_that_are_not_one_plain_component(tmp_path, name):
    with pytest.raises(SteerscopeError) as e:
        child_path(tmp_path, "ok", name, what="--name")
    msg = str(e.value)
    assert msg.startswith(f"--name {name!r} cannot name a file") and "\n" not in msg
    with pytest.raises(SteerscopeError):
        check_child_name(name)


def test_plain_names_and_links_that_stay_inside(tmp_path):
    assert child_path(tmp_path, "svv_dim (-s).json") == tmp_path / "svv_dim (-s).json"
    assert child_path(tmp_path, "a", "b.c", "..d") == tmp_path / "a" / "b.c" / "..d"
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    assert child_path(tmp_path, "alias", "x.png") == tmp_path / "alias" / "x.png"
    # the root itself may be a link (e.g. runs -> /data/runs): only what is below it counts
    root = tmp_path / "root_link"
    root.symlink_to(tmp_path / "real", target_is_directory=True)
    assert child_path(root, "f.json") == root / "f.json"


def test_links_that_lead_out_are_refused(tmp_path):
    root, outside = tmp_path / "out", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "figures").symlink_to(outside, target_is_directory=True)
    (root / "file.json").symlink_to(outside / "victim.json")
    (root / "inner").mkdir()
    (root / "inner" / "up").symlink_to(tmp_path, target_is_directory=True)
    for names in (("figures", "a.png"), ("file.json",), ("inner", "up", "x")):
        with pytest.raises(SteerscopeError, match=r"is a symbolic link to .* outside .*; "
                                                  r"steerscope writes only inside"):
            child_path(root, *names)
    assert list(outside.iterdir()) == []
    # what a writer does with the checked path stays inside
    atomic_write_json(child_path(root, "inner", "ok.json"), {"a": 1})
    assert (root / "inner" / "ok.json").is_file()
