"""Issue 14 item 1: what the modules install on first use never changes a package Slicer ships.

pip resolves the modules' install set (:func:`BrainSpineAILib.dependencies.pipRequirements`,
every feature) with ``pip install --dry-run --report`` against each Slicer's own packages
(``numpy==1.26.4`` ... for Slicer 5.8, ``numpy==2.0.2`` ... for 5.10, from Slicer's SuperBuild
requirement files, as a constraints file, the way ``ensureDependencies`` runs pip inside Slicer).
It fails when pip cannot resolve the set without changing one of them, when the report shows a
shipped package at another version, or when it would install a package Slicer builds itself
(SimpleITK, VTK). Runs for this interpreter and for Slicer's Python versions (3.9 / 3.12, wheels
only) through ``--python-version``. Contacts the package index (PyPI, the allowed registry);
skipped with the reason when the index cannot be reached.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from BrainSpineAILib import dependencies as dep

THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
# Slicer's own Python versions only (3.9 / 3.12): resolving for this interpreter too doubled the time
CASES = [("5.8", dep.SLICER_PYTHON["5.8"]), ("5.10", dep.SLICER_PYTHON["5.10"])]
PIP_TIMEOUT = 900


def _pip(args, timeout=PIP_TIMEOUT):
    # UTF-8 whatever the locale the suite left (VTK may set the C locale; pip prints non-ASCII)
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, encoding="utf-8", errors="replace",
                          timeout=timeout, env={**os.environ, "PYTHONIOENCODING": "utf-8"})


def _constraints(folder, slicer_version):
    path = folder / f"slicer-{slicer_version}-constraints.txt"
    path.write_text("".join(f"{n}=={v}\n" for n, v in dep.SLICER_PACKAGES[slicer_version].items() if v))
    return path


def _resolve(folder, requirements, slicer_version, python):
    """(completed pip process, report dict or None)."""
    tag = f"{slicer_version}-py{python}-{abs(hash(tuple(requirements)))}"
    report = folder / f"report-{tag}.json"
    req = folder / f"requirements-{tag}.txt"
    req.write_text("".join(r + "\n" for r in requirements), encoding="utf-8")
    args = ["install", "--dry-run", "--disable-pip-version-check", "--report", str(report),
            "--only-binary=:all:", "-c", str(_constraints(folder, slicer_version)), "-r", str(req)]
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


def test_the_check_catches_a_package_that_pins_numpy(index_reachable, tmp_path):
    """The defect of issue 14: mealpy 3.0 pins numpy<=1.26.0; against Slicer's numpy it cannot resolve."""
    for slicer_version in ("5.8", "5.10"):
        proc, report = _resolve(tmp_path, ["mealpy>=3.0.3,<3.1"], slicer_version, THIS_PYTHON)
        assert proc.returncode != 0 and report is None, f"mealpy resolved against Slicer {slicer_version}'s numpy"
        assert "ResolutionImpossible" in proc.stderr and "numpy<=1.26.0" in _errors(proc), _errors(proc)
