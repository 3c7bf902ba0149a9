"""The shared input limits: :mod:`steerscope.validation`'s numeric ranges and
:mod:`steerscope.safe_files`' readers, each compared with a plain restatement of the rule, and
:mod:`steerscope.errors`' one-line OS errors for EFBIG and names that are too long."""

from __future__ import annotations

import errno
import math
import os
import re

import pytest
from safetensors import SafetensorError

from steerscope.errors import DataError, SteerscopeError, os_error_code, write_error
from steerscope.safe_files import (
    MAX_NESTING,
    MAX_YAML_NODES,
    nesting_depth,
    parse_json,
    parse_yaml,
    read_text_file,
    read_yaml_file,
)
from steerscope.validation import (
    MAX_NEW_TOKENS,
    NUMBER_RANGES,
    NumberRange,
    check_number,
    number_range,
    parse_number_list,
)


# --- numeric ranges ----------------------------------------------------------------------------
def _inside(rng: NumberRange, x) -> bool:
    """The rule restated: finite, the right kind, between the bounds (open or closed)."""
    if isinstance(x, float) and not math.isfinite(x):
        return False
    if rng.integer and not isinstance(x, int):
        return False
    low_ok = rng.low is None or (x > rng.low if rng.low_open else x >= rng.low)
    high_ok = rng.high is None or (x < rng.high if rng.high_open else x <= rng.high)
    return low_ok and high_ok


PROBES = [-(2**64), -1e5, -1, -0.5, 0, 0.0, 1e-9, 0.5, 1, 1.0, 1.5, 2, 4096, 4097, 32768,
          32769, 10**7, 10**7 + 1, 2**32 - 1, 2**32, 1e39, float("nan"), float("inf"), -0.0]


@pytest.mark.parametrize("name", sorted(NUMBER_RANGES))
def test_every_range_accepts_exactly_its_values(name):
    rng = NUMBER_RANGES[name]
    for x in PROBES:
        assert rng.contains(x) == _inside(rng, x), (name, x)
        if rng.contains(x):
            assert check_number(x, f"--{name}") == x
        else:
            with pytest.raises(SteerscopeError, match=f"^--{name} must be "):
                check_number(x, f"--{name}")


def test_names_and_fallbacks():
    assert number_range("bypass_alpha") == number_range("alpha") == number_range("induce_alpha")
    assert number_range("alpha").contains(-1e4) and not number_range("alpha").contains(1e4 + 1)
    assert number_range("layer") is None
    assert check_number(2**63 - 1, "x.layer") == 2**63 - 1  # unlisted ints: within int64
    with pytest.raises(SteerscopeError, match=r"x.layer must be an integer in \["):
        check_number(2**63, "x.layer")
    with pytest.raises(SteerscopeError, match="x.position must be a finite number, got nan"):
        check_number(float("nan"), "x.position")
    assert check_number("ten", "x.n") == "ten"  # not a number: the type checks own it
    assert check_number(True, "x.n") is True


def test_messages_name_the_option_the_range_and_the_value():
    with pytest.raises(SteerscopeError) as info:
        check_number(10**9, "config key 'evaluation.max_new_tokens'", "max_new_tokens")
    assert str(info.value) == (f"config key 'evaluation.max_new_tokens' must be a positive "
                               f"integer (at most {MAX_NEW_TOKENS}), got 1000000000: pass a "
                               "value in that range for config key 'evaluation.max_new_tokens'.")
    with pytest.raises(SteerscopeError, match=r"got an integer of 5001 digits"):
        check_number(10**5000, "--seed")
    with pytest.raises(SteerscopeError, match=r"^--fractions must be a finite number in \[0, "
                                              r"1\), got 1.5"):
        parse_number_list("0.5, 1.5", "--fractions")
    assert parse_number_list("0, 0.5,", "--taus") == [0.0, 0.5]
    assert parse_number_list(" ", "--taus") == []
    with pytest.raises(SteerscopeError, match="not a comma-separated list"):
        parse_number_list("0,x", "--taus")


# --- files -------------------------------------------------------------------------------------
def test_text_files_regular_utf8_and_capped(tmp_path):
    ok = tmp_path / "ok.txt"
    ok.write_bytes("\ufeffhé\n".encode())
    assert read_text_file(ok, "prompt file") == "hé\n"  # BOM dropped
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    cases = {fifo: "is not a regular file", tmp_path: "is a directory",
             tmp_path / "missing.txt": "does not exist"}
    (tmp_path / "u16.txt").write_bytes("hi".encode("utf-16"))
    cases[tmp_path / "u16.txt"] = "is not UTF-8 text (invalid start byte at byte 0)"
    (tmp_path / "nul.txt").write_bytes(b"a\x00b")
    cases[tmp_path / "nul.txt"] = "is not UTF-8 text (a NUL byte at character 1"
    for path, needle in cases.items():
        with pytest.raises(DataError, match=r"^prompt file .*" + re.escape(needle)):
            read_text_file(path, "prompt file", error=DataError)
    with pytest.raises(SteerscopeError, match="is 7 bytes, more than the limit of 4"):
        read_text_file(ok, "config file", max_bytes=4)


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize("depth", [1, MAX_NESTING, MAX_NESTING + 1, 5000])
def test_nesting_limit_json_and_yaml(depth):
    ok = depth <= MAX_NESTING
    for parse in (parse_json, parse_yaml):
        if ok:
            data = parse(_nested(depth), "f", "x.json")
            assert nesting_depth(data) == depth
        else:
            with pytest.raises(SteerscopeError, match=f"nests more than {MAX_NESTING} levels"):
                parse(_nested(depth), "f", "x.json")


def test_nesting_depth_counts_dicts_and_lists():
    assert nesting_depth(1) == 0
    assert nesting_depth({"a": [1, {"b": []}]}) == 4
    assert nesting_depth([[], [[[]]]]) == 4


def _expanded_size(text: str) -> int:
    """Nodes of the YAML document with every alias expanded, by brute force on the composed
    graph (no memo)."""
    import yaml

    def size(node) -> int:
        if isinstance(node, yaml.SequenceNode):
            return 1 + sum(size(c) for c in node.value)
        if isinstance(node, yaml.MappingNode):
            return 1 + sum(size(k) + size(v) for k, v in node.value)
        return 1

    return size(yaml.compose(text, Loader=yaml.SafeLoader))


def _bomb(levels: int, width: int) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]"
              for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels,width", [(2, 3), (4, 10), (5, 10), (10, 9)])
def test_alias_budget_matches_the_expanded_size(levels, width):
    text = _bomb(levels, width)
    if levels <= 5:  # brute force only where it is cheap
        expected_ok = _expanded_size(text) <= MAX_YAML_NODES
    else:
        expected_ok = False
    if expected_ok:
        assert parse_yaml(text, "config file", "c.yaml")["a0"] == ["x"] * width
    else:
        with pytest.raises(SteerscopeError, match="expands to more than 100000 values"):
            parse_yaml(text, "config file", "c.yaml")


def test_yaml_errors_are_one_line(tmp_path):
    cases = {"a: &x [*x]\n": "alias inside its own anchor",
             "a: [1\n": "is not valid YAML at line",
             "a: " + "9" * 5000 + "\n": "holds a value Python cannot read"}
    for text, needle in cases.items():
        with pytest.raises(SteerscopeError, match=needle) as info:
            parse_yaml(text, "behaviour file", "b.yaml")
        assert "\n" not in str(info.value)
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\nb: [x, y]\n")
    assert read_yaml_file(path, "config file") == {"a": 1, "b": ["x", "y"]}
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_file(tmp_path / "empty.yaml", "config file") is None


# --- OS errors ---------------------------------------------------------------------------------
def test_efbig_and_long_names_are_one_line(tmp_path):
    wrapped = SafetensorError('Error while serializing: IoError(Os { code: 27, kind: '
                              'FileTooLarge, message: "File too large" })')
    assert os_error_code(wrapped) == errno.EFBIG
    assert os_error_code(ValueError("unrelated")) is None
    msg = str(write_error(wrapped, tmp_path / "v.safetensors"))
    assert msg.startswith(f"cannot write {tmp_path / 'v.safetensors'}: the file is larger than "
                          "the file-size limit")
    long = tmp_path / ("n" * 300) / "x.json"
    try:
        long.parent.mkdir()
    except OSError as exc:
        msg = str(write_error(exc, long))
    assert "is too long for the file system" in msg and "\n" not in msg and len(msg) < 300
