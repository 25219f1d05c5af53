"""Python packages the ``brainspineai`` library needs, and their first-use installation
inside Slicer (after ONE confirmation by the user). Shared by the logic classes of every module.

Rules (issue 14):

- PyTorch (``torch`` and ``torchvision``) is installed only through the PyTorch extension's
  ``PyTorchUtils.PyTorchUtilsLogic().installTorch`` (light-the-torch picks the CUDA build that
  fits the computer's driver), never with plain pip. A missing ``torchvision`` next to an
  installed ``torch`` is asked for in the version that matches that ``torch`` and its
  computation backend (so the working CUDA build is kept).
- A package Slicer ships (numpy, scipy, pillow, SimpleITK, requests, ... see
  :data:`SLICER_PACKAGES`) is never installed, pinned or replaced: pip runs with a constraints
  file that pins every shipped package (and the installed torch / torchvision) to the version
  this Slicer has, so a requirement that would change one fails instead of downgrading Slicer.
- What only one capability needs is installed when that capability is used
  (:data:`FEATURE_PACKAGES`, see :meth:`DependencyMixin.missingPackages`).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import shutil
import tempfile
from typing import Callable, Optional, Sequence

# import name -> pip requirement: what every module needs, installed with pip (after PyTorch)
REQUIRED_PACKAGES = {
    "monai": "monai>=1.3", "cv2": "opencv-contrib-python-headless>=4.8", "sklearn": "scikit-learn>=1.3",
    "open_clip": "open_clip_torch>=2.24", "timm": "timm>=0.9", "safetensors": "safetensors>=0.4", "tqdm": "tqdm>=4.66",
    "matplotlib": "matplotlib>=3.7", "pytorch_metric_learning": "pytorch-metric-learning>=2.5",
    "lightning_fabric": "lightning-fabric>=2.3",
    "skops": "skops>=0.10",
    "deepbet": "deepbet>=1.0.2",  # brain extraction before segmentation (segment --preprocess auto)
}

# import name -> requirement, installed through PyTorchUtils (never pip)
TORCH_PACKAGES = {"torch": "torch>=2.2", "torchvision": "torchvision>=0.17"}

# feature -> {import name: pip requirement}: what only one capability needs, installed when that
# capability is used. SICF needs nothing beyond REQUIRED_PACKAGES since its optimiser base is our
# own code (mealpy 3.0 pins numpy<=1.26.0 and would replace Slicer's numpy, issue 14 item 1).
FEATURE_PACKAGES: dict = {"sicf": {}}

# Distributions Slicer installs into its own Python, with their versions, from Slicer's
# SuperBuild/External_python-*.cmake (requirements pinned with hashes) at the tags v5.8.1 and
# v5.10.0; SimpleITK is built from source (External_SimpleITK.cmake, Slicer's SimpleITK fork
# v2.3.1 / v2.5.2), so its exact version string is not pinned here. Slicer's VTK is no pip
# distribution: a "vtk" wheel from PyPI would shadow it, so it must never be installed either.
SLICER_PACKAGES = {
    "5.8": {  # Python 3.9.10
        "numpy": "1.26.4", "scipy": "1.13.1", "pillow": "10.3.0", "pydicom": "2.4.4", "six": "1.16.0",
        "retrying": "1.3.4", "dicomweb-client": "0.59.1", "chardet": "5.2.0", "couchdb": "1.2",
        "gitdb": "4.0.11", "smmap": "5.0.1", "gitpython": "3.1.43", "cryptography": "42.0.7",
        "wrapt": "1.16.0", "deprecated": "1.2.14", "pycparser": "2.22", "cffi": "1.16.0", "pynacl": "1.5.0",
        "python-dateutil": "2.9.0.post0", "typing-extensions": "4.12.1", "pygithub": "2.3.0",
        "pip": "24.0", "packaging": "24.0", "pyparsing": "3.1.2", "certifi": "2024.2.2", "idna": "3.7",
        "charset-normalizer": "3.3.2", "urllib3": "2.2.1", "requests": "2.32.3", "setuptools": "70.0.0",
        "wheel": "0.43.0", "simpleitk": None, "vtk": None,
    },
    "5.10": {  # Python 3.12.10
        "numpy": "2.0.2", "scipy": "1.13.1", "pillow": "11.2.1", "pydicom": "2.4.4", "six": "1.17.0",
        "retrying": "1.3.4", "dicomweb-client": "0.60.0", "chardet": "5.2.0", "couchdb": "1.2",
        "gitdb": "4.0.12", "smmap": "5.0.2", "gitpython": "3.1.44", "cryptography": "45.0.3",
        "pyjwt": "2.10.1", "wrapt": "1.17.2", "deprecated": "1.2.18", "pycparser": "2.22", "cffi": "1.17.1",
        "pynacl": "1.5.0", "python-dateutil": "2.9.0.post0", "typing-extensions": "4.14.0",
        "pygithub": "2.6.1", "pip": "25.1.1", "packaging": "25.0", "pyparsing": "3.2.3",
        "certifi": "2025.4.26", "idna": "3.10", "charset-normalizer": "3.4.2", "urllib3": "2.4.0",
        "requests": "2.32.3", "setuptools": "80.9.0", "wheel": "0.45.1", "simpleitk": None, "vtk": None,
    },
}
SLICER_PYTHON = {"5.8": "3.9", "5.10": "3.12"}
SHIPPED_NAMES = frozenset(n for versions in SLICER_PACKAGES.values() for n in versions)


def canonicalName(requirement: str) -> str:
    """PEP 503 normalised project name of a requirement string (``"Open_Clip_Torch>=2"`` ->
    ``"open-clip-torch"``)."""
    name = re.split(r"[<>=!~ \[;@]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def installedVersions() -> dict:
    """``{canonical project name: version}`` of every distribution installed in this Python
    (names normalised here, the same way on Python 3.9 and 3.12)."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata is not None else None
        if name:
            out.setdefault(canonicalName(name), dist.version)
    return out


def installedVersion(distribution: str) -> Optional[str]:
    """Version of an installed distribution, None when it is not installed."""
    return installedVersions().get(canonicalName(distribution))


def pipRequirements(features: Sequence[str] = ()) -> list:
    """Every requirement pip may install for these features (torch excluded: PyTorchUtils).

    :raises ValueError: an unknown feature.
    """
    unknown = [f for f in features if f not in FEATURE_PACKAGES]
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown}; known: {sorted(FEATURE_PACKAGES)}")
    packages = dict(REQUIRED_PACKAGES)
    for feature in features:
        packages.update(FEATURE_PACKAGES[feature])
    return list(packages.values())


def constraintLines(extra: Sequence[str] = ("torch", "torchvision")) -> list:
    """``name==version`` for every package Slicer ships that is installed here, plus the
    installed torch / torchvision: pip's constraints, so it can add packages but never change
    those (it fails instead)."""
    lines, installed = [], installedVersions()
    for name in sorted(SHIPPED_NAMES | set(extra)):
        version = installed.get(canonicalName(name))
        if version:
            lines.append(f"{name}=={version}")
    return lines


def torchvisionRequirementFor(torchVersion: str) -> str:
    """The torchvision release line built for a torch version (``"2.5.1+cu121"`` ->
    ``"==0.20.*"``): torch 2.N pairs with torchvision 0.(N+15), torch 1.N with 0.(N+1)
    (PyTorch's compatibility table, https://github.com/pytorch/vision#installation).

    :raises ValueError: a version that is not ``major.minor[.patch][+local]``.
    """
    match = re.match(r"^(\d+)\.(\d+)", torchVersion)
    if not match:
        raise ValueError(f"not a torch version: {torchVersion!r}")
    major, minor = int(match.group(1)), int(match.group(2))
    if major == 1:
        return f"==0.{minor + 1}.*"
    if major == 2:
        return f"==0.{minor + 15}.*"
    raise ValueError(f"no known torchvision release for torch {torchVersion}")


def torchInstallArguments(torchVersion: Optional[str]) -> dict:
    """Keyword arguments of ``PyTorchUtilsLogic.installTorch`` (besides ``askConfirmation``).

    No torch: torch and torchvision at our minimum versions, the backend chosen by
    light-the-torch. Torch installed (torchvision missing): the same torch version and computation
    backend (its local version label, e.g. ``+cu121``; none means light-the-torch's choice) and the
    matching torchvision, so pip finds torch satisfied and keeps it.
    """
    if not torchVersion:
        return {"torchVersionRequirement": TORCH_PACKAGES["torch"][len("torch"):],
                "torchvisionVersionRequirement": TORCH_PACKAGES["torchvision"][len("torchvision"):]}
    base, _, local = torchVersion.partition("+")
    args = {"torchVersionRequirement": f"=={base}",
            "torchvisionVersionRequirement": torchvisionRequirementFor(torchVersion)}
    if local:
        args["forceComputationBackend"] = local
    return args


def pyTorchUtilsInstaller() -> Callable:
    """``callable(**kwargs) -> torch module or None`` calling the PyTorch extension's
    ``PyTorchUtilsLogic().installTorch(askConfirmation=False, **kwargs)`` (we asked already).

    :raises RuntimeError: the PyTorch extension (PyTorchUtils module) is not installed.
    """
    try:
        import PyTorchUtils
    except ImportError:
        raise RuntimeError("BrainSpineAI needs the PyTorch extension (PyTorchUtils module) to install PyTorch: "
                           "install 'PyTorch' from the Extensions Manager, restart Slicer and try again") from None

    def install(**kwargs):
        return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, **kwargs)

    return install


class DependencyMixin:
    """``missingPackages`` / ``ensureDependencies`` for a module's logic class."""

    @staticmethod
    def missingPackages(features: Sequence[str] = ()) -> list:
        """Requirements (torch ones first) whose import name cannot be found in this Python."""
        packages = dict(TORCH_PACKAGES)
        packages.update(REQUIRED_PACKAGES)
        for feature in features:
            packages.update(FEATURE_PACKAGES[feature])
        return [req for mod, req in packages.items() if importlib.util.find_spec(mod) is None]

    def ensureDependencies(self, confirm, installTorch=None, pipInstall=None, features: Sequence[str] = ()) -> bool:
        """Install missing packages after the user agreed (one question for everything).

        :param confirm: callable(message) -> bool asking the user.
        :param installTorch: callable(**kwargs) -> torch module or None with the keyword arguments of
            ``PyTorchUtilsLogic.installTorch`` (see :func:`torchInstallArguments`); default
            :func:`pyTorchUtilsInstaller`, which also replaces a callable without parameters (the
            modules' first helper, which asked again). Torch is never installed with pip.
        :param pipInstall: callable(args: list of str) running pip (``slicer.util.pip_install``);
            gets ``["-c", constraints file, *requirements]``.
        :param features: capabilities about to be used (``"sicf"``), whose own needs are added.
        :returns: True when every package is importable afterwards.
        :raises RuntimeError: the PyTorch extension is missing, or PyTorch's installation was
            cancelled in its own dialog.
        """
        missing = self.missingPackages(features)
        if not missing:
            return True
        torchMissing = [r for r in missing if canonicalName(r) in TORCH_PACKAGES]
        pipMissing = [r for r in missing if r not in torchMissing]
        if torchMissing and (installTorch is None or not inspect.signature(installTorch).parameters):
            # default, or a helper of the first version (no parameters: it asked a second time and
            # could not match torchvision to torch): PyTorchUtils without a second question.
            # Fails before asking anything when the PyTorch extension is absent.
            installTorch = pyTorchUtilsInstaller()
        lines = []
        if torchMissing:
            lines.append("PyTorch (" + ", ".join(canonicalName(r) for r in torchMissing)
                         + ") through the PyTorch extension, which picks the build for this computer's GPU")
        lines += pipMissing
        if not confirm("BrainSpineAI needs these Python packages, which are not installed yet:\n\n"
                       + "\n".join(lines) + "\n\nPackages that come with Slicer (numpy, ...) are kept as they are."
                       "\nInstall them now? This can take several minutes."):
            return False
        if torchMissing:
            torchAbsent = any(canonicalName(r) == "torch" for r in torchMissing)
            kwargs = torchInstallArguments(None if torchAbsent else installedVersion("torch"))
            torch = installTorch(**kwargs)
            if torch is None:
                raise RuntimeError("PyTorch is required; its installation was cancelled or failed")
        if pipMissing and pipInstall is not None:
            folder = tempfile.mkdtemp(prefix="brainspineai-pip-")
            try:
                constraints = os.path.join(folder, "slicer-constraints.txt")
                with open(constraints, "w", encoding="utf-8") as f:
                    f.write("\n".join(constraintLines()) + "\n")
                pipInstall(["-c", constraints, *pipMissing])  # a list: no shell, paths with spaces are fine
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        importlib.invalidate_caches()
        return not self.missingPackages(features)
