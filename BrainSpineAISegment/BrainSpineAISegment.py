"""BrainSpineAI Segment: CLIP-guided segmentation of BraTS multi-sequence brain MRI in 3D Slicer.

The computation lives in the Slicer-free package ``brainspineai`` (``brainspineai segment``,
run in a background process) and in ``BrainSpineAISegmentLib.segment_logic``; this file is the
Slicer shell (module, parameter node, widget, logic, test). Heavy packages (torch, monai,
SimpleITK) are never imported here.
"""

import html
import logging
import os
import re
import time
from typing import Annotated, Optional

import qt
import vtk

import slicer

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer < 5.4: no translation support

    def _(text):
        return text

from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from BrainSpineAISegmentLib.segment_logic import REGIONS, SegmentationLogic
from BrainSpineAISegmentLib.sequences import SEQUENCE_LABELS, SEQUENCES


#
# BrainSpineAISegment
#


class BrainSpineAISegment(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BrainSpineAI Segment")
        self.parent.categories = ["BrainSpineAI"]
        self.parent.dependencies = ["BrainSpineAI"]  # provides the brainspineai library and BrainSpineAILib
        self.parent.contributors = ["BrainSpineAI team"]
        self.parent.helpText = _("""
Segments a brain tumour (glioma) in multi-sequence MRI (T1, T1 contrast-enhanced, T2, FLAIR)
into the three BraTS regions: whole tumour (WT), tumour core (TC) and enhancing tumour (ET),
with a CLIP-guided 3D U-Net.<br>
Load the volumes of one patient; the sequence selectors are filled from the volume names
(t1 / t1c / t2 / flair ...). The model card says which sequences are needed (the first is
the reference grid). Optionally type the radiology report: it guides the model. Click
<b>Segment</b>: the model runs in a separate process (Cancel stops it and leaves the scene
as it was) and the result is one segmentation with overlapping WT, TC and ET segments on the
reference volume's grid, shown in 2D and 3D.<br>
Correct the segments in Segment Editor, then <b>Add to training set</b> and <b>Retrain</b>
to fine-tune the model on your corrected cases.<br>
<b>Research software: not for clinical use.</b><br>
See the <a href="https://github.com/brainspineai/SlicerBrainSpineAI">project page</a>.
""")
        self.parent.acknowledgementText = _("""
Developed by the BrainSpineAI team. Built on 3D Slicer, PyTorch, MONAI, open_clip and SimpleITK.
The background-process design follows SlicerMONAIAuto3DSeg (A. Lasso et al.); the module
structure follows the 3D Slicer scripted module template.
""")


#
# BrainSpineAISegmentParameterNode
#


@parameterNodeWrapper
class BrainSpineAISegmentParameterNode:
    """
    The parameters needed by the module.

    t1Volume, t1ceVolume, t2Volume, flairVolume - the input sequences (those the model needs).
    modelId - id of the selected segmentation model.
    device - "auto", "cpu" or "cuda".
    tta - flip test-time augmentation.
    caseId - case id used by "Add to training set".
    segmentation - the segmentation to add to the training set (the last result by default).
    """

    t1Volume: vtkMRMLScalarVolumeNode
    t1ceVolume: vtkMRMLScalarVolumeNode
    t2Volume: vtkMRMLScalarVolumeNode
    flairVolume: vtkMRMLScalarVolumeNode
    modelId: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    tta: bool = False
    caseId: str = ""
    segmentation: vtkMRMLSegmentationNode


#
# BrainSpineAISegmentWidget
#


class BrainSpineAISegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cards = []
        self._job = None  # running segmentation (BackgroundJob) or retraining run
        self._jobKind = ""  # "segment" or "retrain"
        self._jobStart = 0.0
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainSpineAISegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = BrainSpineAISegmentLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(250)
        self._timer.connect("timeout()", self._pollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModels)
        self.ui.guessButton.connect("clicked(bool)", lambda: self.fillVolumesFromNames(overwrite=True))
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.addToTrainingSetButton.connect("clicked(bool)", self.onAddToTrainingSet)
        self.ui.retrainButton.connect("clicked(bool)", self.onRetrain)
        self.ui.datasetPathLineEdit.connect("currentPathChanged(QString)", lambda path: self._updateButtons())
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)

        self.refreshModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self.onCancelButton()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.fillVolumesFromNames(overwrite=False)

    def setParameterNode(self, inputParameterNode: Optional[BrainSpineAISegmentParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._selectModel(self._parameterNode.modelId)
        self._updateButtons()

    # -- inputs --------------------------------------------------------------------

    def _volumes(self) -> dict:
        """{sequence: node} of the sequence selectors (empty ones left out)."""
        if not self._parameterNode:
            return {}
        out = {seq: getattr(self._parameterNode, f"{seq}Volume") for seq in SEQUENCES}
        return {seq: node for seq, node in out.items() if node}

    def fillVolumesFromNames(self, overwrite: bool = False) -> None:
        """Fill the sequence selectors from the volume names (only empty ones unless overwrite)."""
        if not self._parameterNode:
            return
        for seq, node in self.logic.guessVolumes().items():
            if overwrite or not getattr(self._parameterNode, f"{seq}Volume"):
                setattr(self._parameterNode, f"{seq}Volume", node)

    # -- models ------------------------------------------------------------------

    def refreshModels(self) -> None:
        previousId = self._parameterNode.modelId if self._parameterNode else ""
        ok, cards = self._tryRun(_("Could not list the models."), self.logic.availableModels)
        self._cards = list(cards) if ok and cards else []
        wasBlocked = self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for card in self._cards:
            self.ui.modelSelector.addItem(str(card.get("id", "?")), card.get("path", ""))
        self.ui.modelSelector.blockSignals(wasBlocked)
        if ok and not self._cards:
            self.ui.statusLabel.text = _("No segmentation model found. Install a model in "
                                         "~/.brainspineai/models or set BRAINSPINEAI_MODEL_PATH, then click Refresh.")
        self._selectModel(previousId)

    def _selectModel(self, modelId: str) -> None:
        ids = [str(card.get("id", "")) for card in self._cards]
        index = ids.index(modelId) if modelId in ids else (0 if ids else -1)
        wasBlocked = self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.setCurrentIndex(index)
        self.ui.modelSelector.blockSignals(wasBlocked)
        self.onModelSelected(index)

    def _currentCard(self):
        index = self.ui.modelSelector.currentIndex
        return self._cards[index] if 0 <= index < len(self._cards) else None

    def onModelSelected(self, index: int) -> None:
        card = self._cards[index] if 0 <= index < len(self._cards) else None
        if self._parameterNode and card is not None and self._parameterNode.modelId != card.get("id"):
            self._parameterNode.modelId = str(card.get("id", ""))
        required = [str(s) for s in (card or {}).get("sequences") or []]
        for seq in SEQUENCES:
            label = getattr(self.ui, f"{seq}Label")
            text = SEQUENCE_LABELS[seq] + ":"
            if seq in required:
                text = f"<b>{SEQUENCE_LABELS[seq]}</b>" + (_(" (reference)") if seq == required[0] else "") + ":"
            label.text = text
        self.ui.modelCardLabel.text = self._cardHtml(card) if card else ""
        self._updateButtons()

    @staticmethod
    def _cardHtml(card: dict) -> str:
        lines = [f"<b>{html.escape(str(card.get('id', '')))}</b>"]
        if card.get("description"):
            lines.append(html.escape(str(card["description"])))
        sequences = card.get("sequences") or []
        lines.append(_("Needs: {names}").format(names=html.escape(", ".join(SEQUENCE_LABELS.get(s, s) for s in sequences))))
        held = ((card.get("metrics") or {}).get("held_out") or {}).get("mean") or {}  # region -> {dice, hd95_mm}
        parts = []
        for region in ("WT", "TC", "ET"):
            value = (held.get(region) or {}).get("dice") if isinstance(held, dict) else None
            if isinstance(value, (int, float)):
                parts.append(f"{region} {value:.3f}")
        if parts:
            lines.append(_("Held-out Dice: {values}").format(values=", ".join(parts)))
        return "<br>".join(lines)

    # -- segmentation ------------------------------------------------------------

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self._job is not None
        card = self._currentCard()
        volumes = self._volumes()
        required = [str(s) for s in (card or {}).get("sequences") or []]
        missing = [s for s in required if s not in volumes]
        self.ui.segmentButton.enabled = bool(card) and not missing and not running
        self.ui.segmentButton.toolTip = (
            _("Segment the tumour.") if card and not missing
            else _("Select the volumes the model needs: {names}.").format(
                names=", ".join(SEQUENCE_LABELS[s] for s in missing)) if card else _("No segmentation model."))
        self.ui.cancelButton.enabled = running
        hasSegmentation = bool(self._parameterNode and self._parameterNode.segmentation)
        self.ui.addToTrainingSetButton.enabled = (hasSegmentation and not running and bool(volumes)
                                                  and bool(self.ui.datasetPathLineEdit.currentPath))
        self.ui.retrainButton.enabled = bool(card) and not running and bool(self.ui.datasetPathLineEdit.currentPath)

    def _installTorch(self):
        try:
            import PyTorchUtils
        except ImportError:
            return None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True)
        if torch is None:
            raise RuntimeError(_("PyTorch is required; its installation was cancelled."))
        return torch

    def _tryRun(self, message: str, function, *args, waitCursor: bool = True, **kwargs):
        """Call function; any error is shown in a dialog and in the status line. Returns (ok, result)."""
        error = _("see the error message")
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=waitCursor):
                return True, function(*args, **kwargs)
        except Exception as exc:  # already displayed by tryWithErrorDisplay
            error = exc
        logging.error("%s %s", message, error)
        self.ui.statusLabel.text = f"{message} {error}"
        return False, None

    def _dependenciesReady(self) -> bool:
        ok, ready = self._tryRun(
            _("Could not install the required Python packages."), self.logic.ensureDependencies,
            confirm=lambda msg: slicer.util.confirmOkCancelDisplay(msg),
            installTorch=self._installTorch, pipInstall=slicer.util.pip_install, waitCursor=False)
        if ok and not ready:
            self.ui.statusLabel.text = _("Required Python packages are missing.")
        return bool(ok and ready)

    def onSegmentButton(self) -> None:
        if not self._dependenciesReady():
            return
        card = self._currentCard()
        ok, job = self._tryRun(_("Segmentation failed."), self.logic.startSegmentation, self._volumes(),
                               modelRef=card.get("path") if card else None, device=self._parameterNode.device,
                               report=self.ui.reportTextEdit.toPlainText(), tta=self._parameterNode.tta)
        if not ok:
            return
        self._startPolling(job, "segment")
        self.ui.statusLabel.text = _("Segmentation started...")

    def _startPolling(self, job, kind: str) -> None:
        self._job, self._jobKind, self._jobStart = job, kind, time.perf_counter()
        self.ui.progressBar.setValue(0)
        self._updateButtons()
        self._timer.start()

    def _pollJob(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        ok, finished = self._tryRun(_("The background process failed."), job.poll, waitCursor=False)
        if not ok:
            self._endJob()
            return
        self.ui.progressBar.setValue(int(round(100 * float(job.fraction or 0.0))))
        if not finished:
            eta = getattr(job, "etaSeconds", None)
            text = job.progressText or ""
            if isinstance(eta, (int, float)):
                text += " " + _("({seconds:.0f} s left)").format(seconds=eta)
            self.ui.statusLabel.text = text
            return
        kind, seconds = self._jobKind, time.perf_counter() - self._jobStart
        self._endJob()
        if kind == "segment":
            ok, output = self._tryRun(_("Segmentation failed."), self.logic.finishSegmentation, job)
            if ok:
                self._showOutput(output, seconds)
        else:
            succeeded = getattr(job, "state", None) == "succeeded" or getattr(job, "succeeded", False) is True
            if succeeded:
                self.ui.statusLabel.text = _("Retraining finished in {seconds:.0f} s.").format(seconds=seconds)
                self.refreshModels()
            else:
                self.ui.statusLabel.text = _("Retraining failed: {error}").format(error=job.errorText or "")

    def onCancelButton(self) -> None:
        job = self._job
        self._endJob()
        if job is not None:
            self._tryRun(_("Could not cancel."), job.cancel)
            self.ui.progressBar.setValue(0)
            self.ui.statusLabel.text = _("Cancelled.")

    def _endJob(self) -> None:
        self._timer.stop()
        self._job, self._jobKind = None, ""
        self._updateButtons()

    def _showOutput(self, output, seconds: float) -> None:
        result = output.result
        node = output.segmentationNode
        if self._parameterNode:
            self._parameterNode.segmentation = node
        rows = []
        for region in REGIONS:
            info = (result.get("regions") or {}).get(region.key) or {}
            ml = info.get("volume_ml")
            rows.append(f"{html.escape(region.name)}: " + (f"{ml:.1f} ml" if isinstance(ml, (int, float)) else "-"))
        self.ui.resultsLabel.text = "<br>".join(rows)
        self.ui.statusLabel.text = _("Model {model}: done in {seconds:.1f} s.").format(
            model=result.get("model", ""), seconds=seconds)
        if output.referenceVolume is not None:
            slicer.util.setSliceViewerLayers(background=output.referenceVolume, fit=True)
            if self._parameterNode and not self._parameterNode.caseId:  # a default id for "Add to training set"
                self._parameterNode.caseId = re.sub(r"[^A-Za-z0-9_.-]+", "_", output.referenceVolume.GetName()).strip("_.-") or "case"
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and layoutManager.threeDViewCount > 0:
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()

    # -- training set ------------------------------------------------------------

    def onAddToTrainingSet(self) -> None:
        datasetDir = self.ui.datasetPathLineEdit.currentPath
        caseId = self._parameterNode.caseId or ""
        card = self._currentCard()
        volumes = self._volumes()
        required = [str(s) for s in (card or {}).get("sequences") or []]
        ordered = {s: volumes[s] for s in required if s in volumes}
        ordered.update({s: n for s, n in volumes.items() if s not in ordered})
        ok, folder = self._tryRun(_("Could not add the case to the training set."), self.logic.exportTrainingCase,
                                  datasetDir, caseId, ordered, self._parameterNode.segmentation)
        if ok:
            self.ui.statusLabel.text = _("Case added: {folder}").format(folder=str(folder))

    def onRetrain(self) -> None:
        if not self._dependenciesReady():
            return
        card = self._currentCard()
        ok, run = self._tryRun(_("Could not start retraining."), self.logic.requestRetrain,
                               self.ui.datasetPathLineEdit.currentPath, card.get("path") if card else None,
                               device=self._parameterNode.device)
        if ok:
            self._startPolling(run, "retrain")
            self.ui.statusLabel.text = _("Retraining started (see also the BrainSpineAI Train module)...")


#
# BrainSpineAISegmentLogic
#


class BrainSpineAISegmentLogic(ScriptedLoadableModuleLogic, SegmentationLogic):
    """Segmentation logic usable without the GUI (see BrainSpineAISegmentLib.segment_logic).

    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentationLogic.__init__(self, slicer.mrmlScene)

    def getParameterNode(self):
        return BrainSpineAISegmentParameterNode(super().getParameterNode())


#
# BrainSpineAISegmentTest
#


class BrainSpineAISegmentTest(ScriptedLoadableModuleTest):
    """Self-test for "Reload and Test" in a user's Slicer: Slicer's sample brain tumour MRI
    (SampleData ``MRBrainTumor1``, contrast-enhanced T1) goes through the module's logic, the
    background ``brainspineai segment`` process and back into the scene; the segmentation node is
    checked (geometry, parent, nested WT / TC / ET segments, names, terminology from our
    ``.term.json``). A cancelled job must leave the scene unchanged. Missing sample data, model or
    packages fail the test."""

    TIMEOUT_S = 1800

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentSampleTumour()
        self.setUp()
        self.test_CancelledSegmentationLeavesSceneUnchanged()

    # -- helpers
    def _sample(self, name):
        import SampleData

        self.delayDisplay(f"Loading sample data {name}")
        nodes = SampleData.SampleDataLogic().downloadSamples(name)
        self.assertTrue(nodes, f"SampleData could not provide '{name}' (no network?)")
        return nodes[0]

    def _requirePackages(self, logic):
        confirm = (lambda message: True) if slicer.app.testingEnabled() else slicer.util.confirmOkCancelDisplay
        ready = logic.ensureDependencies(confirm=confirm, pipInstall=slicer.util.pip_install)
        self.assertTrue(ready, f"required Python packages are missing: {logic.missingPackages()}")

    def _inputs(self, logic):
        """{sequence: volume} for the first model: MRBrainTumor1 is the only sample MRI of this
        tumour, so each further sequence the model needs gets a copy of it (a pipeline test, not an
        accuracy test)."""
        tumour = self._sample("MRBrainTumor1")
        self.assertTrue(logic.availableModels(), "no segmentation model found (one ships with the extension)")
        required = logic.requiredSequences()
        volumes = {required[0]: tumour}
        for seq in required[1:]:
            volumes[seq] = slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, tumour, f"MRBrainTumor1 {seq}")
        return volumes, tumour

    def _tag(self, segment, name):
        value = vtk.reference("")
        self.assertTrue(segment.GetTag(name, value), f"segment '{segment.GetName()}' has no tag {name}")
        return str(value)

    def _wait(self, job, what):
        start = time.time()
        while not job.poll():
            if time.time() - start > self.TIMEOUT_S:
                job.cancel()
                self.fail(f"{what} did not finish within {self.TIMEOUT_S} s")
            slicer.app.processEvents()
            time.sleep(0.1)

    # -- tests
    def test_SegmentSampleTumour(self):
        import numpy as np

        from BrainSpineAISegmentLib.segment_logic import REGION_TAG, TERMINOLOGY_CONTEXT

        logic = BrainSpineAISegmentLogic()
        self._requirePackages(logic)
        volumes, reference = self._inputs(logic)
        self.delayDisplay("Segmenting MRBrainTumor1 in a background process")
        job = logic.startSegmentation(volumes, device="auto")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 0,
                         "the scene changed before the process finished")
        self._wait(job, "segmentation")
        output = logic.finishSegmentation(job)
        self.assertFalse(job.workdir.exists(), "the job's temporary folder was not removed")

        node = output.segmentationNode
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 1)
        self.assertIs(output.referenceVolume, reference)
        segmentation = node.GetSegmentation()
        self.assertEqual([segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())],
                         [region.name for region in REGIONS])

        # geometry: the reference volume's grid, transform and place in the subject hierarchy
        geometry = segmentation.GetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
        expected = slicer.vtkSegmentationConverter.SerializeImageGeometry(
            slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(reference))
        self.assertEqual(geometry, expected)
        self.assertEqual(node.GetTransformNodeID(), reference.GetTransformNodeID())
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(sh.GetItemParent(sh.GetItemByDataNode(node)), sh.GetItemParent(sh.GetItemByDataNode(reference)))
        self.assertTrue(segmentation.ContainsRepresentation("Closed surface"))

        # voxels on the reference grid; BraTS regions are nested: ET within TC within WT
        shape = slicer.util.arrayFromVolume(reference).shape
        masks = {}
        for region in REGIONS:
            self.assertEqual(self._tag(segmentation.GetSegment(region.key), REGION_TAG), region.key)
            masks[region.key] = slicer.util.arrayFromSegmentBinaryLabelmap(node, region.key, reference) > 0
            self.assertEqual(masks[region.key].shape, shape)
        self.assertFalse((masks["ET"] & ~masks["TC"]).any(), "enhancing tumour outside the tumour core")
        self.assertFalse((masks["TC"] & ~masks["WT"]).any(), "tumour core outside the whole tumour")
        if masks["WT"].any():  # inside the head, not in the air around it
            voxels = slicer.util.arrayFromVolume(reference)
            self.assertGreater(float(np.median(voxels[masks["WT"]])), float(np.percentile(voxels, 50)))

        # terminology: our context is loaded in Slicer and every segment's entry is found in it
        tlogic = slicer.modules.terminologies.logic()
        loaded = vtk.vtkStringArray()
        tlogic.GetLoadedTerminologyNames(loaded)
        self.assertIn(TERMINOLOGY_CONTEXT, [loaded.GetValue(i) for i in range(loaded.GetNumberOfValues())])
        for region in REGIONS:
            tag = self._tag(segmentation.GetSegment(region.key), slicer.vtkSegment.GetTerminologyEntryTagName())
            entry = slicer.vtkSlicerTerminologyEntry()
            self.assertTrue(tlogic.DeserializeTerminologyEntry(tag, entry))
            self.assertEqual(entry.GetTerminologyContextName(), TERMINOLOGY_CONTEXT)
            typeCodes = []
            for i in range(tlogic.GetNumberOfTypesInTerminologyCategory(TERMINOLOGY_CONTEXT, entry.GetCategoryObject())):
                t = slicer.vtkSlicerTerminologyType()
                tlogic.GetNthTypeInTerminologyCategory(TERMINOLOGY_CONTEXT, entry.GetCategoryObject(), i, t)
                typeCodes.append(t.GetCodeValue())
            self.assertIn(entry.GetTypeObject().GetCodeValue(), typeCodes, f"{region.name}: type not in {TERMINOLOGY_CONTEXT}")
        self.delayDisplay(f"Segments: {', '.join(f'{k} {int(m.sum())} voxels' for k, m in masks.items())}")
        self.delayDisplay("Test passed")

    def test_CancelledSegmentationLeavesSceneUnchanged(self):
        logic = BrainSpineAISegmentLogic()
        self._requirePackages(logic)
        volumes, _ = self._inputs(logic)
        before = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.startSegmentation(volumes, device="auto")
        job.cancel()
        self.assertTrue(job.poll() and job.cancelled)
        with self.assertRaises(RuntimeError):
            logic.finishSegmentation(job)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.assertFalse(job.workdir.exists())
        self.delayDisplay("Test passed")
