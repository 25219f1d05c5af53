"""Logic of the BrainSpineAI (classification) module, independent of Qt.

:class:`ClassificationLogic` turns a volume node into a SimpleITK image, runs
:func:`brainspineai.classification.inference.classify_image` (in a background ``brainspineai classify``
process, :meth:`ClassificationLogic.startBackgroundClassification`, which the module's GUI
uses for slices and volumes alike so it never waits; or in this process with
:meth:`ClassificationLogic.classify`, for scripts), and
puts the answer back in the scene: a table of class probabilities, a per-slice
probability plot for volumes, and the Grad-CAM heatmap as a volume node with the input's
exact IJK-to-RAS geometry, shown as the foreground layer with a heat colour map.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import mrml_utils
from .background import BackgroundJob
from .dependencies import REQUIRED_PACKAGES, DependencyMixin  # noqa: F401  (REQUIRED_PACKAGES: re-exported)
from .worker_client import startJob

BackgroundClassification = BackgroundJob  # a ``brainspineai classify`` job; ``context["inputNodeID"]``


def resultTrustRows(result: dict) -> list:
    """Extra (name, value) rows of the result table: the detected MRI sequence and whether the
    answer is uncertain (from ``brainspineai classify``'s ``"sequence"`` and ``"uncertain"``)."""
    rows = []
    seq = result.get("sequence") or {}
    if seq.get("predicted"):
        from brainspineai.classification.sequence import SEQUENCE_LABELS

        p = (seq.get("probabilities") or {}).get(seq["predicted"])
        rows.append(("Sequence", SEQUENCE_LABELS.get(seq["predicted"], seq["predicted"])
                     + (f" ({p:.0%})" if isinstance(p, (int, float)) else "")))
    if "uncertain" in result:
        rows.append(("Uncertain", "YES" if result["uncertain"] else "no"))
    return rows


@dataclass
class ClassificationOutput:
    """What a classification put in the scene. ``result`` is the CLI's JSON document."""

    result: dict
    heatmapNode: object = None
    tableNode: object = None
    plotChartNode: object = None


class ClassificationLogic(DependencyMixin):
    """Classification of volume nodes of a MRML scene.

    :param scene: ``vtkMRMLScene`` (``slicer.mrmlScene`` inside Slicer).
    """

    def __init__(self, scene):
        self.scene = scene
        self._modelCache = {}

    # ---------------------------------------------------------------- models
    @staticmethod
    def availableModels() -> list[dict]:
        """Model cards of the catalogue (2D classifiers first; each has a ``path`` key)."""
        from brainspineai.catalogue import DEFAULT_MODEL_ID, list_models

        cards = [c for c in list_models() if c.get("task") in ("classification-2d", "sicf-2d")]
        cards.sort(key=lambda c: (c["id"] != DEFAULT_MODEL_ID, c["id"]))
        return cards

    def loadModel(self, modelRef=None, device="auto"):
        """Load (and cache) a model; see :func:`brainspineai.catalogue.load_model`."""
        from brainspineai.catalogue import load_model

        key = (str(modelRef or ""), device)
        if key not in self._modelCache:
            self._modelCache[key] = load_model(modelRef or None, device)
        return self._modelCache[key]

    # ---------------------------------------------------------------- classification
    @staticmethod
    def isSingleSlice(volumeNode) -> bool:
        """True when the volume is one voxel thick along some axis (a 2D image)."""
        image = volumeNode.GetImageData() if volumeNode is not None else None
        return image is not None and 1 in image.GetDimensions()

    @staticmethod
    def _checkInput(volumeNode):
        if volumeNode is None:
            raise ValueError("Select an input volume.")
        if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError(f"'{volumeNode.GetName()}' is not a scalar or RGB image volume.")
        if volumeNode.GetImageData() is None:
            raise ValueError(f"'{volumeNode.GetName()}' has no image data.")

    def classify(self, volumeNode, modelRef=None, device="auto", computeHeatmap=True, heatmapClass=None) -> ClassificationOutput:
        """Classify a volume node in this process (for scripts and tests: the caller waits
        while torch loads and the model runs; the GUI uses :meth:`startBackgroundClassification`).

        :raises ValueError: no or unsuitable input node.
        :raises brainspineai.errors.BrainSpineAIError: unusable image or model.
        """
        from brainspineai.classification.inference import classify_image

        self._checkInput(volumeNode)
        image = mrml_utils.sitk_image_from_volume_node(volumeNode)
        model = self.loadModel(modelRef, device)
        if getattr(model, "kind", "") == "sicf":  # random forest on SIFT + VGG16 features: no Grad-CAM
            from brainspineai.sicf.inference import classify_sicf

            res = classify_sicf(image, model)
            return self._toScene(volumeNode, {**res.to_json(), "sicf": res.extra["sicf"]}, None)
        from brainspineai.classification.sequence import check_sequence

        res = classify_image(image, model, heatmap=computeHeatmap, heatmap_class=heatmapClass)
        doc = res.to_json()
        doc["sequence"], doc["warnings"] = check_sequence(image, model.card, device,  # as `brainspineai classify`
                                                          predicted=doc.get("predicted"))
        return self._toScene(volumeNode, doc, res.heatmap)

    @staticmethod
    def _isSICF(modelRef) -> bool:
        """True when ``modelRef`` names an SICF model (its card's task is ``sicf-2d``)."""
        if not modelRef or str(modelRef).startswith(("http://", "https://", "file://")):
            return False  # the default model is a network; a URL is not fetched here (the process does)
        from brainspineai.catalogue import read_card, resolve_model

        try:
            return read_card(resolve_model(str(modelRef))).get("task") == "sicf-2d"
        except Exception:  # an unknown model: the process reports it
            return False

    def startBackgroundClassification(self, volumeNode, modelRef=None, device="auto", computeHeatmap=True,
                                      heatmapClass=None) -> BackgroundClassification:
        """Write the volume (a single slice or a 3D volume) to a temporary file and start
        ``brainspineai classify`` on it in the warm worker (:mod:`.worker_client`); poll the returned job, then call
        :meth:`finishBackgroundClassification`. This is the path the module's GUI takes for
        every input, so importing torch, initialising CUDA and loading the model (or building
        VGG16 for an SICF model) never block Slicer. An SICF model gets no heatmap.

        :raises ValueError: no or unsuitable input node."""
        import SimpleITK as sitk

        self._checkInput(volumeNode)
        if computeHeatmap and self._isSICF(modelRef):  # a random forest on SIFT + VGG16 features: no Grad-CAM
            computeHeatmap = False
        workdir = Path(tempfile.mkdtemp(prefix="BrainSpineAI-classify-"))
        try:
            image = mrml_utils.sitk_image_from_volume_node(volumeNode)
            sitk.WriteImage(image, str(workdir / "input.nrrd"), False)  # uncompressed: written and read fast
        except Exception:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        cmd = ["classify", workdir / "input.nrrd", "--device", device or "auto",
                         "--json", workdir / "result.json", "--progress", "jsonl"]
        if modelRef:
            cmd += ["--model", str(modelRef)]
        if computeHeatmap:
            cmd += ["--heatmap", str(workdir / "heatmap.nii")]
            if heatmapClass:
                cmd += ["--heatmap-class", str(heatmapClass)]
        return startJob(cmd, workdir, context={"inputNodeID": volumeNode.GetID()})  # the warm worker

    def finishBackgroundClassification(self, job: BackgroundClassification) -> ClassificationOutput:
        """Read a finished job's result into the scene and remove its temporary files.

        :raises RuntimeError: the job failed or was cancelled (message from the process).
        """
        import SimpleITK as sitk

        try:
            job.checkFinished("classification")
            volumeNode = self.scene.GetNodeByID(job.context["inputNodeID"])
            if volumeNode is None:
                raise RuntimeError("the input volume was removed from the scene while it was being classified")
            heat = job.workdir / "heatmap.nii"
            heatImage = sitk.ReadImage(str(heat)) if heat.is_file() else None
            return self._toScene(volumeNode, job.result, heatImage)
        finally:
            job.cleanup()

    # ---------------------------------------------------------------- scene output
    def _toScene(self, volumeNode, result: dict, heatImage) -> ClassificationOutput:
        import SimpleITK as sitk

        out = ClassificationOutput(result=result)
        out.tableNode = self._probabilityTable(volumeNode, result)
        if result.get("slices"):
            out.plotChartNode = self._slicePlot(volumeNode, result)
        if heatImage is not None:
            arr = sitk.GetArrayFromImage(heatImage).astype("float32")
            expected = tuple(reversed(volumeNode.GetImageData().GetDimensions()))
            if arr.shape != expected:
                raise RuntimeError(f"heatmap has shape {arr.shape}, input has {expected}")
            out.heatmapNode = self._heatmapNode(volumeNode, arr, result.get("heatmap_class", result["predicted"]),
                                                result.get("heatmap_method"))
        return out

    def _probabilityTable(self, volumeNode, result):
        import vtk

        table = mrml_utils.named_node(self.scene, "vtkMRMLTableNode", f"{volumeNode.GetName()} class probabilities")
        classes = vtk.vtkStringArray()
        classes.SetName("Class")
        probs = vtk.vtkDoubleArray()
        probs.SetName("Probability")
        for c, p in zip(result["classes"], result["probabilities"]):
            classes.InsertNextValue(c)
            probs.InsertNextValue(float(p))
        t = vtk.vtkTable()
        t.AddColumn(classes)
        t.AddColumn(probs)
        table.SetAndObserveTable(t)
        table.SetAttribute("BrainSpineAI.model", result["model"])
        table.SetAttribute("BrainSpineAI.predicted", result["predicted"])
        table.SetAttribute("BrainSpineAI.sequence", str((result.get("sequence") or {}).get("predicted") or ""))
        table.SetAttribute("BrainSpineAI.uncertain", "true" if result.get("uncertain") else "false")
        table.SetAttribute("BrainSpineAI.warnings", "\n".join(result.get("warnings") or []))
        return table

    def _slicePlot(self, volumeNode, result):
        import vtk

        base = volumeNode.GetName()
        table = mrml_utils.named_node(self.scene, "vtkMRMLTableNode", f"{base} per-slice probabilities")
        t = vtk.vtkTable()
        idx = vtk.vtkDoubleArray()
        idx.SetName("Slice")
        for s in result["slices"]:
            idx.InsertNextValue(s["index"])
        t.AddColumn(idx)
        for ci, c in enumerate(result["classes"]):
            col = vtk.vtkDoubleArray()
            col.SetName(c)
            for s in result["slices"]:
                col.InsertNextValue(float(s["probabilities"][ci]))
            t.AddColumn(col)
        table.SetAndObserveTable(t)
        chart = mrml_utils.named_node(self.scene, "vtkMRMLPlotChartNode", f"{base} per-slice probabilities")
        chart.SetTitle(f"Per-slice class probabilities ({result['model']})")
        chart.SetXAxisTitle("axial slice (inferior to superior)")
        chart.SetYAxisTitle("probability")
        chart.RemoveAllPlotSeriesNodeIDs()
        colours = [(0.85, 0.2, 0.2), (0.2, 0.5, 0.85), (0.3, 0.7, 0.3), (0.8, 0.5, 0.1), (0.5, 0.3, 0.7)]
        for ci, c in enumerate(result["classes"]):
            series = mrml_utils.named_node(self.scene, "vtkMRMLPlotSeriesNode", f"{base} {c}")
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("Slice")
            series.SetYColumnName(c)
            series.SetPlotType(series.PlotTypeScatter)
            series.SetMarkerStyle(series.MarkerStyleNone)
            series.SetColor(*colours[ci % len(colours)])
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return chart

    def _heatmapNode(self, volumeNode, arr, className, method=None):
        """The heatmap volume; attributes name the class, the method (``heatmapMethod``, e.g.
        "LayerCAM at layer4, 128+192 px input") and the RAS point of the hottest voxel (``hottestRAS``), where
        :meth:`showHeatmap` puts the slice views first."""
        import numpy as np
        import vtk

        node = mrml_utils.named_node(self.scene, "vtkMRMLScalarVolumeNode", f"{volumeNode.GetName()} Grad-CAM")
        mrml_utils.update_volume_node_from_array(node, arr, reference=volumeNode)
        node.SetAttribute("BrainSpineAI.heatmapClass", className)
        method = method or {"name": "Grad-CAM", "layer": "layer4"}
        size = f", {'+'.join(map(str, method['input_sizes']))} px input" if method.get("input_sizes") else ""
        if method.get("slice_sigma"):
            size += f", smoothed across slices (sigma {method['slice_sigma']:g})"
        node.SetAttribute("BrainSpineAI.heatmapMethod", f"{method.get('name', method.get('method'))} at {method.get('layer')}{size}")
        k, j, i = np.unravel_index(int(np.argmax(arr)), arr.shape)
        ijkToRAS = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRAS)
        ras = ijkToRAS.MultiplyPoint((float(i), float(j), float(k), 1.0))[:3]
        node.SetAttribute("BrainSpineAI.hottestRAS", " ".join(f"{v:.4f}" for v in ras))
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.SetAndObserveColorNodeID(mrml_utils.heat_color_node(self.scene).GetID())
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(0.0, 1.0)
            display.SetApplyThreshold(False)
        return node

    def showHeatmap(self, heatmapNode, inputVolumeNode, opacity: float = 0.5) -> None:
        """Show the input as background and the heatmap as foreground in every slice view,
        each view moved to the slice through the heatmap's hottest voxel (strongest evidence)."""
        hottest = heatmapNode.GetAttribute("BrainSpineAI.hottestRAS") if heatmapNode else None
        if hottest:
            ras = [float(v) for v in hottest.split()]
            for sliceNode in mrml_utils.nodes_by_class(self.scene, "vtkMRMLSliceNode"):
                sliceNode.JumpSliceByOffsetting(*ras)
        for comp in self._compositeNodes():
            comp.SetBackgroundVolumeID(inputVolumeNode.GetID() if inputVolumeNode else None)
            comp.SetForegroundVolumeID(heatmapNode.GetID() if heatmapNode else None)
            comp.SetForegroundOpacity(float(opacity))

    def setHeatmapOpacity(self, opacity: float) -> None:
        for comp in self._compositeNodes():
            comp.SetForegroundOpacity(float(opacity))

    def _compositeNodes(self):
        return mrml_utils.nodes_by_class(self.scene, "vtkMRMLSliceCompositeNode")
