"""BrainSpineAI Segment: CLIP-guided segmentation of BraTS multi-sequence brain MRI in 3D Slicer.

The computation lives in the Slicer-free package ``brainspineai`` (``brainspineai segment``,
run in a background process) and in ``BrainSpineAISegmentLib.segment_logic``; this file is the
Slicer shell (module, parameter node, widget, logic, test). Heavy packages (torch, monai,
SimpleITK) are never imported here.
"""

import html
import re
import time
from typing import Annotated, Union

import slicer
import vtk

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

from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from BrainSpineAILib.module_support import CONTRIBUTORS
from BrainSpineAILib.widget_helpers import ModelListMixin, ModuleWidgetMixin, currentFolder
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
        self.parent.contributors = list(CONTRIBUTORS)  # "Name (Organisation)"
        self.parent.helpText = _("""
Segments a brain tumour (glioma) in multi-sequence MRI (T1, T1 contrast-enhanced, T2, FLAIR)
into the three BraTS regions: whole tumour (WT), tumour core (TC) and enhancing tumour (ET),
with a CLIP-guided 3D U-Net.<br>
Load the volumes of one patient; the sequence selectors are filled from the volume names
(t1 / t1c / t2 / flair ...). The model card says which sequences are needed (the first is
the reference grid). Optionally type the radiology report (it guides only a model with a pre-trained CLIP, not the shipped one). Click
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
    tumourMask - the tumour region for Prognosis (a segmentation or a labelmap).
    age - the patient's age in years at diagnosis for Prognosis (0: unknown).
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
    tumourMask: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]  # None: the wrapper's default
    age: float = 0.0


#
# BrainSpineAISegmentWidget
#


class BrainSpineAISegmentWidget(ModuleWidgetMixin, ModelListMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The Segment panel. Parameter node, model list, job polling and Reload come from
    BrainSpineAILib.widget_helpers.

    Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    noModelsText = _("No segmentation model found. Install a model in ~/.brainspineai/models or set "
                     "BRAINSPINEAI_MODEL_PATH, then click Refresh.")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.initModuleWidget()
        self._poller = None  # the running segmentation (BackgroundJob) or retraining run (TrainingRun)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupModuleWidget("BrainSpineAISegment.ui")
        self.logic = BrainSpineAISegmentLogic()
        self._poller = self.newPoller(250, self.showJobProgress, self._onJobEnded)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.prepareButton.connect("clicked(bool)", self.onPrepareButton)
        self.ui.prognosisButton.connect("clicked(bool)", self.onPrognosisButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.guessButton.connect("clicked(bool)", lambda: self.fillVolumesFromNames(overwrite=True))
        self.ui.addToTrainingSetButton.connect("clicked(bool)", self.onAddToTrainingSet)
        self.ui.retrainButton.connect("clicked(bool)", self.onRetrain)
        self.ui.datasetPathLineEdit.connect("currentPathChanged(QString)", lambda path: self.updateButtons())
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)
        self.setupModelList()
        self.refreshModels()
        self.initializeParameterNode()

    def onParameterNodeInitialized(self) -> None:
        self.fillVolumesFromNames(overwrite=False)

    def onParameterNodeSet(self) -> None:
        if self._parameterNode:
            self.selectModel(self._parameterNode.modelId)

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

    def onCardSelected(self, card) -> None:
        required = [str(s) for s in (card or {}).get("sequences") or []]
        for seq in SEQUENCES:
            label = getattr(self.ui, f"{seq}Label")
            text = SEQUENCE_LABELS[seq] + ":"
            if seq in required:
                text = f"<b>{SEQUENCE_LABELS[seq]}</b>" + (_(" (reference)") if seq == required[0] else "") + ":"
            label.text = text

    @staticmethod
    def cardHtml(card: dict) -> str:
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

    def updateButtons(self, caller=None, event=None) -> None:
        running = self._poller is not None and self._poller.running
        card = self.currentCard()
        volumes = self._volumes()
        required = [str(s) for s in (card or {}).get("sequences") or []]
        missing = [s for s in required if s not in volumes]
        self.ui.segmentButton.enabled = bool(card) and not missing and not running
        self.ui.segmentButton.toolTip = (
            _("Segment the tumour.") if card and not missing
            else _("Select the volumes the model needs: {names}.").format(
                names=", ".join(SEQUENCE_LABELS[s] for s in missing)) if card else _("No segmentation model."))
        self.ui.prepareButton.enabled = bool(volumes) and not running
        pn = self._parameterNode
        self.ui.prognosisButton.enabled = bool(pn and "flair" in volumes and pn.tumourMask and pn.age > 0) and not running
        self.ui.cancelButton.enabled = running
        hasFolder = currentFolder(self.ui.datasetPathLineEdit) is not None
        hasSegmentation = bool(self._parameterNode and self._parameterNode.segmentation)
        self.ui.addToTrainingSetButton.enabled = hasSegmentation and not running and bool(volumes) and hasFolder
        self.ui.retrainButton.enabled = bool(card) and not running and hasFolder

    def onSegmentButton(self) -> None:
        if not self.dependenciesReady():
            return
        ok, job = self.tryRun(_("Segmentation failed."), self.logic.startSegmentation, self._volumes(),
                              modelRef=self.currentModelPath(), device=self._parameterNode.device,
                              report=self.ui.reportTextEdit.toPlainText(), tta=self._parameterNode.tta)
        if not ok:
            return
        self.ui.progressBar.setValue(0)
        self._poller.start(job, kind="segment")
        warning = self.logic.reportWarning(self.currentModelPath(), self.ui.reportTextEdit.toPlainText())
        self.setStatus(_("Segmentation started...") + (" " + _("Warning: {text}").format(text=warning) if warning else ""))
        self.updateButtons()

    def onPrepareButton(self) -> None:
        """Registration and brain extraction of the selected sequences (``brainspineai preprocess
        --mode auto``) in a background process; the result comes back as hidden nodes."""
        if not self.dependenciesReady():
            return
        from BrainSpineAISegmentLib.prepare_logic import PrepareLogic

        card = self.currentCard() or {}
        required = [str(s) for s in card.get("sequences") or []]
        volumes = self._volumes()
        reference = required[0] if required and required[0] in volumes else None
        ok, job = self.tryRun(_("Preparation failed."), PrepareLogic(slicer.mrmlScene).startPreparation, volumes,
                              reference=reference, mode="auto", device=self._parameterNode.device)
        if not ok:
            return
        self.ui.progressBar.setValue(0)
        self._poller.start(job, kind="prepare")
        self.setStatus(_("Preparing: registration and brain extraction..."))
        self.updateButtons()

    def onPrognosisButton(self) -> None:
        """Survival risk, curve, grade and modality weights of the patient (``brainspineai
        prognosis``) in a background process; the result comes back as a table and a plot."""
        if not self.dependenciesReady():
            return
        from BrainSpineAISegmentLib.prognosis_logic import PrognosisLogic

        pn = self._parameterNode
        ok, job = self.tryRun(_("Prognosis failed."), PrognosisLogic(slicer.mrmlScene).startPrognosis, self._volumes(),
                              pn.tumourMask, pn.age)
        if not ok:
            return
        self.ui.progressBar.setValue(0)
        self.ui.prognosisResultLabel.text = ""
        self._poller.start(job, kind="prognosis")
        self.setStatus(_("Prognosis started..."))
        self.updateButtons()

    def _showPrognosis(self, output, seconds: float) -> None:
        from BrainSpineAISegmentLib.prognosis_logic import survivalAt

        r = output.result
        grade = r["grade"]["probabilities"]
        lines = [_("Risk group: <b>{group}</b> (log relative hazard {risk:+.2f})").format(group=html.escape(r["risk_group"]),
                                                                                      risk=r["risk"]),
                 _("Survival: 1 y {y1:.2f}, 2 y {y2:.2f}, 5 y {y5:.2f}").format(
                     y1=survivalAt(r, 365), y2=survivalAt(r, 730), y5=survivalAt(r, 1825)),
                 _("Grade: II {g2:.2f}, III {g3:.2f}").format(g2=grade["II"], g3=grade["III"]),
                 _("Modality weights: {w}").format(w=html.escape(", ".join(f"{k} {v:.2f}" for k, v in
                                                                           r["modality_weights"].items())))]
        lines.append("<i>" + html.escape(_("Research use only: trained on 81 TCGA lower-grade glioma patients; "
                                           "not validated for clinical decisions.")) + "</i>")
        self.ui.prognosisResultLabel.text = "<br>".join(lines)
        slicer.modules.plots.logic().ShowChartInLayout(output.plotChartNode)
        self.setStatus(_("Prognosis done in {seconds:.0f} s ({model}).").format(seconds=seconds, model=r["model"]))

    def _showPrepared(self, prepared, seconds: float) -> None:
        from brainspineai.cli.preprocess import summary_line

        self.setStatus(_("Prepared in {seconds:.0f} s: {summary}. The brain mask and the prepared volumes are in the "
                         "Data module (hidden).").format(seconds=seconds, summary=summary_line(prepared.result)))

    def _onJobEnded(self, job, context) -> None:
        self.updateButtons()
        seconds = context["seconds"]
        if context.get("kind") == "prepare":
            from BrainSpineAISegmentLib.prepare_logic import PrepareLogic

            ok, prepared = self.tryRun(_("Preparation failed."), PrepareLogic(slicer.mrmlScene).finishPreparation, job)
            if ok:
                self._showPrepared(prepared, seconds)
            return
        if context.get("kind") == "prognosis":
            from BrainSpineAISegmentLib.prognosis_logic import PrognosisLogic

            ok, output = self.tryRun(_("Prognosis failed."), PrognosisLogic(slicer.mrmlScene).finishPrognosis, job)
            if ok:
                self._showPrognosis(output, seconds)
            return
        if context.get("kind") == "segment":
            ok, output = self.tryRun(_("Segmentation failed."), self.logic.finishSegmentation, job)
            if ok:
                self._showOutput(output, seconds)
            return
        succeeded = getattr(job, "state", None) == "succeeded" or getattr(job, "succeeded", False) is True
        if succeeded:  # TrainingRun.poll() registered the new version in the user catalogue
            self.setStatus(_("Retraining finished in {seconds:.0f} s.").format(seconds=seconds))
            self.refreshModels()
        else:
            self.setStatus(_("Retraining failed: {error}").format(error=job.errorText or ""))

    def onCancelButton(self) -> None:
        if self._poller.running:
            self.tryRun(_("Could not cancel."), self._poller.cancel)
            self.ui.progressBar.setValue(0)
            self.setStatus(_("Cancelled."))
        self.updateButtons()

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
        rows += [f"<span style='color:#c05000'>{html.escape(_('Warning: {text}').format(text=w))}</span>"
                 for w in result.get("warnings") or []]
        self.ui.resultsLabel.text = "<br>".join(rows)
        self.setStatus(_("Model {model}: done in {seconds:.1f} s.").format(model=result.get("model", ""), seconds=seconds))
        if output.referenceVolume is not None:
            slicer.util.setSliceViewerLayers(background=output.referenceVolume, fit=True)
            if self._parameterNode and not self._parameterNode.caseId:  # a default id for "Add to training set"
                self._parameterNode.caseId = re.sub(r"[^A-Za-z0-9_.-]+", "_", output.referenceVolume.GetName()).strip("_.-") or "case"
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and layoutManager.threeDViewCount > 0:
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()

    # -- training set ------------------------------------------------------------

    def onAddToTrainingSet(self) -> None:
        datasetDir = currentFolder(self.ui.datasetPathLineEdit)
        if datasetDir is None:
            self.setStatus(_("Select a dataset folder."))
            return
        caseId = self._parameterNode.caseId or ""
        volumes = self._volumes()
        required = [str(s) for s in (self.currentCard() or {}).get("sequences") or []]
        ordered = {s: volumes[s] for s in required if s in volumes}
        ordered.update({s: n for s, n in volumes.items() if s not in ordered})
        ok, folder = self.tryRun(_("Could not add the case to the training set."), self.logic.exportTrainingCase,
                                 datasetDir, caseId, ordered, self._parameterNode.segmentation)
        if ok:
            self.setStatus(_("Case added: {folder}").format(folder=str(folder)))

    def onRetrain(self) -> None:
        datasetDir = currentFolder(self.ui.datasetPathLineEdit)
        if datasetDir is None:
            self.setStatus(_("Select a dataset folder."))
            return
        if not self.dependenciesReady():
            return
        ok, run = self.tryRun(_("Could not start retraining."), self.logic.requestRetrain, datasetDir,
                              self.currentModelPath(), device=self._parameterNode.device)
        if ok:
            self.ui.progressBar.setValue(0)
            self._poller.start(run, kind="retrain")
            self.setStatus(_("Retraining started (see also the BrainSpineAI Train module)..."))
            self.updateButtons()


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
        self.setUp()
        self.test_PrepareAddsHiddenBrainMask()
        self.setUp()
        self.test_PrognosisOfSampleTumour()

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

    def test_PrepareAddsHiddenBrainMask(self):
        """The Prepare button's path: brain extraction of the sample tumour study in the
        background, the mask back as a hidden labelmap on the input's grid, the input untouched."""
        import numpy as np

        from BrainSpineAISegmentLib.prepare_logic import PrepareLogic

        logic = BrainSpineAISegmentLogic()
        self._requirePackages(logic)
        tumour = self._sample("MRBrainTumor1")
        before = slicer.util.arrayFromVolume(tumour).copy()
        job = PrepareLogic(slicer.mrmlScene).startPreparation({"t1ce": tumour}, mode="on", device="cpu")
        self._wait(job, "preparation")
        prepared = PrepareLogic(slicer.mrmlScene).finishPreparation(job)
        mask = slicer.util.arrayFromVolume(prepared.brainMask)
        self.assertEqual(mask.shape, before.shape)
        self.assertTrue(0.05 < float((mask > 0).mean()) < 0.6, "brain mask of implausible size")
        self.assertEqual(prepared.brainMask.GetAttribute("BrainSpineAI.Prepared"), "1")
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(tumour), before)
        self.delayDisplay("Prepare test passed")

    def test_PrognosisOfSampleTumour(self):
        """The Prognosis section's path: MRBrainTumor1 stands in for the FLAIR (a pipeline test,
        not an accuracy test: the sample has no FLAIR), a box around its enhancing tumour is the
        mask, the age is typed in; the result comes back as a table and a survival plot."""
        import numpy as np

        from BrainSpineAISegmentLib.prognosis_logic import PrognosisLogic

        logic = BrainSpineAISegmentLogic()
        self._requirePackages(logic)
        tumour = self._sample("MRBrainTumor1")
        voxels = slicer.util.arrayFromVolume(tumour)
        mask = np.zeros(voxels.shape, np.uint8)
        k, j, i = np.unravel_index(int(np.argmax(voxels)), voxels.shape)  # the enhancing rim is the brightest
        mask[max(0, k - 5):k + 5, max(0, j - 10):j + 10, max(0, i - 10):i + 10] = 1
        maskNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "sample tumour mask")
        slicer.util.updateVolumeFromArray(maskNode, mask)
        maskNode.CopyOrientation(tumour)
        before = slicer.mrmlScene.GetNumberOfNodes()
        job = PrognosisLogic(slicer.mrmlScene).startPrognosis({"flair": tumour}, maskNode, 45)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before, "the scene changed before the process finished")
        self._wait(job, "prognosis")
        output = PrognosisLogic(slicer.mrmlScene).finishPrognosis(job)
        self.assertIn(output.result["risk_group"], ("low", "high"))
        self.assertEqual(output.result["missing_sequences"], ["t1", "t1ce"])
        self.assertGreater(output.tableNode.GetNumberOfRows(), 8)
        self.assertEqual(output.plotChartNode.GetNumberOfPlotSeriesNodes(), 1)
        with self.assertRaises(ValueError):
            PrognosisLogic(slicer.mrmlScene).startPrognosis({"flair": tumour}, maskNode, None)
        self.delayDisplay("Prognosis test passed")

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
