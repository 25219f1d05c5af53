"""First-use installation of missing packages inside Slicer (with fake installers): one question,
PyTorch only through PyTorchUtils, pip only with constraints that keep Slicer's own packages."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from BrainSpineAILib import classification_logic as cl
from BrainSpineAILib import dependencies as dep

ROOT = Path(__file__).resolve().parents[2]


class PipRecorder:
    """Stands in for slicer.util.pip_install: records the arguments and the constraints file's text
    (the file is removed after the call)."""

    def __init__(self, missing=None):
        self.calls, self.constraints, self.missing = [], [], missing

    def __call__(self, args):
        assert isinstance(args, list), "pip gets a list (paths with spaces, no shell)"
        self.calls.append(args)
        i = args.index("-c")
        self.constraints.append(Path(args[i + 1]).read_text(encoding="utf-8").split())
        if self.missing is not None:
            self.missing[:] = [m for m in self.missing if dep.canonicalName(m) in dep.TORCH_PACKAGES]


def _missing(monkeypatch, missing):
    monkeypatch.setattr(cl.ClassificationLogic, "missingPackages", staticmethod(lambda features=(): list(missing)))


def test_nothing_is_installed_without_consent(monkeypatch):
    monkeypatch.setitem(dep.REQUIRED_PACKAGES, "no_such_module_xyz", "no-such-package-xyz>=1")
    asked, pip, torch = [], PipRecorder(), []
    ok = cl.ClassificationLogic(scene=None).ensureDependencies(
        confirm=lambda msg: asked.append(msg) or False, installTorch=lambda **kw: torch.append(kw), pipInstall=pip)
    assert ok is False
    assert len(asked) == 1 and "no-such-package-xyz>=1" in asked[0]
    assert pip.calls == [] and torch == []


def test_one_question_torch_through_pytorchutils_the_rest_through_pip_with_constraints(monkeypatch):
    missing = ["torch>=2.2", "torchvision>=0.17", "monai>=1.3", "lightning-fabric>=2.3"]
    _missing(monkeypatch, missing)
    asked, torchCalls = [], []

    def installTorch(**kwargs):
        torchCalls.append(kwargs)
        missing.remove("torch>=2.2")
        missing.remove("torchvision>=0.17")
        return object()

    pip = PipRecorder(missing)
    assert cl.ClassificationLogic(scene=None).ensureDependencies(lambda m: asked.append(m) or True, installTorch, pip)
    assert len(asked) == 1 and "PyTorch (torch, torchvision)" in asked[0] and "monai>=1.3" in asked[0]
    assert torchCalls == [{"torchVersionRequirement": ">=2.2", "torchvisionVersionRequirement": ">=0.17"}]
    assert len(pip.calls) == 1
    args = pip.calls[0]
    assert args[0] == "-c" and args[2:] == ["monai>=1.3", "lightning-fabric>=2.3"]
    assert not any(dep.canonicalName(a) in dep.TORCH_PACKAGES for a in args[2:]), "torch never goes through pip"
    pinned = dict(line.split("==", 1) for line in pip.constraints[0])
    import numpy

    assert pinned["numpy"] == numpy.__version__  # Slicer's numpy is kept, whatever pip would like
    assert not Path(args[1]).exists(), "the constraints file is removed afterwards"


def test_torch_is_never_installed_with_pip_when_pytorchutils_is_absent(monkeypatch):
    """Without the PyTorch extension: a clear error before asking anything, pip never runs."""
    _missing(monkeypatch, ["torch>=2.2", "torchvision>=0.17", "monai>=1.3"])
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import PyTorchUtils -> ImportError
    asked, pip = [], PipRecorder()
    with pytest.raises(RuntimeError, match="PyTorch extension"):
        cl.ClassificationLogic(scene=None).ensureDependencies(lambda m: asked.append(m) or True, pipInstall=pip)
    assert asked == [] and pip.calls == []


def test_default_installer_is_pytorchutils_without_a_second_question(monkeypatch):
    calls = []

    class Logic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):  # SlicerPyTorch's signature
            calls.append((askConfirmation, forceComputationBackend, torchVersionRequirement,
                          torchvisionVersionRequirement))
            return None  # the user cancelled in light-the-torch's dialog / installation failed

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=Logic))
    _missing(monkeypatch, ["torch>=2.2", "torchvision>=0.17"])
    with pytest.raises(RuntimeError, match="PyTorch is required"):
        cl.ClassificationLogic(scene=None).ensureDependencies(lambda m: True, pipInstall=PipRecorder())
    assert calls == [(False, None, ">=2.2", ">=0.17")]


@pytest.mark.parametrize("torch_version, expected", [
    ("2.5.1+cu121", {"torchVersionRequirement": "==2.5.1", "torchvisionVersionRequirement": "==0.20.*",
                     "forceComputationBackend": "cu121"}),
    ("2.7.0+cpu", {"torchVersionRequirement": "==2.7.0", "torchvisionVersionRequirement": "==0.22.*",
                   "forceComputationBackend": "cpu"}),
    ("2.4.1", {"torchVersionRequirement": "==2.4.1", "torchvisionVersionRequirement": "==0.19.*"}),
    ("1.13.1+cu117", {"torchVersionRequirement": "==1.13.1", "torchvisionVersionRequirement": "==0.14.*",
                      "forceComputationBackend": "cu117"}),
])
def test_missing_torchvision_matches_the_installed_torch_and_its_backend(monkeypatch, torch_version, expected):
    """Item 9: asking for the same torch (and CUDA backend) keeps it; torchvision follows it."""
    _missing(monkeypatch, ["torchvision>=0.17"])
    monkeypatch.setattr(dep, "installedVersion", lambda name: torch_version if name == "torch" else None)
    got = []
    assert cl.ClassificationLogic(scene=None).ensureDependencies(
        lambda m: True, lambda **kw: got.append(kw) or object(), PipRecorder()) is False  # fake: still missing
    assert got == [expected]


def test_torchvision_pairs_with_torch_releases():
    """PyTorch's table (github.com/pytorch/vision#installation): 2.0->0.15 ... 2.6->0.21, 1.12->0.13."""
    pairs = {"2.0.1": "0.15", "2.1.2": "0.16", "2.2.0": "0.17", "2.3.1": "0.18", "2.6.0": "0.21", "1.12.1": "0.13"}
    for torch_version, vision in pairs.items():
        assert dep.torchvisionRequirementFor(torch_version) == f"=={vision}.*"
    with pytest.raises(ValueError):
        dep.torchvisionRequirementFor("nightly")


def test_a_helper_of_the_first_version_is_replaced_by_pytorchutils(monkeypatch):
    """The widgets' first helper took no parameters and asked again (installTorch(askConfirmation=True)):
    PyTorchUtils is used instead, with the one question already asked."""
    calls = []

    class Logic:
        def installTorch(self, askConfirmation=False, **kwargs):
            calls.append(("pytorchutils", askConfirmation, kwargs))
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=Logic))
    _missing(monkeypatch, ["torch>=2.2", "torchvision>=0.17"])
    asked = []
    cl.ClassificationLogic(scene=None).ensureDependencies(lambda m: asked.append(m) or True,
                                                          lambda: calls.append("old helper") or object(), PipRecorder())
    assert calls == [("pytorchutils", False, {"torchVersionRequirement": ">=2.2",
                                              "torchvisionVersionRequirement": ">=0.17"})]
    assert len(asked) == 1


def test_no_package_slicer_ships_is_in_the_install_set():
    """Item 1: numpy, scipy, SimpleITK, pillow, ... are Slicer's; we never ask pip for them."""
    for feature_set in ((), tuple(dep.FEATURE_PACKAGES)):
        names = {dep.canonicalName(r) for r in dep.pipRequirements(feature_set)}
        assert not names & dep.SHIPPED_NAMES, names & dep.SHIPPED_NAMES
        assert not names & set(dep.TORCH_PACKAGES)
    assert "mealpy" not in {dep.canonicalName(r) for r in dep.pipRequirements(tuple(dep.FEATURE_PACKAGES))}
    with pytest.raises(ValueError, match="unknown feature"):
        dep.pipRequirements(("no-such-feature",))


def test_constraints_pin_every_shipped_package_installed_here():
    import numpy

    lines = dep.constraintLines()
    pinned = dict(line.split("==", 1) for line in lines)
    assert pinned["numpy"] == numpy.__version__
    assert dep.installedVersion("NumPy") == dep.installedVersion("numpy") == numpy.__version__  # normalised names
    assert dep.installedVersion("no-such-distribution-xyz") is None
    for name in pinned:
        assert name in dep.SHIPPED_NAMES or name in dep.TORCH_PACKAGES
    for line in lines:
        assert re.fullmatch(r"[a-z0-9-]+==\S+", line)


def test_shipped_versions_are_slicers():
    """The table is Slicer's (SuperBuild/External_python-*.cmake at v5.8.1 / v5.10.0)."""
    assert dep.SLICER_PACKAGES["5.8"]["numpy"] == "1.26.4" and dep.SLICER_PACKAGES["5.10"]["numpy"] == "2.0.2"
    assert dep.SLICER_PYTHON == {"5.8": "3.9", "5.10": "3.12"}
    for versions in dep.SLICER_PACKAGES.values():
        assert {"numpy", "scipy", "pillow", "simpleitk", "requests", "packaging", "pip", "setuptools"} <= set(versions)


def test_slicer_installs_every_package_the_library_declares():
    """What Slicer offers to install (pip or PyTorchUtils) covers pyproject's dependencies,
    except what Slicer ships (numpy, SimpleITK) and mealpy (no longer needed, see FEATURE_PACKAGES)."""
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = {dep.canonicalName(r) for r in declared["project"]["dependencies"]} - dep.SHIPPED_NAMES - {"mealpy"}
    offered = {dep.canonicalName(r) for r in dep.pipRequirements(tuple(dep.FEATURE_PACKAGES))} | set(dep.TORCH_PACKAGES)
    assert wanted - offered == set()


def test_first_use_install_pins_nothing_slicer_ships():
    """The install list must not name numpy (Slicer ships it) nor mealpy, whose numpy<=1.26.0 pin
    would replace Slicer 5.10's numpy 2.0 (SICF's Lyrebird optimiser is our own numpy code);
    the SICF forest needs skops (no pickle)."""
    import re

    names = {re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].lower() for req in cl.REQUIRED_PACKAGES.values()}
    assert not names & {"numpy", "mealpy"}
    assert "skops" in names and cl.REQUIRED_PACKAGES["skops"].startswith("skops")
