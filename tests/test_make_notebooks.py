"""The learners' notebooks are generated from solutions/ and must not drift from them."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "make_notebooks.py"

_spec = importlib.util.spec_from_file_location("make_notebooks", SCRIPT)
mk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mk)


def _nb(*cells) -> nbformat.NotebookNode:
    return new_notebook(cells=list(cells))


def _tagged(cell, *tags):
    cell.metadata["tags"] = list(tags)
    return cell


# -- the repository -------------------------------------------------------------------------


def test_repository_notebooks_match_their_solutions():
    found = mk.problems(ROOT / "solutions", ROOT / "notebooks")
    assert found == [], "run `make notebooks`:\n" + "\n".join(found)


def test_every_answer_variable_has_a_placeholder_in_the_learners_copy():
    """Run All on a learner's copy defines every answer its checks read, as ``...`` ("Not attempted
    yet"), and raises nothing: no cell of it is allowed to raise (nbval runs them)."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        answers = mk.notebook_answers(path.stem)
        assert answers, f"no exercises registered for {path.name}"
        cells = nbformat.read(path, as_version=4).cells
        code = "\n".join(c.source for c in cells if c.cell_type == "code")
        for name in answers:
            assert f"\n{name} = ...\n" in f"\n{code}\n", f"{path.name}: no placeholder for {name}"
        assert "raise NotImplementedError" not in code
        assert all("raises-exception" not in c.metadata.get("tags", []) for c in cells)


def test_check_mode_detects_drift_and_exits_1(tmp_path):
    sols, nbs = tmp_path / "solutions", tmp_path / "notebooks"
    shutil.copytree(ROOT / "solutions", sols)
    shutil.copytree(ROOT / "notebooks", nbs)
    target = sorted(nbs.glob("*.ipynb"))[0]
    nb = nbformat.read(target, as_version=4)
    nb.cells[0].source += "\nhand edit"
    nbformat.write(nb, target)
    (nbs / "stray.ipynb").write_text(mk.render(_nb(new_code_cell("1"))), encoding="utf-8")

    run = subprocess.run([sys.executable, str(SCRIPT), "--check", "--solutions", str(sols), "--notebooks", str(nbs)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert target.name in run.stdout and "differs" in run.stdout
    assert "extra" in run.stdout and "stray.ipynb" in run.stdout

    # Writing repairs both, and a second --check is clean.
    assert subprocess.run([sys.executable, str(SCRIPT), "--solutions", str(sols), "--notebooks", str(nbs)],
                          capture_output=True, timeout=60).returncode == 0
    assert not (nbs / "stray.ipynb").exists()
    assert mk.problems(sols, nbs) == []


def test_check_mode_flags_outputs_left_in_a_solution(tmp_path):
    sols, nbs = tmp_path / "solutions", tmp_path / "notebooks"
    sols.mkdir()
    cell = new_code_cell("print('hi')", execution_count=3, outputs=[new_output("stream", name="stdout", text="hi\n")])
    nbformat.write(_nb(cell), sols / "01_x.ipynb")
    mk.write(sols, nbs)
    assert mk.problems(sols, nbs) == []
    written = nbformat.read(sols / "01_x.ipynb", as_version=4)
    assert written.cells[0].outputs == [] and written.cells[0].execution_count is None

    cell = written.cells[0]
    cell.outputs, cell.execution_count = [new_output("stream", name="stdout", text="hi\n")], 1
    nbformat.write(written, sols / "01_x.ipynb")
    assert mk.problems(sols, nbs) == ["has outputs or is not normalised: " + str(sols / "01_x.ipynb")]


def test_missing_exercise_copy_is_reported(tmp_path):
    sols, nbs = tmp_path / "solutions", tmp_path / "notebooks"
    sols.mkdir()
    nbs.mkdir()
    (sols / "02_y.ipynb").write_text(mk.render(mk.clean(_nb(new_code_cell("1")))), encoding="utf-8")
    assert mk.problems(sols, nbs) == ["missing: " + str(nbs / "02_y.ipynb")]


# -- the transform ---------------------------------------------------------------------------


def test_solution_block_becomes_its_answer_set_to_a_placeholder():
    source = "x = 1\n### BEGIN SOLUTION\nanswer = x + 1\n### END SOLUTION\nprint(answer)"
    out = mk.exercise_version(_nb(new_code_cell(source)), answers={"answer"})
    cell = out.cells[0]
    assert cell.source == "x = 1\n# YOUR CODE HERE\nanswer = ...\nprint(answer)"
    assert "tags" not in cell.metadata  # nothing raises, so nothing to excuse


def test_a_function_answer_is_a_placeholder_and_its_helpers_are_not_shown():
    source = ("### BEGIN SOLUTION\nimport re\nHELPER_SQL = 'UPDATE ...'\n\n\ndef drop(conn, table):\n"
              "    for step in range(3):\n        conn.execute(HELPER_SQL)\n\n\nanswer_drop = drop\n### END SOLUTION")
    out = mk.exercise_version(_nb(new_code_cell(source)), answers={"answer_drop", "unused"})
    assert out.cells[0].source == "# YOUR CODE HERE\nanswer_drop = ..."
    out = mk.exercise_version(_nb(new_code_cell(source)), answers={"answer_drop", "drop"})
    assert out.cells[0].source == "# YOUR CODE HERE\ndrop = ...\nanswer_drop = ..."


def test_placeholder_keeps_indentation_and_existing_tags():
    source = "if True:\n    ### BEGIN SOLUTION\n    answer = 42\n    ### END SOLUTION"
    out = mk.exercise_version(_nb(_tagged(new_code_cell(source), "keep-me")), answers={"answer"})
    cell = out.cells[0]
    assert cell.source.splitlines() == ["if True:", "    # YOUR CODE HERE", "    answer = ..."]
    assert cell.metadata["tags"] == ["keep-me"]


def test_a_block_that_defines_no_answer_is_an_error():
    cell = new_code_cell("### BEGIN SOLUTION\nprint('the answer')\n### END SOLUTION")
    with pytest.raises(mk.MarkerError, match="defines none of this notebook's answer variables") as err:
        mk.exercise_version(_nb(new_markdown_cell("intro"), cell), "05_v.ipynb", answers={"answer_sql"})
    assert "05_v.ipynb, cell 1" in str(err.value) and "answer_sql" in str(err.value)


def test_cells_without_markers_are_untouched_and_untagged():
    out = mk.exercise_version(_nb(new_code_cell("ex.q1.check()"), new_markdown_cell("# Title")))
    assert [c.source for c in out.cells] == ["ex.q1.check()", "# Title"]
    assert "tags" not in out.cells[0].metadata


def test_solution_only_cells_are_dropped_from_the_exercise_copy():
    nb = _nb(new_code_cell("a = 1"), _tagged(new_code_cell("assert wrong"), "solution-only"),
             _tagged(new_markdown_cell("instructor note"), "solution-only"), new_code_cell("b = 2"))
    out = mk.exercise_version(nb)
    assert [c.source for c in out.cells] == ["a = 1", "b = 2"]
    assert len(nb.cells) == 4  # the source notebook is not modified


@pytest.mark.parametrize("source, words", [
    ("### BEGIN SOLUTION\nanswer = 1", "never closed"),
    ("answer = 1\n### END SOLUTION", "without a ### BEGIN SOLUTION"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "inside another solution block"),
])
def test_broken_markers_raise_a_clear_error(source, words):
    with pytest.raises(mk.MarkerError, match=words) as err:
        mk.exercise_version(_nb(new_markdown_cell("intro"), new_code_cell(source)), "03_z.ipynb",
                            answers={"answer"})
    assert "03_z.ipynb, cell 1" in str(err.value)


def test_broken_markers_make_the_command_fail(tmp_path):
    sols = tmp_path / "solutions"
    sols.mkdir()
    nbformat.write(_nb(new_code_cell("### BEGIN SOLUTION\nx = 1")), sols / "04_w.ipynb")
    run = subprocess.run([sys.executable, str(SCRIPT), "--solutions", str(sols), "--notebooks", str(tmp_path / "nb")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "04_w.ipynb, cell 0" in run.stderr and "never closed" in run.stderr
    assert "Traceback" not in run.stderr


def test_outputs_and_counts_are_cleared_in_both_versions():
    cell = new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", execution_count=7,
                         outputs=[new_output("stream", name="stdout", text="1\n")])
    cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    nb = _nb(cell)
    for out in (mk.clean(nb), mk.exercise_version(nb, answers={"x"})):
        assert out.cells[0].outputs == [] and out.cells[0].execution_count is None
        assert "execution" not in out.cells[0].metadata


def test_output_is_deterministic_bytes():
    nb = _nb(new_markdown_cell("intro"), new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"))
    for cell in nb.cells:
        del cell["id"]  # ids must then be derived, not random
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.7"}
    first = mk.render(mk.exercise_version(nb, answers={"x"}))
    assert first == mk.render(mk.exercise_version(nb, answers={"x"}))
    assert first.endswith("}\n")
    again = nbformat.reads(first, as_version=4)
    assert mk.render(mk.exercise_version(again, answers={"x"})) == first  # idempotent on its own output
    assert '"version"' not in first  # machine-specific metadata does not leak in
