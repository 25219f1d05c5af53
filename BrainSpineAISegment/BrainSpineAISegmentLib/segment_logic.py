"""Logic of the BrainSpineAI Segment module, independent of Qt.

:class:`SegmentationLogic` checks the selected MRI volumes against the model card, writes
them to a temporary folder and runs ``brainspineai segment`` in a background process
(:class:`BrainSpineAILib.background.BackgroundJob`, so the GUI never waits and Cancel kills
the process). On success it loads the BraTS labelmap (0 background, 1 NCR, 2 ED, 4 ET, on the
grid of the model's first sequence) into ONE ``vtkMRMLSegmentationNode`` with three
overlapping segments, one binary labelmap each:

======================  ===========  ======================================================
segment                 voxels       terminology (context TERMINOLOGY_CONTEXT of our
                                     TERMINOLOGY_FILE; category SCT 49755003 Morphologically
                                     Altered Structure; region SCT 12738006 Brain)
======================  ===========  ======================================================
Whole tumour (WT)       label > 0    SCT 52988006 Lesion (tumour + peritumoural oedema)
Tumour core (TC)        label 1, 4   SCT 108369006 Neoplasm
Enhancing tumour (ET)   label 4      NCIt C113842 Enhancing Lesion
======================  ===========  ======================================================

The node takes the reference volume's geometry and parent transform, sits next to the
reference volume in the subject hierarchy (under its study for DICOM data) and gets a closed
surface representation, visible in 2D and 3D. Nothing is added to the scene before the
process has succeeded, so a cancelled or failed job leaves the scene as it was.

:meth:`SegmentationLogic.exportTrainingCase` turns a (corrected) segmentation back into a
BraTS labelmap (ET -> 4, TC minus ET -> 1, WT minus TC -> 2) on the reference geometry and
adds it with its sequences to a training set through :func:`brainspineai.segmentation.data.add_case`;
:meth:`SegmentationLogic.requestRetrain` builds (and optionally starts) the
``brainspineai train segmenter`` run that fine-tunes the current model on that set.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from BrainSpineAILib import mrml_utils
from BrainSpineAILib.background import BackgroundJob, cliCommand
from BrainSpineAILib.worker_client import startJob
from BrainSpineAILib.dependencies import DependencyMixin

from .sequences import SEQUENCE_LABELS, SEQUENCES, assign_sequences

SEGMENTATION_TASK = "segmentation-3d"
REGION_TAG = "BrainSpineAI.region"  # segment tag holding "WT", "TC" or "ET"

# Our terminology context (Slicer's terminologies hold none of these types); loaded into Slicer's
# terminology logic like SlicerMONAIAuto3DSeg does, see loadTerminology()
TERMINOLOGY_FILE = Path(__file__).resolve().parent.parent / "Resources" / "SegmentationCategoryTypeModifier-BrainSpineAI.term.json"
TERMINOLOGY_CONTEXT = "Segmentation category and type - BrainSpineAI"
_CATEGORY = "SCT^49755003^Morphologically Altered Structure"
_BRAIN = "Anatomic codes - DICOM master list~SCT^12738006^Brain~^^"


def _terminology(type_code: str) -> str:
    """Serialised terminology entry (the ``TerminologyEntry`` segment tag format of 3D Slicer:
    context~category~type~type modifier~anatomic context~region~region modifier; each code is
    coding scheme^value^meaning)."""
    return f"{TERMINOLOGY_CONTEXT}~{_CATEGORY}~{type_code}~^^~{_BRAIN}"


def loadTerminology(terminologiesLogic=None) -> str:
    """Load :data:`TERMINOLOGY_FILE` into Slicer's terminology logic (once) so the terminology
    selector finds our segment types; returns the context name. Without a logic (the slicer-core
    wheel has no ``slicer.modules``) nothing is loaded.

    :raises RuntimeError: the file could not be loaded.
    """
    if terminologiesLogic is None:
        import slicer

        modules = getattr(slicer, "modules", None)
        terminologies = getattr(modules, "terminologies", None)
        if terminologies is None:
            return TERMINOLOGY_CONTEXT
        terminologiesLogic = terminologies.logic()
    import vtk

    loaded = vtk.vtkStringArray()
    terminologiesLogic.GetLoadedTerminologyNames(loaded)  # Slicer 5.8 has no IsTerminologyContextLoaded
    if TERMINOLOGY_CONTEXT in [loaded.GetValue(i) for i in range(loaded.GetNumberOfValues())]:
        return TERMINOLOGY_CONTEXT
    name = terminologiesLogic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
    if name != TERMINOLOGY_CONTEXT:
        raise RuntimeError(f"could not load the segment terminology {TERMINOLOGY_FILE}")
    return name


@dataclass(frozen=True)
class Region:
    key: str  # WT / TC / ET
    name: str  # segment name
    labels: tuple  # BraTS labels inside the region
    color: tuple  # RGB 0..1 (BraTS figures: oedema green, core red, enhancing yellow)
    terminology: str
    opacity3D: float


REGIONS = (
    Region("WT", "Whole tumour (WT)", (1, 2, 4), (0.10, 0.75, 0.25), _terminology("SCT^52988006^Lesion"), 0.35),
    Region("TC", "Tumour core (TC)", (1, 4), (0.90, 0.15, 0.15), _terminology("SCT^108369006^Neoplasm"), 0.6),
    Region("ET", "Enhancing tumour (ET)", (4,), (1.00, 0.85, 0.10), _terminology("NCIt^C113842^Enhancing Lesion"), 1.0),
)
BRATS_LABELS = {1: "NCR", 2: "ED", 4: "ET"}
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class SegmentationOutput:
    """What a segmentation put in the scene. ``result`` is the CLI's JSON document."""

    result: dict
    segmentationNode: object = None
    referenceVolume: object = None
    seconds: dict = field(default_factory=dict)  # "nodes": time to build the node (s)


def labelmap_from_regions(wt: np.ndarray, tc: np.ndarray, et: np.ndarray) -> np.ndarray:
    """BraTS labelmap (uint8, same shape) from three region masks: ET -> 4, TC minus ET -> 1,
    WT minus TC -> 2. Regions that are not nested are read as their union (a TC voxel outside
    WT still counts as tumour)."""
    lab = np.zeros(wt.shape, np.uint8)
    lab[wt.astype(bool)] = 2
    lab[tc.astype(bool)] = 1
    lab[et.astype(bool)] = 4
    return lab


def region_masks(labelmap: np.ndarray) -> dict:
    """``{"WT": bool array, "TC": ..., "ET": ...}`` of a BraTS labelmap."""
    return {r.key: np.isin(labelmap, r.labels) for r in REGIONS}


class SegmentationLogic(DependencyMixin):
    """BraTS tumour segmentation of the volume nodes of a MRML scene.

    :param scene: ``vtkMRMLScene`` (``slicer.mrmlScene`` inside Slicer).
    """

    def __init__(self, scene):
        self.scene = scene

    # ---------------------------------------------------------------- models
    @staticmethod
    def availableModels() -> list[dict]:
        """Cards of the catalogue's segmentation models (task ``segmentation-3d``): the default
        segmenter first, then the other shipped models, then the rest by id; each has a ``path`` key."""
        from brainspineai import catalogue

        default = getattr(catalogue, "DEFAULT_SEGMENTER_ID", "")
        cards = [c for c in catalogue.list_models() if c.get("task") == SEGMENTATION_TASK]
        zoo = str(catalogue.ZOO_DIR)
        cards.sort(key=lambda c: (c["id"] != default, not str(c.get("path", "")).startswith(zoo), str(c["id"])))
        return cards

    @classmethod
    def modelCard(cls, modelRef=None) -> dict:
        """The card of a model id / folder (``None``: the first of :meth:`availableModels`).

        :raises ValueError: no segmentation model, or the model is not a segmentation model.
        """
        from brainspineai.catalogue import read_card, resolve_model

        if not modelRef:
            cards = cls.availableModels()
            if not cards:
                raise ValueError("No segmentation model found. Install one in ~/.brainspineai/models "
                                 "or set BRAINSPINEAI_MODEL_PATH.")
            return cards[0]
        folder = resolve_model(str(modelRef))
        card = {**read_card(folder), "path": str(folder)}
        if card.get("task") != SEGMENTATION_TASK:
            raise ValueError(f"model '{card.get('id')}' is a {card.get('task')} model, not a segmentation model")
        return card

    @classmethod
    def requiredSequences(cls, modelRef=None) -> list[str]:
        """The sequences the model needs, in its card's order (the first is the reference grid)."""
        card = cls.modelCard(modelRef)
        seqs = [str(s) for s in card.get("sequences") or []]
        if not seqs or any(s not in SEQUENCES for s in seqs):
            raise ValueError(f"model '{card.get('id')}' has no usable 'sequences' list in its card: {seqs}")
        return seqs

    @classmethod
    def reportWarning(cls, modelRef=None, report: str | None = None) -> str | None:
        """A warning when a report is given to a segmenter whose CLIP is the untrained
        ``small-random`` one (the report then does not meaningfully guide it), else ``None``.
        The CLI puts the same text in its result's ``"warnings"``."""
        if not (report or "").strip():
            return None
        from brainspineai.segmentation.inference import report_warning

        return report_warning(cls.modelCard(modelRef))

    # ---------------------------------------------------------------- inputs
    def guessVolumes(self, volumeNodes=None) -> dict:
        """``{sequence: volume node}`` guessed from node names (see
        :func:`BrainSpineAISegmentLib.sequences.guess_sequence`); default: every scalar volume of
        the scene that is not a labelmap, in scene order."""
        if volumeNodes is None:
            volumeNodes = [n for n in mrml_utils.nodes_by_class(self.scene, "vtkMRMLScalarVolumeNode")
                           if not n.IsA("vtkMRMLLabelMapVolumeNode")]
        volumeNodes = list(volumeNodes)
        found = assign_sequences([n.GetName() for n in volumeNodes])
        return {seq: volumeNodes[i] for seq, i in found.items()}

    @staticmethod
    def checkVolume(node, sequence: str = "") -> np.ndarray:
        """Voxels (K, J, I) of a usable input volume.

        :raises ValueError: no node, not a scalar 3D volume, no image data, NaN or infinite voxels.
        """
        what = SEQUENCE_LABELS.get(sequence, sequence) or "input"
        if node is None:
            raise ValueError(f"Select a {what} volume.")
        name = node.GetName()
        if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError(f"{what}: '{name}' is not a scalar image volume.")
        image = node.GetImageData()
        if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
            raise ValueError(f"{what}: '{name}' has no image data.")
        if image.GetNumberOfScalarComponents() != 1:
            raise ValueError(f"{what}: '{name}' has {image.GetNumberOfScalarComponents()} components per voxel "
                             "(a colour or vector image); select a grayscale MRI volume.")
        dims = image.GetDimensions()
        if min(dims) < 2:
            raise ValueError(f"{what}: '{name}' is not a 3D volume (size {dims[0]} x {dims[1]} x {dims[2]} voxels).")
        arr = mrml_utils.array_from_volume_node(node)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"{what}: '{name}' contains NaN or infinite voxels.")
        return arr

    def checkInputs(self, volumesBySequence: dict, requiredSequences) -> dict:
        """The volumes the model needs, ``{sequence: node}`` in the model's order, checked.

        :raises ValueError: a required sequence is not selected, a volume is unusable, one volume
            is selected for two sequences, or the volumes sit under different transforms.
        """
        volumesBySequence = {k: v for k, v in (volumesBySequence or {}).items() if v is not None}
        required = list(requiredSequences)
        missing = [s for s in required if s not in volumesBySequence]
        if missing:
            names = ", ".join(SEQUENCE_LABELS[s] for s in required)
            raise ValueError(f"Select a {SEQUENCE_LABELS[missing[0]]} volume: the model needs {names}.")
        chosen = {s: volumesBySequence[s] for s in required}
        seen = {}
        for seq, node in chosen.items():
            self.checkVolume(node, seq)
            if node.GetID() in seen:
                raise ValueError(f"'{node.GetName()}' is selected both as {SEQUENCE_LABELS[seen[node.GetID()]]} "
                                 f"and as {SEQUENCE_LABELS[seq]}.")
            seen[node.GetID()] = seq
        transforms = {node.GetTransformNodeID() for node in chosen.values()}
        if len(transforms) > 1:
            raise ValueError("The selected volumes are under different transforms; harden the transforms first "
                             "(Data module: right-click > Harden transform).")
        return chosen

    # ---------------------------------------------------------------- segmentation
    def startSegmentation(self, volumesBySequence: dict, modelRef=None, device="auto", report: str | None = None,
                          overlap: float | None = None, tta: bool = False, name: str | None = None) -> BackgroundJob:
        """Check the inputs, write them to a temporary folder (NIfTI, LPS geometry) and start
        ``brainspineai segment`` on them in a separate process. Poll the returned job, then
        call :meth:`finishSegmentation` (or ``job.cancel()``). The scene is not modified.

        :param volumesBySequence: ``{"t1" | "t1ce" | "t2" | "flair": volume node}``; sequences the
            model does not use are ignored.
        :param modelRef: model id or folder (``None``: the first of :meth:`availableModels`).
        :param report: free-text radiology report guiding the model (CLIP text encoder).
        :param name: name of the segmentation node (default: ``<reference volume> tumour``; made
            unique in the scene, an earlier result is never replaced).
        :raises ValueError: unusable inputs (message names the problem).
        """
        import SimpleITK as sitk

        card = self.modelCard(modelRef)
        required = self.requiredSequences(card["path"])
        chosen = self.checkInputs(volumesBySequence, required)
        reference = chosen[required[0]]
        workdir = Path(tempfile.mkdtemp(prefix="BrainSpineAI-segment-"))
        cmd = ["segment"]
        try:
            for seq, node in chosen.items():
                path = workdir / f"{seq}.nii"  # uncompressed: written and read fast
                sitk.WriteImage(mrml_utils.sitk_image_from_volume_node(node), str(path), False)
                cmd += [f"--{seq}", path]
        except Exception:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        cmd += ["--out", workdir / "seg.nii.gz", "--json", workdir / "result.json", "--progress", "jsonl",
                "--device", device or "auto", "--model", card["path"]]
        if report and report.strip():
            cmd += ["--report", report.strip()]
        if overlap is not None:
            cmd += ["--overlap", f"{float(overlap):g}"]
        if tta:
            cmd += ["--tta"]
        context = {"referenceNodeID": reference.GetID(), "referenceSequence": required[0],
                   "volumeNodeIDs": {s: n.GetID() for s, n in chosen.items()},
                   "modelId": card["id"], "name": name or f"{reference.GetName()} tumour"}
        return startJob(cmd, workdir, context=context)  # the warm worker (BackgroundJob interface)

    def finishSegmentation(self, job: BackgroundJob) -> SegmentationOutput:
        """Load a finished job's labelmap into the scene as a segmentation node and remove the
        job's temporary files.

        :raises RuntimeError: the job is still running, failed (message: the CLI's error line)
            or was cancelled; the scene is then unchanged.
        """
        import time

        import SimpleITK as sitk

        try:
            job.checkFinished("segmentation")
            reference = self.scene.GetNodeByID(job.context["referenceNodeID"])
            if reference is None:
                raise RuntimeError("the reference volume was removed from the scene while it was being segmented")
            path = Path(job.result.get("labelmap") or job.workdir / "seg.nii.gz")
            if not path.is_file():
                path = job.workdir / "seg.nii.gz"
            t0 = time.perf_counter()
            image = sitk.ReadImage(str(path))
            expected = mrml_utils.sitk_image_from_volume_node(reference)
            if not _sameGeometry(image, expected, tol=1e-3):
                raise RuntimeError(f"the segmentation's grid (size {image.GetSize()}, spacing {image.GetSpacing()}) "
                                   f"is not the reference volume '{reference.GetName()}' grid")
            labelmap = sitk.GetArrayFromImage(image)
            node = self.segmentationNodeFromLabelmap(labelmap, reference, job.context["name"], job.result)
            return SegmentationOutput(result=job.result, segmentationNode=node, referenceVolume=reference,
                                      seconds={"nodes": time.perf_counter() - t0})
        finally:
            job.cleanup()

    # ---------------------------------------------------------------- scene output
    @staticmethod
    def _ensureConverters() -> None:
        """Register the labelmap <-> closed surface conversion rules when nobody did (3D Slicer
        registers them at start-up; the ``slicer-core`` wheel does not)."""
        import slicer

        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        have = {r.GetClassName() for r in factory.GetConverterRules()}
        for cls in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule, slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
            if cls.__name__ not in have:
                factory.RegisterConverterRule(cls())

    @staticmethod
    def _orientedImage(mask: np.ndarray, referenceVolume):
        """A ``vtkOrientedImageData`` (uint8) holding ``mask`` (K, J, I) on the volume's IJK-to-RAS grid."""
        import vtk
        from vtk.util import numpy_support

        import slicer

        image = slicer.vtkOrientedImageData()
        image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(mask, np.uint8).ravel(),
                                                                   deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
        m = vtk.vtkMatrix4x4()
        referenceVolume.GetIJKToRASMatrix(m)
        image.SetImageToWorldMatrix(m)
        return image

    def segmentationNodeFromLabelmap(self, labelmap: np.ndarray, referenceVolume, name: str, result: dict | None = None):
        """A new segmentation node with the WT, TC and ET segments of a BraTS labelmap.

        :param labelmap: (K, J, I) integer array on the reference volume's voxel grid (labels 0, 1, 2, 4).
        :param referenceVolume: volume node whose geometry and parent transform the node takes.
        :param result: the CLI's JSON result (model id and report are kept as node attributes).
        :raises RuntimeError: the labelmap's shape differs from the reference volume's; no node is left behind.
        """
        import slicer

        labelmap = np.asarray(labelmap)
        expected = tuple(reversed(referenceVolume.GetImageData().GetDimensions()))
        if labelmap.shape != expected:
            raise RuntimeError(f"the segmentation has {labelmap.shape[::-1]} voxels, the reference volume "
                               f"'{referenceVolume.GetName()}' has {expected[::-1]}")
        unknown = sorted(set(np.unique(labelmap).tolist()) - {0, *BRATS_LABELS})
        if unknown:
            raise RuntimeError(f"the segmentation holds labels {unknown}; a BraTS labelmap has 0, 1, 2 and 4 only")
        self._ensureConverters()
        loadTerminology()
        masks = region_masks(labelmap)
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", self.scene.GenerateUniqueName(name))
        try:
            node.CreateDefaultDisplayNodes()
            node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
            node.SetAndObserveTransformNodeID(referenceVolume.GetTransformNodeID())
            segmentation = node.GetSegmentation()
            display = node.GetDisplayNode()
            for region in REGIONS:
                segmentation.AddEmptySegment(region.key, region.name, list(region.color))
                ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                    self._orientedImage(masks[region.key], referenceVolume), node, region.key,
                    slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
                if not ok:
                    raise RuntimeError(f"could not set the {region.name} voxels")
                segment = segmentation.GetSegment(region.key)
                segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), region.terminology)
                segment.SetTag(REGION_TAG, region.key)
                segment.SetNameAutoGenerated(False)
                segment.SetColorAutoGenerated(False)
                if display is not None:
                    display.SetSegmentOpacity3D(region.key, region.opacity3D)
            for key, value in (("model", (result or {}).get("model")), ("report", (result or {}).get("report"))):
                if value:
                    node.SetAttribute(f"BrainSpineAI.{key}", str(value))
            node.CreateClosedSurfaceRepresentation()
            if display is not None:
                display.SetVisibility(True)
                display.SetVisibility2D(True)
                display.SetVisibility3D(True)
            self._placeInHierarchy(node, referenceVolume)
        except Exception:
            self.scene.RemoveNode(node)
            raise
        return node

    def _placeInHierarchy(self, node, referenceVolume) -> None:
        """Put the node under the reference volume's parent item (its study for DICOM data)."""
        import slicer

        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        if sh is None:
            return
        refItem = sh.GetItemByDataNode(referenceVolume)
        parent = sh.GetItemParent(refItem) if refItem else sh.GetSceneItemID()
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, parent)
        else:  # no subject hierarchy logic watches this scene (plain-Python MRML)
            sh.CreateItem(parent, node)

    # ---------------------------------------------------------------- corrected cases for training
    @staticmethod
    def regionSegmentIDs(segmentationNode) -> dict:
        """``{"WT" | "TC" | "ET": segment ID}`` found by the region tag, else by the segment name."""
        import vtk

        segmentation = segmentationNode.GetSegmentation()
        out = {}
        for i in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(i)
            segment = segmentation.GetSegment(segmentId)
            tag = vtk.reference("")
            key = str(tag) if segment.GetTag(REGION_TAG, tag) else None
            if key not in ("WT", "TC", "ET"):
                key = next((r.key for r in REGIONS if segment.GetName() in (r.name, r.key)
                            or segment.GetName().endswith(f"({r.key})")), None)
            if key and key not in out:
                out[key] = segmentId
        return out

    def regionMasksOnReference(self, segmentationNode, referenceVolume) -> dict:
        """``{"WT": bool (K, J, I), "TC": ..., "ET": ...}`` of a segmentation, resampled (nearest
        neighbour) onto the reference volume's voxel grid; a missing segment is empty.

        :raises ValueError: none of the three segments is found, or the segmentation and the
            volume are under different transforms.
        """
        ids = self.regionSegmentIDs(segmentationNode)
        if not ids:
            raise ValueError(f"'{segmentationNode.GetName()}' has no {', '.join(r.name for r in REGIONS)} segment.")
        return {region.key: self.segmentMaskOnReference(segmentationNode, ids.get(region.key), referenceVolume)
                for region in REGIONS}

    def segmentMaskOnReference(self, segmentationNode, segmentId, referenceVolume) -> np.ndarray:
        """One segment as a bool array (K, J, I) on the reference volume's voxel grid (nearest
        neighbour); ``segmentId`` ``None`` or an empty segment gives an empty mask.

        :raises ValueError: the segmentation and the volume are under different transforms, or
            the segment's voxels cannot be read.
        """
        import slicer

        if segmentationNode.GetTransformNodeID() != referenceVolume.GetTransformNodeID():
            raise ValueError("The segmentation and the reference volume are under different transforms; harden them first.")
        dims = referenceVolume.GetImageData().GetDimensions()
        if segmentId is None:
            return np.zeros(dims[::-1], bool)
        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        image = slicer.vtkOrientedImageData()
        if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
                segmentationNode, segmentId, image, False):
            raise ValueError(f"could not read the voxels of segment '{name}'")
        if image.GetPointData().GetScalars() is None or image.IsEmpty():
            return np.zeros(dims[::-1], bool)
        reference = self._orientedImage(np.zeros(dims[::-1], np.uint8), referenceVolume)
        resampled = slicer.vtkOrientedImageData()
        if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                image, reference, resampled, False, True):
            raise ValueError(f"could not resample segment '{name}' onto the reference grid")
        arr = mrml_utils.array_from_volume_node(_ImageHolder(resampled))
        # a shared labelmap layer stores several segments: keep this segment's label value only
        return arr == self._labelValue(segmentationNode, segmentId)

    @staticmethod
    def _labelValue(segmentationNode, segmentId) -> int:
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        return int(segment.GetLabelValue()) if hasattr(segment, "GetLabelValue") else 1

    def exportTrainingCase(self, datasetDir, caseId: str, volumeNodesBySequence: dict, segmentationNode,
                           overwrite: bool = False, referenceSequence: str | None = None) -> Path:
        """Add a (corrected) case to a training set through :func:`brainspineai.segmentation.data.add_case`.

        The segmentation becomes a BraTS labelmap (uint8: ET -> 4, TC minus ET -> 1, WT minus TC
        -> 2) on the reference volume's grid (``referenceSequence``, default the first key of
        ``volumeNodesBySequence``); every other sequence is resampled onto that grid (linear)
        when its geometry differs. Files: ``<datasetDir>/<caseId>/<caseId>_<seq>.nii.gz`` and
        ``<caseId>_seg.nii.gz``, entry added to ``<datasetDir>/dataset.json``.

        :returns: the case folder.
        :raises ValueError: bad case id, unusable volumes, no region segment, or the case exists
            and ``overwrite`` is False (from ``add_case``); nothing is written then.
        """
        import SimpleITK as sitk
        from brainspineai.segmentation import data as segdata

        caseId = str(caseId or "").strip()
        if not _CASE_ID.match(caseId):
            raise ValueError(f"case id '{caseId}': use letters, digits, '_', '-' and '.' only (no spaces or slashes).")
        if datasetDir is None or not str(datasetDir).strip():
            raise ValueError("Select a dataset folder.")
        volumes = {k: v for k, v in (volumeNodesBySequence or {}).items() if v is not None}
        unknown = [k for k in volumes if k not in SEQUENCES]
        if unknown:
            raise ValueError(f"unknown sequence {unknown[0]!r} (use {', '.join(SEQUENCES)})")
        if not volumes:
            raise ValueError("Select at least one volume.")
        referenceSequence = referenceSequence or next(iter(volumes))
        if referenceSequence not in volumes:
            raise ValueError(f"the reference sequence {referenceSequence} has no volume")
        for seq, node in volumes.items():
            self.checkVolume(node, seq)
        reference = volumes[referenceSequence]
        masks = self.regionMasksOnReference(segmentationNode, reference)
        labelmap = labelmap_from_regions(masks["WT"], masks["TC"], masks["ET"])
        refImage = mrml_utils.sitk_image_from_volume_node(reference)
        labelImage = sitk.GetImageFromArray(labelmap)
        labelImage.CopyInformation(refImage)
        images = {}
        for seq in [referenceSequence] + [s for s in volumes if s != referenceSequence]:
            image = refImage if seq == referenceSequence else mrml_utils.sitk_image_from_volume_node(volumes[seq])
            if not _sameGeometry(image, refImage):
                image = sitk.Resample(image, refImage, sitk.Transform(), sitk.sitkLinear, 0.0, image.GetPixelID())
            images[seq] = image
        return Path(segdata.add_case(Path(datasetDir), caseId, images, labelImage, overwrite=overwrite))

    # ---------------------------------------------------------------- retraining hook
    @staticmethod
    def retrainArguments(datasetDir, outDir, card: dict, epochs: int | None = None, device: str = "auto",
                         extra=()) -> list[str]:
        """Arguments of ``brainspineai train segmenter`` that fine-tune the model of ``card``
        (with its ``path``) on a dataset folder (e.g. the one :meth:`exportTrainingCase` fills),
        keeping its sequences, voxel spacing and patch size, with JSON-line events on stdout.
        One case is held out for the card's Dice when the folder has at least three."""
        import json

        try:
            n_cases = len(json.loads((Path(datasetDir) / "dataset.json").read_text(encoding="utf-8"))["training"])
        except (OSError, ValueError, KeyError, TypeError):
            n_cases = 0
        args = ["train", "segmenter", "--data", str(datasetDir), "--out", str(outDir), "--init-model", str(card["path"]),
                "--events", "-", "--device", device or "auto", "--val-cases", "1" if n_cases >= 3 else "0"]
        if card.get("sequences"):
            args += ["--sequences", *map(str, card["sequences"])]
        if card.get("spacing_mm"):
            args += ["--spacing", f"{float(card['spacing_mm']):g}"]
        if card.get("input_size"):
            args += ["--patch-size", str(int(card["input_size"][0]))]
        if epochs:
            args += ["--epochs", str(int(epochs))]
        return args + [str(a) for a in extra]

    def requestRetrain(self, datasetDir, modelRef=None, epochs: int | None = None, device: str = "auto",
                       start: bool = True):
        """Fine-tune the segmentation model ``modelRef`` (default: the first of
        :meth:`availableModels`) on a dataset folder from its current weights.

        A thin hook: the BrainSpineAI Train module owns training runs, so when its logic
        (``BrainSpineAITrainLib.training_logic.TrainingLogic``) is importable this returns its
        ``retrainRequest(...)`` (``start=False``) or the started ``TrainingRun`` (``start=True``;
        the new version is registered in the user catalogue). Without it: the ``brainspineai``
        argument list (``start=False``) or a :class:`~BrainSpineAILib.background.BackgroundJob`
        writing the model into ``user_home()/models/<id>-retrained``.
        Both run objects have ``poll()``, ``fraction``, ``progressText``, ``errorText`` and ``cancel()``.

        :raises ValueError: the dataset folder has no ``dataset.json``, or no segmentation model.
        """
        if not datasetDir or not (Path(datasetDir) / "dataset.json").is_file():
            raise ValueError(f"{datasetDir}: not a training set folder (no dataset.json); add a case first.")
        card = self.modelCard(modelRef)
        try:
            from BrainSpineAITrainLib.training_logic import TrainingLogic
        except ImportError:
            TrainingLogic = None
        if TrainingLogic is not None:
            request = TrainingLogic.retrainRequest(card["path"], str(datasetDir), epochs, device)
            return TrainingLogic().startRun(**request) if start else request
        from brainspineai.catalogue import user_home

        outDir = user_home() / "models" / f"{card['id']}-retrained"
        args = self.retrainArguments(datasetDir, outDir, card, epochs, device)
        if not start:
            return args
        return BackgroundJob(cliCommand(*args), context={"datasetDir": str(datasetDir), "outDir": str(outDir)})


class _ImageHolder:
    """Lets :func:`BrainSpineAILib.mrml_utils.array_from_volume_node` read a bare image data."""

    def __init__(self, image):
        self._image = image

    def GetImageData(self):
        return self._image

    def GetName(self):
        return "segment"


def _sameGeometry(a, b, tol: float = 1e-4) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))
