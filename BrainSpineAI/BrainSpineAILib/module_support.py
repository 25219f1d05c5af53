"""Qt-free helpers of the three module widgets (see :mod:`BrainSpineAILib.widget_helpers`),
kept here so that plain Python tests can run them.
"""
from __future__ import annotations

import sys

#: packages a developer-mode Reload re-imports, per module (beside the module's own script)
RELOAD_PACKAGES = {
    "BrainSpineAI": ("BrainSpineAILib",),
    "BrainSpineAISegment": ("BrainSpineAISegmentLib", "BrainSpineAILib"),
    "BrainSpineAITrain": ("BrainSpineAITrainLib", "BrainSpineAILib"),
}


def purgePackages(packages, modules=None) -> list:
    """Forget ``packages`` and their submodules in ``modules`` (default ``sys.modules``) so
    that the next import reads them again from disk, in dependency order.

    Slicer's Reload (``slicer.util.reloadScriptedModule``) re-executes the module's own
    script only; its ``*Lib`` packages stay imported, so edits to them would not take
    effect. Slicer's WebServer and SlicerMONAIAuto3DSeg re-execute each submodule in
    ``onReload``; dropping them from ``sys.modules`` before the script runs again lets the
    script's own imports reload them in the right order, whatever submodules exist.

    :returns: the names removed, sorted.
    """
    modules = sys.modules if modules is None else modules
    names = sorted(name for name in list(modules)
                   if any(name == pkg or name.startswith(pkg + ".") for pkg in packages))
    for name in names:
        del modules[name]
    return names


def runLabel(run: dict) -> str:
    """One line of the Train module's run list: name, state, pipeline, and the process
    of a live run."""
    text = f"{run.get('name')} ({run.get('state')}, {run.get('pipeline')}"
    if run.get("state") == "running" and run.get("pid"):
        text += f", process {run['pid']}"
    return text + ")"


#: the modules' ``parent.contributors``, Slicer's "Name (Organisation)" form (one place for all three)
CONTRIBUTORS = ["BrainSpineAI maintainers (BrainSpineAI project)"]
