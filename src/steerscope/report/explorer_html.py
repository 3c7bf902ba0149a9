"""The circuit explorer's HTML: one self-contained section of report.html, with the
vendored D3 (version :data:`D3_VERSION`, ISC licence, ``static/LICENSE.d3``), the explorer's
script and style and the data inlined, so the page needs no network. The data come from
:func:`steerscope.report.explorer.run_explorer_data`."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

D3_VERSION = "7.9.2"
SECTION_TITLE = "Circuit explorer"


def _static(name: str) -> str:
    return resources.files("steerscope.report").joinpath("static", name).read_text(
        encoding="utf-8")


def _script_json(data: dict) -> str:
    """JSON safe inside a ``<script>`` element (every ``<`` escaped as ``\\u003c``)."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c")


def explorer_section(data: dict[str, Any]) -> str:
    """The explorer's HTML (heading, container, inlined D3, data, script and style)."""
    return (
        f'<a id="circuit-explorer"></a><h2>{SECTION_TITLE}</h2>'
        '<p class="meta">Interactive: the circuit of each patched vector along its '
        "faithfulness curve, node details, one example's per-position metric, the vectors "
        f"compared, and the curves. Drawn with D3 {D3_VERSION} (ISC licence), inlined.</p>"
        f"<style>{_static('explorer.css')}</style>"
        '<div id="explorer"></div>'
        f'<script type="application/json" id="explorer-data">{_script_json(data)}</script>'
        f"<script>/* D3 {D3_VERSION}, https://d3js.org, ISC licence (c) Mike Bostock */\n"
        f"{_static('d3.min.js')}</script>"
        f"<script>{_static('explorer.js')}</script>"
    )
