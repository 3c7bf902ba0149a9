"""The prompt-side flags of the commands: --present / --absent, refusal's --harmful /
--harmless kept as hidden aliases of the same options."""

from __future__ import annotations

import argparse

from steerscope.cli import common


def _parser(flag="{}"):
    p = argparse.ArgumentParser()
    common.add_prompt_pair(p, "x", flag=flag, sets={"present_x": "pres.txt",
                                                    "absent_x": "abs.txt"})
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


def test_defaults_are_refusals_sets_and_renamed_options_keep_their_old_flag():
    """The default prompt sets come from data.readers.REFUSAL_SETS; --absent-shown (earlier
    --harmless-refuse) takes both spellings, the old one hidden."""
    from steerscope.cli import build_parser
    from steerscope.data.readers import REFUSAL_SETS, SPLIT_SETS

    parser = build_parser()
    base = ["vectors", "train", "m", "--objective", "ntp", "--dim", "d", "--out", "o"]
    args = parser.parse_args(base)
    assert (args.present, args.absent) == (REFUSAL_SETS["present_train"],
                                           REFUSAL_SETS["absent_train"])
    assert (args.present_val, args.absent_val) == (REFUSAL_SETS["present_val"],
                                                   REFUSAL_SETS["absent_val"])
    assert args.absent_shown == "instruction"
    assert parser.parse_args(base + ["--harmless-refuse", "dim"]).absent_shown == "dim"
    assert parser.parse_args(base + ["--absent-shown", "dim"]).absent_shown == "dim"
    ev = parser.parse_args(["evaluate", "m"])
    assert (ev.present, ev.absent) == ("jailbreakbench", "harmless_test")
    patch = parser.parse_args(["patch", "m", "--vector", "v", "--out", "o"])
    assert patch.present == SPLIT_SETS["present_test"] == "harmful_test"
