"""The "Prognosis" step of the Segment module, independent of Qt: survival risk, a survival
curve, WHO grade probabilities and modality weights of the current lower-grade glioma patient
(issue 18), from the selected FLAIR (T1 and T1c where given), a tumour mask and the age typed in.

The volumes and the mask are written uncompressed to a temporary patient folder (``flair.nii``,
``t1.nii``, ``t1ce.nii``, ``mask.nii``, the layout of
:func:`brainspineai.prognosis.data.find_case`) and ``brainspineai prognosis CASE --age YEARS
--progress jsonl`` runs in a background process (:class:`BrainSpineAILib.background.BackgroundJob`).
The mask is a labelmap volume or a segmentation: of a BrainSpineAI segmentation the whole tumour
(WT, the FLAIR abnormality the model was trained on), else the union of its segments; it is put
onto the FLAIR's voxel grid (nearest neighbour). The result comes back as a table node (one
quantity per row) and a plot chart of the survival curve; nothing is added to the scene before
the process has succeeded.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from BrainSpineAILib import mrml_utils
from BrainSpineAILib.background import BackgroundJob, cliCommand

SEQUENCES = ("t1", "t1ce", "flair")
YEARS = (1, 2, 3, 5)


@dataclass
class PrognosisOutput:
    """What a prognosis put in the scene: ``result`` (the CLI's JSON: ``risk``, ``risk_group``,
    ``survival {days, probability}``, ``grade {probabilities}``, ``modality_weights``,
    ``missing_sequences``), ``tableNode`` (quantity / value) and ``plotChartNode`` (survival curve)."""

    result: dict
    tableNode: object = None
    plotChartNode: object = None


def survivalAt(result: dict, days: float) -> float:
    """The survival curve's probability at ``days`` (a step function: the last point at or before)."""
    curve = result["survival"]
    values = [p for t, p in zip(curve["days"], curve["probability"]) if t <= days]
    return float(values[-1]) if values else 1.0


class PrognosisLogic:
    def __init__(self, scene):
        self.scene = scene

    def maskArray(self, maskNode, flairNode):
        """The tumour mask as a uint8 array (K, J, I) on the FLAIR's voxel grid (1 = tumour).

        :param maskNode: a labelmap (or scalar) volume node, any label > 0 is tumour, or a
            segmentation node (WT when it is a BrainSpineAI segmentation, else every segment).
        :raises ValueError: no mask, an empty mask, or a mask under another transform than the FLAIR.
        """
        import numpy as np

        if maskNode is None:
            raise ValueError("select a tumour mask (a segmentation or a labelmap): the prognosis model describes the "
                             "tumour region; segment the tumour first or load the expert mask")
        if maskNode.IsA("vtkMRMLSegmentationNode"):
            from BrainSpineAISegmentLib.segment_logic import SegmentationLogic

            logic = SegmentationLogic(self.scene)
            ids = logic.regionSegmentIDs(maskNode)
            if ids:  # only the whole tumour is needed: TC and ET are not rasterised
                mask = logic.segmentMaskOnReference(maskNode, ids.get("WT"), flairNode)
            else:
                mask = self._allSegments(logic, maskNode, flairNode)
        else:
            import SimpleITK as sitk

            if maskNode.GetTransformNodeID() != flairNode.GetTransformNodeID():
                raise ValueError("The tumour mask and the FLAIR are under different transforms; harden them first.")
            image = mrml_utils.sitk_image_from_volume_node(maskNode) > 0
            reference = mrml_utils.sitk_image_from_volume_node(flairNode)
            mask = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(image, sitk.sitkUInt8), reference, sitk.Transform(),
                                                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0
        mask = np.asarray(mask, dtype=np.uint8)
        if not mask.any():
            raise ValueError(f"the tumour mask '{maskNode.GetName()}' is empty on the FLAIR's grid")
        return mask

    def _allSegments(self, logic, segmentationNode, referenceVolume):
        import numpy as np

        segmentation = segmentationNode.GetSegmentation()
        mask = None
        for i in range(segmentation.GetNumberOfSegments()):
            m = logic.segmentMaskOnReference(segmentationNode, segmentation.GetNthSegmentID(i), referenceVolume)
            mask = m if mask is None else (mask | m)
        if mask is None:
            raise ValueError(f"the segmentation '{segmentationNode.GetName()}' has no segment")
        return np.asarray(mask)

    def startPrognosis(self, volumesBySequence: dict, maskNode, age, modelRef=None) -> BackgroundJob:
        """Write the patient folder and start ``brainspineai prognosis`` on it. Poll the job, then
        call :meth:`finishPrognosis` (or ``job.cancel()``).

        :param volumesBySequence: ``{"flair": node, "t1": node, "t1ce": node}`` (FLAIR required;
            other keys, e.g. ``t2``, are ignored: the model does not use them).
        :param maskNode: see :meth:`maskArray`.
        :param age: age in years at diagnosis.
        :raises ValueError: no FLAIR, no or an empty mask, an implausible age.
        """
        import SimpleITK as sitk

        from brainspineai.errors import InputError
        from brainspineai.prognosis.data import check_age

        try:
            age = check_age(age, where="age")
        except InputError as exc:
            raise ValueError(str(exc)) from None
        chosen = {s: n for s, n in volumesBySequence.items() if n is not None and s in SEQUENCES}
        if "flair" not in chosen:
            raise ValueError("select the FLAIR volume: the prognosis model needs at least the FLAIR")
        mask = self.maskArray(maskNode, chosen["flair"])
        workdir = Path(tempfile.mkdtemp(prefix="BrainSpineAI-prognosis-"))
        case = workdir / "case"
        try:
            case.mkdir()
            images = {seq: mrml_utils.sitk_image_from_volume_node(node) for seq, node in chosen.items()}
            for seq, image in images.items():
                sitk.WriteImage(image, str(case / f"{seq}.nii"), False)
            maskImage = sitk.GetImageFromArray(mask)
            maskImage.CopyInformation(images["flair"])
            sitk.WriteImage(maskImage, str(case / "mask.nii"), False)  # uncompressed: this runs on the GUI thread
        except Exception:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        cmd = ["prognosis", case, "--age", f"{age:g}", "--progress", "jsonl"]
        if modelRef:
            cmd += ["--model", str(modelRef)]
        context = {"flairNodeID": chosen["flair"].GetID(), "name": chosen["flair"].GetName()}
        return BackgroundJob(cliCommand(*cmd), workdir, context=context)

    def finishPrognosis(self, job: BackgroundJob) -> PrognosisOutput:
        """Put a finished job's result in the scene (table and survival plot) and remove the job's
        temporary files.

        :raises RuntimeError: the job is still running, failed (message: the CLI's error line)
            or was cancelled; the scene is then unchanged.
        """
        try:
            result = job.checkFinished("prognosis")
            out = PrognosisOutput(result=result)
            base = job.context.get("name") or "patient"
            out.tableNode = self._table(base, result)
            out.plotChartNode = self._survivalPlot(base, result)
            return out
        finally:
            job.cleanup()

    def _table(self, base: str, result: dict):
        import vtk

        rows = [("model", result["model"]), ("risk (log relative hazard)", f"{result['risk']:+.3f}"),
                ("risk group", result["risk_group"])]
        rows += [(f"survival at {y} year{'s' if y > 1 else ''}", f"{survivalAt(result, 365 * y):.2f}") for y in YEARS]
        rows += [(f"grade {g} probability", f"{p:.2f}") for g, p in result["grade"]["probabilities"].items()]
        rows += [(f"modality weight {s}", f"{w:.2f}") for s, w in result["modality_weights"].items()]
        if result.get("missing_sequences"):
            rows.append(("missing sequences", ", ".join(result["missing_sequences"])))
        rows.append(("age (years)", f"{result['age']:g}"))
        table = mrml_utils.named_node(self.scene, "vtkMRMLTableNode", f"{base} prognosis")
        t = vtk.vtkTable()
        for name, column in (("Quantity", [r[0] for r in rows]), ("Value", [str(r[1]) for r in rows])):
            arr = vtk.vtkStringArray()
            arr.SetName(name)
            for value in column:
                arr.InsertNextValue(value)
            t.AddColumn(arr)
        table.SetAndObserveTable(t)
        table.SetAttribute("BrainSpineAI.model", result["model"])
        table.SetAttribute("BrainSpineAI.riskGroup", result["risk_group"])
        return table

    def _survivalPlot(self, base: str, result: dict):
        import vtk

        table = mrml_utils.named_node(self.scene, "vtkMRMLTableNode", f"{base} survival curve")
        t = vtk.vtkTable()
        for name, values in (("Days", result["survival"]["days"]), ("Survival", result["survival"]["probability"])):
            arr = vtk.vtkDoubleArray()
            arr.SetName(name)
            for v in values:
                arr.InsertNextValue(float(v))
            t.AddColumn(arr)
        table.SetAndObserveTable(t)
        chart = mrml_utils.named_node(self.scene, "vtkMRMLPlotChartNode", f"{base} survival curve")
        chart.SetTitle(f"Predicted survival ({result['risk_group']} risk group, {result['model']})")
        chart.SetXAxisTitle("days from diagnosis")
        chart.SetYAxisTitle("survival probability")
        chart.RemoveAllPlotSeriesNodeIDs()
        series = mrml_utils.named_node(self.scene, "vtkMRMLPlotSeriesNode", f"{base} survival")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("Days")
        series.SetYColumnName("Survival")
        series.SetPlotType(series.PlotTypeScatter)
        series.SetMarkerStyle(series.MarkerStyleNone)
        series.SetColor(0.85, 0.2, 0.2)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return chart
