"""The suite's own configuration: the quick loop (``pytest -m "not slow"``) leaves out only the
tests marked slow, and CI (the README's test command) runs every test."""
from __future__ import annotations

import ast
import shlex

from conftest import ROOT


def _slow_tests() -> set:
    """``file::function`` of the tests marked slow; the convention is one ``@pytest.mark.slow``
    per test function, so a module- or class-wide slow mark (which this scan would miss) fails."""
    out = set()
    for path in (ROOT / "Testing" / "Python").glob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            wide = (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
                    and "slow" in ast.unparse(node.value)) or (isinstance(node, ast.ClassDef) and "slow" in ast.unparse(node))
            assert not wide, f"{path.name}: mark slow tests one by one"
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and any(ast.unparse(d) == "pytest.mark.slow" for d in node.decorator_list):
                out.add(f"{path.name}::{node.name}")
    return out


def test_ci_runs_every_test_and_the_quick_loop_leaves_out_only_the_slow_ones(pytestconfig):
    command = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1].replace(" --quiet", "")  # pip's verbosity aside
    assert command.endswith("&& python3 -m pytest") and command in (ROOT / "README.md").read_text(encoding="utf-8")
    addopts = shlex.split(" ".join(pytestconfig.getini("addopts")))
    assert "--strict-markers" in addopts  # a misspelt mark is an error, not a test quietly left in the quick loop
    assert not {"-m", "-k"} & set(addopts) and not any(a.startswith(("-m", "-k")) for a in addopts)  # CI deselects nothing
    assert any(m.startswith("slow:") for m in pytestconfig.getini("markers"))
    slow = _slow_tests()
    assert len(slow) >= 40 and "test_slicer_logic.py::test_brats_volume_in_a_background_process" in slow
    assert "test_bad_inputs.py::test_bad_input_is_refused" not in slow  # the bad-input table stays in the quick loop
