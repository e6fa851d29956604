"""What a new learner sees in a real kernel: no JupySQL configuration "Tip", and hints and worked
answers as formatted text (HTML, which wraps at word boundaries) with a plain-text fallback."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def _run(*sources: str) -> list[list[dict]]:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    # Run where the learners' notebooks run: JupySQL looks for its settings from there upwards.
    NotebookClient(nb, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    return [cell.outputs for cell in nb.cells]


def _texts(outputs: list[dict]) -> str:
    return "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)


def test_sql_magic_loads_without_a_tip_and_hints_render_as_formatted_text():
    load, hint, solution = _run("%load_ext sql",
                                "from zdlab.exercises.nb00 import ex\nex.q1.hint()",
                                "ex.q1.solution()")
    assert "Tip" not in _texts(load), _texts(load)
    assert "configuration guideline" not in _texts(load)

    (shown,) = hint
    assert shown["output_type"] == "display_data"
    assert "<b>Hint 1 of 3:</b>" in shown["data"]["text/html"]
    assert shown["data"]["text/plain"].startswith("Hint 1 of 3:")

    (shown,) = solution
    assert "<pre" in shown["data"]["text/html"] and "starts_with(application_name" in shown["data"]["text/html"]
    assert shown["data"]["text/plain"].startswith("Worked answer:")
