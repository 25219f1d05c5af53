"""The Slicer side that cannot run here (Qt): module files are complete and consistent,
every script is listed for the build, the .ui files hold every widget the code uses, and no
module imports a heavy package at load time."""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT

MODULES = ["BrainSpineAI", "BrainSpineAISegment", "BrainSpineAITrain"]
HEAVY = {"torch", "monai", "open_clip", "cv2", "sklearn", "skimage", "SimpleITK", "torchvision", "brainspineai"}


@pytest.mark.parametrize("module", MODULES)
def test_module_has_template_classes_and_light_imports(module):
    tree = ast.parse((ROOT / module / f"{module}.py").read_text())
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {module, f"{module}Widget", f"{module}Logic", f"{module}Test"} <= classes
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module.split(".")[0]]
        assert not set(names) & HEAVY, f"{module}.py imports {names} at module level"


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_every_script_and_resource(module):
    folder = ROOT / module
    cmake = (folder / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"^\s+([\w./-]+\.(?:py|ui|png|json|safetensors))\s*$", cmake, re.M))
    listed = {s.replace("${MODULE_NAME}", module) for s in listed} | {f"{module}.py"}
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*.py") if "__pycache__" not in p.parts}
    on_disk |= {str(p.relative_to(folder)) for p in folder.rglob("zoo/*/*") if p.is_file()}
    assert on_disk <= listed, f"not listed in {module}/CMakeLists.txt: {sorted(on_disk - listed)}"
    for res in (f"Resources/Icons/{module}.png", f"Resources/UI/{module}.ui"):
        assert res.replace(module, "${MODULE_NAME}") in cmake and (folder / res).is_file()


HELPERS = ROOT / "BrainSpineAI" / "BrainSpineAILib" / "widget_helpers.py"


def helper_widgets() -> dict:
    """``{mixin class name: {self.ui names it uses}}`` of BrainSpineAILib/widget_helpers.py."""
    source = HELPERS.read_text()
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = set(re.findall(r"self\.ui\.(\w+)", ast.get_source_segment(source, node)))
    return out


def widget_bases(module) -> list:
    tree = ast.parse((ROOT / module / f"{module}.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}Widget")
    return [b.id for b in cls.bases if isinstance(b, ast.Name)]


@pytest.mark.parametrize("module", MODULES)
def test_ui_defines_every_widget_the_code_uses(module):
    """Widgets named in the module's script and in the shared mixins its widget class uses."""
    ui = ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui")
    names = {w.get("name") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (ROOT / module / f"{module}.py").read_text()))
    assert used <= names, f"widgets used but not in the .ui: {sorted(used - names)}"
    helpers = helper_widgets()
    bases = widget_bases(module)
    assert "ModuleWidgetMixin" in bases and "ScriptedLoadableModuleWidget" in bases
    assert bases.index("ModuleWidgetMixin") < bases.index("ScriptedLoadableModuleWidget")  # its enter/exit/onReload win
    for base in bases:
        missing = helpers.get(base, set()) - names
        assert not missing, f"{base} (widget_helpers.py) uses widgets {module}.ui lacks: {sorted(missing)}"
    assert helpers["ModelListMixin"] >= {"modelSelector", "modelCardLabel", "refreshModelsButton"}


@pytest.mark.parametrize("module", MODULES)
def test_widget_files_hold_their_own_panel_only(module):
    """The plumbing lives in widget_helpers: no module re-implements the parameter node
    connection, the model list or the QTimer polling."""
    source = (ROOT / module / f"{module}.py").read_text()
    for own in ("def setParameterNode", "def refreshModels", "def _selectModel", "qt.QTimer", "def _tryRun",
                "def _installTorch", "connectGui("):
        assert own not in source, f"{module}.py still has {own!r} (use BrainSpineAILib.widget_helpers)"


def slicer_loaded_files():
    for module in MODULES:
        for path in (ROOT / module).rglob("*.py"):
            if "brainspineai" not in path.parts and "__pycache__" not in path.parts:
                yield path


def test_no_scene_collection_leaks():
    """``vtkMRMLScene.GetNodesByClass`` returns a collection Python never frees; only
    mrml_utils' wrapper (which releases it) may call it."""
    for path in slicer_loaded_files():
        if path.name == "mrml_utils.py":
            continue
        assert ".GetNodesByClass(" not in path.read_text(), f"{path}: use mrml_utils.nodes_by_class / slicer.util.getNodesByClass"


def test_installs_ask_once():
    """The user confirms an install once (DependencyMixin.ensureDependencies asks); PyTorch's
    helper must not ask again."""
    source = (ROOT / "BrainSpineAI" / "BrainSpineAILib" / "dependencies.py").read_text()
    assert "installTorch(askConfirmation=False" in source and "askConfirmation=True" not in source
    assert "askConfirmation=True" not in HELPERS.read_text()
    for module in MODULES:
        assert "askConfirmation=True" not in (ROOT / module / f"{module}.py").read_text()


@pytest.mark.parametrize("module", MODULES)
def test_contributors_name_their_organisation(module):
    from BrainSpineAILib.module_support import CONTRIBUTORS

    assert CONTRIBUTORS and all(re.fullmatch(r"[^()]+ \([^()]+\)", c) for c in CONTRIBUTORS)
    assert "self.parent.contributors = list(CONTRIBUTORS)" in (ROOT / module / f"{module}.py").read_text()


def test_reload_forgets_the_lib_packages():
    """Developer-mode Reload re-imports each module's *Lib packages (Slicer's own reload
    re-executes the module script only)."""
    import types

    from BrainSpineAILib.module_support import RELOAD_PACKAGES, purgePackages

    assert set(RELOAD_PACKAGES) == set(MODULES)
    for module, packages in RELOAD_PACKAGES.items():
        assert f"{module}Lib" in packages and "BrainSpineAILib" in packages
    modules = {name: types.ModuleType(name) for name in (
        "BrainSpineAILib", "BrainSpineAILib.background", "BrainSpineAISegmentLib", "BrainSpineAISegmentLib.segment_logic",
        "BrainSpineAILibrary", "brainspineai", "brainspineai.catalogue")}
    removed = purgePackages(RELOAD_PACKAGES["BrainSpineAISegment"], modules)
    assert removed == ["BrainSpineAILib", "BrainSpineAILib.background", "BrainSpineAISegmentLib",
                       "BrainSpineAISegmentLib.segment_logic"]
    assert set(modules) == {"BrainSpineAILibrary", "brainspineai", "brainspineai.catalogue"}
    assert "purgePackages(RELOAD_PACKAGES.get(self.moduleName" in HELPERS.read_text()
    assert "ScriptedLoadableModuleWidget.onReload(self)" in HELPERS.read_text()


def test_extension_cmake_adds_all_modules():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_DEPENDS"):
        assert f"set({var}" in cmake
    for module in MODULES:
        assert f"add_subdirectory({module})" in cmake
    assert (ROOT / "Resources" / "BrainSpineAI.png").is_file()


class _FakeTimer:
    """Stands in for qt.QTimer: the test fires it by hand."""

    def __init__(self):
        self.active, self.interval, self.slot = False, None, None

    def setInterval(self, ms):
        self.interval = ms

    def connect(self, signal, slot):
        assert signal == "timeout()"
        self.slot = slot

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def fire(self):
        assert self.active
        self.slot()


@pytest.fixture
def helpers(monkeypatch):
    """BrainSpineAILib.widget_helpers imported with Qt and Slicer's application classes
    replaced by stand-ins (QTimer above, a ScriptedLoadableModuleWidget recording Reload)."""
    import importlib
    import sys
    import types

    pytest.importorskip("slicer", reason="slicer-core is not installed")
    qt = types.ModuleType("qt")
    qt.QTimer = _FakeTimer
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModuleWidget:
        reloaded = []

        def onReload(self):
            self.reloaded.append(self.moduleName)

    slm.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.delitem(sys.modules, "BrainSpineAILib.widget_helpers", raising=False)
    module = importlib.import_module("BrainSpineAILib.widget_helpers")
    yield module
    sys.modules.pop("BrainSpineAILib.widget_helpers", None)


CHILD = r"""
import json, sys, time
for i in range(1, 4):
    print(json.dumps({"event": "progress", "fraction": i / 4, "message": f"step {i}"}), flush=True)
    time.sleep(0.2)
if sys.argv[1] == "sleep":
    time.sleep(60)
print(json.dumps({"event": "done", "result": {"ok": True}}), flush=True)
"""


def test_job_poller_drives_a_real_background_job(helpers):
    import sys
    import time

    from BrainSpineAILib.background import BackgroundJob

    seen, ended = [], []
    poller = helpers.JobPoller(250, lambda job: seen.append(job.fraction), lambda job, ctx: ended.append((job, ctx)))
    assert poller._timer.interval == 250 and not poller.running
    job = BackgroundJob([sys.executable, "-c", CHILD, "finish"])
    poller.start(job, kind="segment")
    with pytest.raises(RuntimeError, match="still running"):
        poller.start(BackgroundJob([sys.executable, "-c", "pass"]))  # one job at a time: never replaced
    t0 = time.time()
    while poller.running and time.time() - t0 < 60:
        poller._timer.fire()
        time.sleep(0.05)
    assert not poller.running and not poller._timer.active
    assert seen == sorted(seen) and any(0 < f < 1 for f in seen)  # progress shown while it ran
    (got, ctx), = ended
    assert got is job and job.result == {"ok": True} and ctx["kind"] == "segment" and ctx["seconds"] > 0.4

    slow = BackgroundJob([sys.executable, "-c", CHILD, "sleep"])
    poller.start(slow)
    poller._timer.fire()
    assert poller.cancel() is slow and slow.cancelled and slow.process.poll() is not None
    assert not poller.running and len(ended) == 1  # a cancelled job does not "finish"


def test_scene_close_and_reload_cancel_the_running_job(helpers):
    import sys
    import types

    from BrainSpineAILib.background import BackgroundJob

    class Label:
        text = ""

    class Bar:
        value = None

        def setValue(self, v):
            self.value = v

    class Widget(helpers.ModuleWidgetMixin, sys.modules["slicer.ScriptedLoadableModule"].ScriptedLoadableModuleWidget):
        moduleName = "BrainSpineAISegment"
        buttons = 0

        def updateButtons(self, caller=None, event=None):
            self.buttons += 1

    w = Widget()
    w.initModuleWidget()
    w.ui = types.SimpleNamespace(statusLabel=Label(), progressBar=Bar())
    w.parent = types.SimpleNamespace(isEntered=False)
    poller = w.newPoller(100, w.showJobProgress, lambda job, ctx: None)
    job = BackgroundJob([sys.executable, "-c", CHILD, "sleep"])
    poller.start(job)
    import time

    t0 = time.time()
    while not job.events and time.time() - t0 < 30:
        poller._timer.fire()
        time.sleep(0.05)
    assert w.ui.progressBar.value in (25, 50, 75) and w.ui.statusLabel.text.startswith("step ")
    w.onSceneStartClose(None, None)
    assert job.cancelled and job.process.poll() is not None and not poller.running
    assert w.ui.statusLabel.text == "Cancelled: the scene was closed." and w._parameterNode is None
    # Reload: the running job is cancelled, the *Lib packages forgotten, then Slicer's reload
    again = BackgroundJob([sys.executable, "-c", CHILD, "sleep"])
    poller.start(again)
    fake = types.ModuleType("BrainSpineAISegmentLib.fake")
    sys.modules["BrainSpineAISegmentLib.fake"] = fake
    saved = {k: v for k, v in sys.modules.items() if k.startswith(("BrainSpineAILib", "BrainSpineAISegmentLib"))}
    try:
        w.onReload()
        assert again.cancelled and w.reloaded == ["BrainSpineAISegment"]
        assert "BrainSpineAISegmentLib.fake" not in sys.modules and "BrainSpineAILib.background" not in sys.modules
    finally:
        saved.pop("BrainSpineAISegmentLib.fake")
        sys.modules.update(saved)  # the other tests keep the modules they imported
