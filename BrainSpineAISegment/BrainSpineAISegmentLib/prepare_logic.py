"""The "Prepare" step of the Segment module, independent of Qt: co-registration of the
selected sequences onto the reference and brain extraction, run as ``brainspineai
preprocess`` in a background process (:class:`BrainSpineAILib.background.BackgroundJob`), the
result loaded as nodes so the user can see what the model sees: one scalar volume per
registered, brain-extracted sequence and a labelmap volume of the brain mask, all on the
reference volume's grid (its IJK-to-RAS matrix and parent transform). The nodes are not
shown in any view (no selection is changed) and carry the attribute ``BrainSpineAI.Prepared``.
Nothing is added to the scene before the process has succeeded.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from BrainSpineAILib import mrml_utils
from BrainSpineAILib.background import BackgroundJob, cliCommand

SEQUENCES = ("t1", "t1ce", "t2", "flair")


@dataclass
class PreparedNodes:
    """What a preparation put in the scene: ``volumes`` (sequence -> scalar volume node),
    ``brainMask`` (labelmap volume node, 1 = brain), ``result`` (the CLI's JSON document)."""

    result: dict
    volumes: dict = field(default_factory=dict)
    brainMask: object = None


class PrepareLogic:
    def __init__(self, scene):
        self.scene = scene

    def startPreparation(self, volumesBySequence: dict, reference: str | None = None, mode: str = "on",
                         device: str = "auto", brainMl=None) -> BackgroundJob:
        """Write the volumes to a temporary folder and start ``brainspineai preprocess`` on
        them. Poll the job, then call :meth:`finishPreparation` (or ``job.cancel()``).

        :param volumesBySequence: ``{"t1" | "t1ce" | "t2" | "flair": volume node}``.
        :param reference: the sequence whose grid everything is put on (default: flair, t1ce, t1, t2).
        :param mode: ``on`` (register and strip) or ``auto`` (only what the data needs).
        :param brainMl: (min, max) plausible brain volume in ml (default: the CLI's 400-2500).
        :raises ValueError: no volume, an unknown sequence, a reference not given.
        """
        import SimpleITK as sitk

        chosen = {s: n for s, n in volumesBySequence.items() if n is not None}
        if not chosen:
            raise ValueError("select at least one sequence volume")
        unknown = sorted(set(chosen) - set(SEQUENCES))
        if unknown:
            raise ValueError(f"unknown sequence(s) {', '.join(unknown)}; use {', '.join(SEQUENCES)}")
        reference = reference or next(s for s in ("flair", "t1ce", "t1", "t2") if s in chosen)
        if reference not in chosen:
            raise ValueError(f"the reference sequence {reference} has no volume")
        workdir = Path(tempfile.mkdtemp(prefix="BrainSpineAI-prepare-"))
        cmd = ["preprocess"]
        try:
            for seq, node in chosen.items():
                path = workdir / f"in-{seq}.nii"
                sitk.WriteImage(mrml_utils.sitk_image_from_volume_node(node), str(path), False)
                cmd += [f"--{seq}", path]
        except Exception:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        cmd += ["--out-dir", workdir / "out", "--reference", reference, "--mode", mode, "--device", device or "auto",
                "--progress", "jsonl"]
        if brainMl:
            cmd += ["--brain-ml", f"{float(brainMl[0]):g}", f"{float(brainMl[1]):g}"]
        context = {"referenceNodeID": chosen[reference].GetID(), "reference": reference,
                   "names": {s: n.GetName() for s, n in chosen.items()}}
        return BackgroundJob(cliCommand(*cmd), workdir, context=context)

    def finishPreparation(self, job: BackgroundJob) -> PreparedNodes:
        """Load a finished job's volumes and brain mask as nodes on the reference grid and
        remove the job's temporary files.

        :raises RuntimeError: the job is still running, failed (message: the CLI's error line)
            or was cancelled, or the reference volume was removed; the scene is then unchanged.
        """
        import SimpleITK as sitk

        try:
            job.checkFinished("preparation")
            ref = self.scene.GetNodeByID(job.context["referenceNodeID"])
            if ref is None:
                raise RuntimeError("the reference volume was removed from the scene while it was being prepared")
            outputs = job.result.get("outputs", {})
            arrays = {k: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for k, p in outputs.items()}
            shape = mrml_utils.array_from_volume_node(ref).shape
            bad = [k for k, a in arrays.items() if a.shape != shape]
            if bad:
                raise RuntimeError(f"prepared {', '.join(bad)} not on the reference volume's grid")
            out = PreparedNodes(result=job.result)
            for key, arr in arrays.items():
                if key == "brain_mask":
                    node = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode",
                                                        self.scene.GenerateUniqueName(f"{ref.GetName()} brain mask"))
                    out.brainMask = node
                else:
                    name = f"{job.context['names'].get(key, key)} prepared"
                    node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", self.scene.GenerateUniqueName(name))
                    out.volumes[key] = node
                mrml_utils.update_volume_node_from_array(node, arr, reference=ref)
                node.SetAttribute("BrainSpineAI.Prepared", "1")
            return out
        finally:
            job.cleanup()
