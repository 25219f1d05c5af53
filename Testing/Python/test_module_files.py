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
    source = HELPERS.read_text()
    assert "installTorch(askConfirmation=False)" in source and "askConfirmation=True" not in source
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
