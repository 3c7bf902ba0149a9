"""The prompt-side flags of the commands: --present / --absent, refusal's --harmful /
--harmless kept as hidden aliases of the same options."""

from __future__ import annotations

import argparse

from steerscope.cli import common


def _parser(flag="{}"):
    p = argparse.ArgumentParser()
    common.add_prompt_pair(p, "pres.txt", "abs.txt", flag=flag)
    return p


def test_new_and_old_spellings_set_the_same_option():
    p = _parser()
    assert vars(p.parse_args([])) == {"present": "pres.txt", "absent": "abs.txt"}
    assert vars(p.parse_args(["--present", "a", "--absent", "b"])) == \
        vars(p.parse_args(["--harmful", "a", "--harmless", "b"])) == {"present": "a", "absent": "b"}
    v = _parser("{}-val")
    assert vars(v.parse_args(["--harmful-val", "x"])) == {"present_val": "x",
                                                          "absent_val": "abs.txt"}
    help_text = p.format_help()
    assert "--present" in help_text and "--harmful" not in help_text  # the alias is hidden


def test_a_real_command_takes_both_spellings():
    from steerscope.cli import build_parser

    parser = build_parser()
    new = parser.parse_args(["freeze", "m", "--vector", "v", "--present", "a", "--absent", "b"])
    old = parser.parse_args(["freeze", "m", "--vector", "v", "--harmful", "a", "--harmless", "b"])
    assert (new.present, new.absent) == (old.present, old.absent) == ("a", "b")
