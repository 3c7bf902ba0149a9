"""Relative paths in a pipeline config file mean files next to that file: the raw YAML
data with such paths made absolute (read by :func:`steerscope.pipeline.config.load_config`)."""

from __future__ import annotations

import os
from pathlib import Path

from steerscope.results_schema import today_name

PATH_KEYS = (("model", "source"), ("data", "data_dir"), ("data", "present_train"),
             ("data", "absent_train"), ("data", "present_val"), ("data", "absent_val"),
             ("data", "present_test"), ("data", "absent_test"), ("evaluation", "judge"))
TOP_PATH_KEYS = ("behaviour",)  # a behaviour YAML file


def anchor_paths(data: dict, folder: Path) -> dict:
    """The raw config ``data`` of a YAML file in ``folder`` with each relative path that
    exists next to the config (model source, prompt files, data_dir, a judge folder, also
    after ``classifier:``/``chat:``; the top-level ``behaviour`` file) made absolute, so a
    config means the same files from any working folder. Names (``default``, ``refusal``,
    datasets, Hub ids) and absolute paths are kept."""
    out = dict(data)
    for key in TOP_PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value.strip():
            path = Path(value).expanduser()
            if not path.is_absolute() and (folder / path).is_file():
                out[key] = os.path.abspath(folder / path)
    wanted = set(PATH_KEYS)
    paths = [(section, key) for section, sub in out.items() if isinstance(sub, dict)
             for key in sub if (section, today_name(str(key))) in wanted]  # old spellings too
    for section, key in paths:
        sub = out[section]
        value = sub.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        prefix, sep, rest = value.partition(":")
        if not (sep and prefix in ("classifier", "chat", "builtin")):
            prefix, rest = "", value
        path = Path(rest).expanduser()
        if path.is_absolute() or not (folder / path).exists():
            continue
        anchored = os.path.abspath(folder / path)  # normalised: no ".." left
        out[section] = {**sub, key: f"{prefix}:{anchored}" if prefix else anchored}
    return out
