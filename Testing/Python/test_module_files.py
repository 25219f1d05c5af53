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


@pytest.mark.parametrize("module", MODULES)
def test_ui_defines_every_widget_the_code_uses(module):
    ui = ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui")
    names = {w.get("name") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (ROOT / module / f"{module}.py").read_text()))
    assert used <= names, f"widgets used but not in the .ui: {sorted(used - names)}"


def test_extension_cmake_adds_all_modules():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_DEPENDS"):
        assert f"set({var}" in cmake
    for module in MODULES:
        assert f"add_subdirectory({module})" in cmake
    assert (ROOT / "Resources" / "BrainSpineAI.png").is_file()
