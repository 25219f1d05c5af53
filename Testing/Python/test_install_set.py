"""Issue 14 item 1: what the modules install on first use never changes a package Slicer ships.

pip resolves the modules' install set (:func:`BrainSpineAILib.dependencies.pipRequirements`,
every feature) with ``pip install --dry-run --report`` against each Slicer's own packages
(``numpy==1.26.4`` ... for Slicer 5.8, ``numpy==2.0.2`` ... for 5.10, from Slicer's SuperBuild
requirement files, as a constraints file, the way ``ensureDependencies`` runs pip inside Slicer).
It fails when pip cannot resolve the set without changing one of them, when the report shows a
shipped package at another version, or when it would install a package Slicer builds itself
(SimpleITK, VTK). Runs for Slicer's Python versions (3.9 / 3.12, wheels only) through
``--python-version``. Contacts the package index (PyPI, the allowed registry); skipped with the
reason when the index cannot be reached.

torch and torchvision are installed in Slicer before this set, by the PyTorch extension
(``installTorch``), and ``ensureDependencies`` pins the installed ones in its constraints. The
check stands in for them with metadata-only wheels of one release per Python
(:data:`PREINSTALLED`) that declare torch's and torchvision's own pure-Python requirements
(numpy and pillow among them), pinned by a local version label no index carries. So pip
resolves every other package against that torch, as in Slicer, without fetching about 11 GB of
torch and CUDA wheels whose metadata the index does not serve apart.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from BrainSpineAILib import dependencies as dep

THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
# Slicer's own Python versions only (3.9 / 3.12): resolving for this interpreter too doubled the time
CASES = [("5.8", dep.SLICER_PYTHON["5.8"]), ("5.10", dep.SLICER_PYTHON["5.10"])]
PIP_TIMEOUT = 900
# what the PyTorch extension installs for each Python: torch 2.8, the last release for Python 3.9,
# and for 3.12 the newest this machine's pip allows (its global constraints cap torch at 2.14.1);
# torchvision is torch 2.N's 0.(N+15)
PREINSTALLED = {"3.9": {"torch": "2.8.0", "torchvision": "0.23.0"},
                "3.12": {"torch": "2.14.1", "torchvision": "0.29.1"}}
# their requirements as their Linux wheels declare them for that Python (markers resolved here:
# pip evaluates markers against its own Python, not --python-version), without the CUDA libraries
# and triton (binaries of the PyTorch extension's own choosing, not packages Slicer ships)
PREINSTALLED_REQUIRES = {
    "3.9": {"torch": ["filelock", "typing-extensions>=4.10.0", "sympy>=1.13.3", "networkx", "jinja2", "fsspec"],
            "torchvision": ["numpy", "torch==2.8.0", "pillow!=8.3.*,>=5.3.0"]},
    "3.12": {"torch": ["filelock", "typing-extensions>=4.10.0", "setuptools>=77.0.3", "sympy>=1.13.3",
                       "networkx>=2.5.1", "jinja2", "fsspec>=0.8.5"],
             "torchvision": ["numpy", "torch==2.14.1", "pillow!=8.3.*,>=5.3.0"]},
}
LOCAL = "preinstalled"  # local version label: no index carries it, so pip can only take the stub


def _pip(args, timeout=PIP_TIMEOUT):
    # UTF-8 whatever the locale the suite left (VTK may set the C locale; pip prints non-ASCII)
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, encoding="utf-8", errors="replace",
                          timeout=timeout, env={**os.environ, "PYTHONIOENCODING": "utf-8"})


def _constraints(folder, slicer_version, python):
    path = folder / f"slicer-{slicer_version}-py{python}-constraints.txt"
    pins = {n: v for n, v in dep.SLICER_PACKAGES[slicer_version].items() if v}
    pins.update({n: f"{v}+{LOCAL}" for n, v in PREINSTALLED.get(python, {}).items()})
    path.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
    return path


def _preinstalled_wheels(folder, python):
    """Metadata-only wheels of the torch / torchvision the PyTorch extension installs for
    ``python`` (:data:`PREINSTALLED`); returns their folder, for ``--find-links``."""
    out = folder / f"preinstalled-py{python}"
    out.mkdir(exist_ok=True)
    versions = PREINSTALLED.get(python, {})
    for name, version in versions.items():
        full = f"{version}+{LOCAL}"
        info = f"{name}-{full}.dist-info"
        requires = PREINSTALLED_REQUIRES[python][name]
        with zipfile.ZipFile(out / f"{name}-{full}-py3-none-any.whl", "w") as whl:
            whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {full}\n"
                         + "".join(f"Requires-Dist: {r}\n" for r in requires))
            whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test_install_set\nRoot-Is-Purelib: true\n"
                                          "Tag: py3-none-any\n")
            whl.writestr(f"{info}/RECORD", "")
    return out


def _resolve(folder, requirements, slicer_version, python):
    """(completed pip process, report dict or None)."""
    tag = f"{slicer_version}-py{python}-{abs(hash(tuple(requirements)))}"
    report = folder / f"report-{tag}.json"
    req = folder / f"requirements-{tag}.txt"
    req.write_text("".join(r + "\n" for r in requirements), encoding="utf-8")
    args = ["install", "--dry-run", "--disable-pip-version-check", "--report", str(report),
            "--only-binary=:all:", "-c", str(_constraints(folder, slicer_version, python)), "-r", str(req),
            "--find-links", str(_preinstalled_wheels(folder, python))]
    if python == THIS_PYTHON:
        args.append("--ignore-installed")
    else:  # pip 23 accepts --python-version with --dry-run only together with --target (nothing is written)
        args += ["--python-version", python, "--target", str(folder / f"target-{tag}")]
    proc = _pip(args)
    return proc, (json.loads(report.read_text(encoding="utf-8")) if proc.returncode == 0 and report.exists() else None)


def _errors(proc) -> str:
    """pip's explanation, without the index's warnings."""
    text = (proc.stdout or "") + "\n" + (proc.stderr or "")  # pip explains a conflict on stdout
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("WARNING:")]
    return "\n".join(lines[-40:])


@pytest.fixture(scope="module")
def index_reachable():
    try:
        probe = _pip(["index", "versions", "pip", "--disable-pip-version-check"], timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("the package index did not answer within 120 s")
    if probe.returncode != 0:
        pytest.skip(f"the package index is unreachable: {(probe.stderr or probe.stdout).strip().splitlines()[-1:]}")


@pytest.fixture(scope="module")
def resolutions(index_reachable, tmp_path_factory):
    """All four resolutions at once (pip mostly waits for the network)."""
    folder = tmp_path_factory.mktemp("install-set")
    requirements = dep.pipRequirements(tuple(dep.FEATURE_PACKAGES))
    with ThreadPoolExecutor(len(CASES)) as pool:
        futures = {case: pool.submit(_resolve, folder, requirements, *case) for case in CASES}
        return {case: f.result() for case, f in futures.items()}


@pytest.mark.parametrize("slicer_version, python", CASES, ids=[f"slicer{s}-py{p}" for s, p in CASES])
@pytest.mark.slow
def test_install_set_keeps_every_package_slicer_ships(resolutions, slicer_version, python):
    proc, report = resolutions[(slicer_version, python)]
    assert proc.returncode == 0 and report is not None, (
        f"pip cannot install the modules' packages into Slicer {slicer_version} (Python {python}) without "
        f"changing a package Slicer ships:\n{_errors(proc)}")
    installed = {dep.canonicalName(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}
    for requirement in dep.pipRequirements(tuple(dep.FEATURE_PACKAGES)):
        assert dep.canonicalName(requirement) in installed, f"{requirement} missing from pip's report"
    shipped = dep.SLICER_PACKAGES[slicer_version]
    changed = {n: (shipped[n], v) for n, v in installed.items() if n in shipped and shipped[n] and v != shipped[n]}
    assert changed == {}, f"would replace Slicer {slicer_version}'s packages (Slicer's, pip's): {changed}"
    built_by_slicer = {n for n, v in shipped.items() if v is None}
    assert not set(installed) & built_by_slicer, f"would install over Slicer's own build: {set(installed) & built_by_slicer}"
    assert installed["numpy"] == shipped["numpy"]
    for name, version in PREINSTALLED[python].items():  # the extension's torch, not a download
        assert installed.get(name) == f"{version}+{LOCAL}", f"{name}: {installed.get(name)} resolved, not the extension's"


def test_the_check_catches_a_package_that_pins_numpy(index_reachable, tmp_path):
    """The defect of issue 14: mealpy 3.0 pins numpy<=1.26.0; against Slicer's numpy it cannot resolve."""
    for slicer_version in ("5.8", "5.10"):
        proc, report = _resolve(tmp_path, ["mealpy>=3.0.3,<3.1"], slicer_version, THIS_PYTHON)
        assert proc.returncode != 0 and report is None, f"mealpy resolved against Slicer {slicer_version}'s numpy"
        assert "ResolutionImpossible" in proc.stderr and "numpy<=1.26.0" in _errors(proc), _errors(proc)
