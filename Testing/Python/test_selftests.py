"""The modules' self-tests ("Reload and Test" in Slicer) cannot run here (they need Slicer's
application, SampleData and Qt); this checks their shape so none can pass without testing:
runTest runs every test method, each test method takes Slicer's sample data and goes through a
background process, and none returns early (the old "no data -> delayDisplay and return")."""
from __future__ import annotations

import ast

import pytest

from conftest import ROOT

MODULES = ["BrainSpineAI", "BrainSpineAISegment", "BrainSpineAITrain"]


def selftest_class(module, source=None):
    tree = ast.parse(source if source is not None else (ROOT / module / f"{module}.py").read_text(encoding="utf-8"))
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}Test")


def _calls(node) -> set:
    return {n.func.attr for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}


def problems(cls) -> list:
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    tests = {name for name in methods if name.startswith("test_")}
    out = [] if tests else ["no test method"]
    missed = tests - _calls(methods["runTest"]) if "runTest" in methods else tests
    out += [f"runTest skips {name}" for name in sorted(missed)]
    for name in sorted(tests):
        out += [f"{name} returns at line {n.lineno}" for n in ast.walk(methods[name]) if isinstance(n, ast.Return)]
    return out


def test_the_shape_check_catches_the_old_silent_skip():
    old = (
        "class XTest:\n"
        "    def runTest(self):\n        self.test_A()\n"
        "    def test_A(self):\n        if self._findTestData() is None:\n"
        "            self.delayDisplay('shared data not found, skipping')\n            return\n"
        "    def test_B(self):\n        pass\n")
    assert problems(selftest_class("X", old)) == ["runTest skips test_B", "test_A returns at line 7"]


@pytest.mark.parametrize("module", MODULES)
def test_self_test_runs_every_test_and_never_skips_silently(module):
    cls = selftest_class(module)
    assert problems(cls) == []
    source = ast.unparse(cls)
    assert "BRAINSPINEAI_TEST_DATA" not in source and "shared" not in source, "self-tests use Slicer's SampleData only"


@pytest.mark.parametrize("module, samples, background", [
    ("BrainSpineAI", {"MRBrainTumor1", "MRHead"}, {"startBackgroundClassification", "finishBackgroundClassification"}),
    ("BrainSpineAISegment", {"MRBrainTumor1"}, {"startSegmentation", "finishSegmentation", "cancel"}),
    ("BrainSpineAITrain", {"MRBrainTumor1", "MRHead"}, {"startRun", "updateCurves", "startBackgroundClassification"}),
])
def test_self_test_uses_sample_data_and_the_background_process(module, samples, background):
    cls = selftest_class(module)
    strings = {n.value for n in ast.walk(cls) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert samples <= strings, f"{module}Test does not load {samples - strings}"
    calls = _calls(cls)
    assert "downloadSamples" in calls and "ensureDependencies" in calls
    assert background <= calls, f"{module}Test does not call {background - calls}"
    # every background job is waited for with a time limit and GUI events processed
    assert "processEvents" in calls and "fail" in calls
