"""First-use installation of missing packages inside Slicer (with fake installers)."""
from BrainSpineAILib import classification_logic as cl


def test_nothing_is_installed_without_consent(monkeypatch):
    monkeypatch.setitem(cl.REQUIRED_PACKAGES, "no_such_module_xyz", "no-such-package-xyz>=1")
    calls = []
    logic = cl.ClassificationLogic(scene=None)
    ok = logic.ensureDependencies(confirm=lambda msg: calls.append(("ask", msg)) or False,
                                  pipInstall=lambda req: calls.append(("pip", req)))
    assert ok is False
    assert calls[0][0] == "ask" and "no-such-package-xyz>=1" in calls[0][1]
    assert [c for c in calls if c[0] == "pip"] == []


def test_torch_goes_through_the_pytorch_helper_and_the_rest_through_pip(monkeypatch):
    missing = ["torch", "torchvision", "monai>=1.3"]
    monkeypatch.setattr(cl.ClassificationLogic, "missingPackages", staticmethod(lambda: list(missing)))
    calls = []

    def install_torch():
        calls.append("torch-helper")
        missing.remove("torch")
        missing.remove("torchvision")
        return object()

    def pip(req):
        calls.append(f"pip {req}")
        missing.clear()

    assert cl.ClassificationLogic(scene=None).ensureDependencies(lambda m: True, install_torch, pip)
    assert calls == ["torch-helper", "pip monai>=1.3"]


def test_without_the_helper_pip_installs_torch_too(monkeypatch):
    missing = ["torch", "torchvision"]
    monkeypatch.setattr(cl.ClassificationLogic, "missingPackages", staticmethod(lambda: list(missing)))
    got = []
    cl.ClassificationLogic(scene=None).ensureDependencies(lambda m: True, lambda: None, got.append)
    assert got == ["torch torchvision"]


def test_slicer_installs_every_package_the_library_declares():
    """What Slicer offers to install covers pyproject's dependencies (numpy ships with Slicer)."""
    import re
    import tomllib
    from pathlib import Path

    declared = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    name = lambda req: re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].lower().replace("_", "-")  # noqa: E731
    wanted = {name(r) for r in declared["project"]["dependencies"]} - {"numpy"}
    offered = {name(r) for r in cl.REQUIRED_PACKAGES.values()}
    assert wanted - offered == set()


def test_first_use_install_pins_nothing_slicer_ships():
    """The install list must not name numpy (Slicer ships it) nor mealpy, whose numpy<=1.26.0 pin
    would replace Slicer 5.10's numpy 2.0 (SICF's Lyrebird optimiser is our own numpy code);
    the SICF forest needs skops (no pickle)."""
    import re

    names = {re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].lower() for req in cl.REQUIRED_PACKAGES.values()}
    assert not names & {"numpy", "mealpy"}
    assert "skops" in names and cl.REQUIRED_PACKAGES["skops"].startswith("skops")
