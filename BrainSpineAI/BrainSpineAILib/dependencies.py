"""Python packages the ``brainspineai`` library needs, and their first-use installation
inside Slicer (after the user agreed). Shared by the logic classes of every module."""
from __future__ import annotations

import importlib
import importlib.util

# import name -> pip requirement
REQUIRED_PACKAGES = {
    "torch": "torch", "torchvision": "torchvision", "monai": "monai>=1.3", "SimpleITK": "SimpleITK",
    "skimage": "scikit-image", "cv2": "opencv-contrib-python-headless", "sklearn": "scikit-learn",
    "open_clip": "open_clip_torch", "safetensors": "safetensors", "tqdm": "tqdm", "matplotlib": "matplotlib",
    "pytorch_metric_learning": "pytorch-metric-learning", "lightning_fabric": "lightning-fabric",
    "skops": "skops>=0.10",
}


class DependencyMixin:
    """``missingPackages`` / ``ensureDependencies`` for a module's logic class."""

    @staticmethod
    def missingPackages() -> list[str]:
        """pip requirements of the library that cannot be imported in this Python."""
        return [req for mod, req in REQUIRED_PACKAGES.items() if importlib.util.find_spec(mod) is None]

    def ensureDependencies(self, confirm, installTorch=None, pipInstall=None) -> bool:
        """Install missing packages after the user agreed.

        :param confirm: callable(message) -> bool asking the user.
        :param installTorch: callable installing PyTorch (the PyTorch extension's helper);
            returns None when that helper is unavailable, then pip is used.
        :param pipInstall: callable(requirements: str) running pip (``slicer.util.pip_install``).
        :returns: True when every package is importable afterwards.
        """
        missing = self.missingPackages()
        if not missing:
            return True
        if not confirm("BrainSpineAI needs these Python packages, which are not installed yet:\n"
                       + "\n".join(missing) + "\n\nInstall them now? This can take several minutes."):
            return False
        if "torch" in missing and installTorch is not None:
            if installTorch() is not None:
                missing = [m for m in missing if m not in ("torch", "torchvision")]
        if missing and pipInstall is not None:
            pipInstall(" ".join(missing))  # requirements hold no spaces; no shell is involved
        importlib.invalidate_caches()
        return not self.missingPackages()
