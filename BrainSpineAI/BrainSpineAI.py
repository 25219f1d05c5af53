"""BrainSpineAI Classify: brain tumour classification of MRI slices and volumes in 3D Slicer.

The computation lives in the Slicer-free package ``brainspineai`` and in
``BrainSpineAILib.classification_logic``; this file is the Slicer shell (module, parameter
node, widget, logic, test). Heavy packages (torch, monai, SimpleITK) are never imported here.
"""

import html
from typing import Annotated

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
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode

from BrainSpineAILib.classification_logic import ClassificationLogic, resultTrustRows
from BrainSpineAILib.module_support import CONTRIBUTORS
from BrainSpineAILib.widget_helpers import ModelListMixin, ModuleWidgetMixin, currentFolder


#
# BrainSpineAI
#


class BrainSpineAI(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BrainSpineAI Classify")
        self.parent.categories = ["BrainSpineAI"]
        self.parent.dependencies = []
        self.parent.contributors = list(CONTRIBUTORS)  # "Name (Organisation)"
        self.parent.helpText = _("""
Classifies brain MRI into tumour classes (for the default model: glioma, meningioma,
pituitary tumour, no tumour) and shows a Grad-CAM heatmap of the image regions that drove
the prediction.<br>
Load a 2D MRI slice (JPEG, PNG, DICOM, ...) or a 3D MRI volume, select it as input, pick a
model and click <b>Classify</b>. The classification runs in a separate process (Slicer stays
responsive and Cancel stops it); a volume is classified slice by slice and a per-slice
probability plot is shown. The heatmap has exactly the geometry of the input and is shown as foreground in
the slice views; its opacity can be changed in <i>Results</i>.<br>
<b>Research software: not for clinical use.</b> Predictions must not be used for diagnosis
or treatment decisions.<br>
See the <a href="https://github.com/brainspineai/SlicerBrainSpineAI">project page</a>.
""")
        self.parent.acknowledgementText = _("""
Developed by the BrainSpineAI team. Built on 3D Slicer, PyTorch, MONAI and SimpleITK.
The module structure follows the 3D Slicer scripted module template by Jean-Christophe
Fillion-Robin (Kitware), Andras Lasso (PerkLab) and Steve Pieper (Isomics).
""")


#
# BrainSpineAIParameterNode
#


@parameterNodeWrapper
class BrainSpineAIParameterNode:
    """
    The parameters needed by the module.

    inputVolume - MRI slice or volume to classify (vector volumes, e.g. RGB JPEG, are
                  vtkMRMLScalarVolumeNode subclasses).
    modelId - id of the selected model (empty: the default model).
    device - "auto", "cpu" or "cuda".
    computeHeatmap - compute a Grad-CAM heatmap.
    heatmapOpacity - opacity of the heatmap in the slice views.
    heatmapVolume - the last heatmap computed.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelId: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    computeHeatmap: bool = True
    heatmapOpacity: Annotated[float, WithinRange(0, 1)] = 0.5
    heatmapVolume: vtkMRMLScalarVolumeNode


#
# BrainSpineAIWidget
#


class BrainSpineAIWidget(ModuleWidgetMixin, ModelListMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The Classify panel. Parameter node, model list, job polling and Reload come from
    BrainSpineAILib.widget_helpers.

    Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    noModelsText = _("No classification model found. Install a model in ~/.brainspineai/models or set "
                     "BRAINSPINEAI_MODEL_PATH, then click Refresh.")

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.initModuleWidget()
        self._poller = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)
        self.setupModuleWidget("BrainSpineAI.ui")
        self.logic = BrainSpineAILogic()
        self._poller = self.newPoller(200, self.showJobProgress, self._onClassified)

        self.ui.classifyButton.connect("clicked(bool)", self.onClassifyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.setupModelList()
        self.refreshModels()
        self._setupTrainingSet()

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.refreshModels()  # models trained meanwhile (BrainSpineAI Train) appear at once
        ModuleWidgetMixin.enter(self)

    def onParameterNodeInitialized(self) -> None:
        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def onParameterNodeSet(self) -> None:
        if self._parameterNode:
            self.selectModel(self._parameterNode.modelId)

    # -- models ------------------------------------------------------------------

    def onCardSelected(self, card) -> None:
        self.ui.heatmapClassSelector.clear()
        self.ui.heatmapClassSelector.addItem(_("predicted class"), "")
        for name in (card or {}).get("class_names") or []:
            self.ui.heatmapClassSelector.addItem(str(name), str(name))
        isSICF = (card or {}).get("task") == "sicf-2d"  # SICF models have no Grad-CAM
        self.ui.heatmapCheckBox.enabled = self.ui.heatmapClassSelector.enabled = not isSICF
        self._refreshTrainingClasses()

    @staticmethod
    def cardHtml(card: dict) -> str:
        lines = [f"<b>{html.escape(str(card.get('id', '')))}</b>"]
        if card.get("description"):
            lines.append(html.escape(str(card["description"])))
        classNames = card.get("class_names") or []
        lines.append(_("Classes: {names}").format(names=html.escape(", ".join(map(str, classNames)))))
        network = card.get("network") or {}
        method = {"two-branch": "AFF-CL (global + local branch, attentional feature fusion)",
                  "single": "one branch"}.get(network.get("kind"), "")
        pretrained = (card.get("pretraining") or {}).get("encoder")
        if method:
            lines.append(_("Method: {method}, backbone {backbone}").format(
                method=html.escape(method), backbone=html.escape(str(network.get("backbone", "")))))
        if pretrained:
            lines.append(_("SimCLR pre-trained encoder: {encoder}").format(encoder=html.escape(str(pretrained))))
        if card.get("task") == "sicf-2d":
            lines.append(_("Method: SICF (SIFT + VGG16 fusion, Lyrebird-optimised random forest), {kept} of {n} "
                           "features kept, ROI {roi}, VGG16 {vgg}").format(
                kept=card.get("n_features_kept"), n=card.get("n_features"), roi=html.escape(str(card.get("roi"))),
                vgg=html.escape(str((card.get("vgg16") or {}).get("source")))))
        validation = (card.get("metrics") or {}).get("validation") or {}
        accuracy = validation.get("accuracy")
        if isinstance(accuracy, (int, float)):
            lines.append(_("Validation accuracy: {accuracy:.1%}").format(accuracy=accuracy))
        auc = ((validation.get("probability_metrics") or {}).get("macro_auc") or {}).get("value")
        if isinstance(auc, (int, float)):
            lines.append(_("Validation macro AUC: {auc:.3f}").format(auc=auc))
        return "<br>".join(lines)

    # -- classification ----------------------------------------------------------

    def updateButtons(self, caller=None, event=None) -> None:
        running = self._poller is not None and self._poller.running
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.classifyButton.enabled = hasInput and bool(self._cards) and not running
        self.ui.classifyButton.toolTip = (_("Classify the input image.") if hasInput
                                          else _("Select an input image."))
        self.ui.cancelButton.enabled = running

    def onClassifyButton(self) -> None:
        """Classify the input in a background process (a single slice too: loading torch and
        the model never blocks Slicer)."""
        inputVolume = self._parameterNode.inputVolume if self._parameterNode else None
        if not inputVolume:
            self.setStatus(_("Select an input image."))
            return
        if not self.dependenciesReady():
            return
        self._clearResults()
        ok, job = self.tryRun(
            _("Classification failed."), self.logic.startBackgroundClassification, inputVolume,
            modelRef=self.currentModelPath(), device=self._parameterNode.device,
            computeHeatmap=self._parameterNode.computeHeatmap and self.ui.heatmapCheckBox.enabled,
            heatmapClass=self.ui.heatmapClassSelector.currentData or None)
        if not ok:
            return
        self._poller.start(job)
        self.setStatus(_("Classifying..."))
        self.updateButtons()

    def _onClassified(self, job, context) -> None:
        self.updateButtons()
        ok, output = self.tryRun(_("Classification failed."), self.logic.finishBackgroundClassification, job)
        if ok:
            self._showOutput(output, slicer.mrmlScene.GetNodeByID(job.context["inputNodeID"]))

    def onCancelButton(self) -> None:
        if self._poller.running:
            self.tryRun(_("Could not cancel the classification."), self._poller.cancel)
            self.setStatus(_("Classification cancelled."))
        self.updateButtons()

    # -- training set and retraining (logic: BrainSpineAILib.training_set, BrainSpineAITrain) --

    def _setupTrainingSet(self) -> None:
        self.ui.addToTrainingSetButton.connect("clicked(bool)", self.onAddToTrainingSet)
        self.ui.retrainButton.connect("clicked(bool)", self.onRetrain)
        self.ui.trainingSetPathLineEdit.connect("currentPathChanged(QString)", self._refreshTrainingClasses)
        self.ui.trainingClassSelector.connect("currentTextChanged(QString)", self._updateAddButtonText)
        self._refreshTrainingClasses()

    def _refreshTrainingClasses(self, *args) -> None:
        """Classes offered for "Add to training set": the model's, then the dataset folder's
        (none when no folder is chosen)."""
        from BrainSpineAILib.training_set import datasetClasses

        names = [str(n) for n in (self.currentCard() or {}).get("class_names", [])]
        names += [c for c in datasetClasses(currentFolder(self.ui.trainingSetPathLineEdit)) if c not in names]
        current = self.ui.trainingClassSelector.currentText
        wasBlocked = self.ui.trainingClassSelector.blockSignals(True)
        self.ui.trainingClassSelector.clear()
        for name in names:
            self.ui.trainingClassSelector.addItem(name)
        if current:
            self.ui.trainingClassSelector.setCurrentText(current)
        self.ui.trainingClassSelector.blockSignals(wasBlocked)
        self._updateAddButtonText()

    def _updateAddButtonText(self, *args) -> None:
        self.ui.addToTrainingSetButton.text = _("Add to training set as {name}").format(
            name=self.ui.trainingClassSelector.currentText or "...")

    def _shownPlane(self, volume):
        """The voxel plane of ``volume`` under the Red slice view, in that view's orientation."""
        from BrainSpineAILib.training_set import viewPlaneAt

        return viewPlaneAt(volume, slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode())

    def onAddToTrainingSet(self) -> None:
        from BrainSpineAILib.training_set import addToTrainingSet

        volume = self._parameterNode.inputVolume if self._parameterNode else None
        folder = currentFolder(self.ui.trainingSetPathLineEdit)
        className = self.ui.trainingClassSelector.currentText.strip()
        if not volume or not folder or not className:
            self.setStatus(_("Select an input image, a dataset folder and a class."))
            return
        plane = None
        if self.ui.trainingSliceCheckBox.checked and not self.logic.isSingleSlice(volume):
            ok, plane = self.tryRun(_("Could not find the slice shown in the Red view."), self._shownPlane, volume)
            if not ok:
                return
        ok, path = self.tryRun(_("Could not add the image to the training set."), addToTrainingSet,
                               volume, folder, className, plane=plane)
        if ok:
            self.setStatus(_("Added to the training set: {path}").format(path=path))
            self._refreshTrainingClasses()

    def onRetrain(self) -> None:
        folder = currentFolder(self.ui.trainingSetPathLineEdit)
        modelRef = self.currentModelPath()
        if not folder or not modelRef:
            self.setStatus(_("Select a model and a dataset folder to retrain on."))
            return
        slicer.util.selectModule("BrainSpineAITrain")
        trainWidget = slicer.modules.brainspineaitrain.widgetRepresentation().self()
        trainWidget.startRetrain(modelRef, folder)

    def onOpacityChanged(self, value: float) -> None:
        self.logic.setHeatmapOpacity(value)

    def _clearResults(self) -> None:
        self.ui.predictionLabel.text = ""
        self.ui.probabilityTable.setRowCount(0)

    def _showOutput(self, output, inputVolume) -> None:
        """Show a ClassificationOutput: prediction, probability table, heatmap and plot."""
        result = output.result
        classes, probabilities = list(result["classes"]), list(result["probabilities"])
        predicted = result["predicted"]
        p = probabilities[classes.index(predicted)] if predicted in classes else max(probabilities)
        self.ui.predictionLabel.text = _("Predicted: {name} ({p:.1%})").format(name=predicted, p=p)

        table = self.ui.probabilityTable
        rows = [(str(name), f"{prob:.1%}") for name, prob in zip(classes, probabilities)]
        rows += resultTrustRows(result)  # detected sequence, uncertain (see the helper)
        table.setRowCount(len(rows))
        for row, (name, value) in enumerate(rows):
            table.setItem(row, 0, qt.QTableWidgetItem(name))
            item = qt.QTableWidgetItem(value)
            item.setTextAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
            table.setItem(row, 1, item)
        table.resizeColumnToContents(0)
        if result.get("uncertain") or result.get("warnings"):
            self.ui.predictionLabel.text += "<br><span style='color:#c05000'>" + "<br>".join(
                html.escape(w) for w in ([_("Uncertain: do not rely on this answer.")] if result.get("uncertain") else [])
                + [_("Warning: {text}").format(text=w) for w in result.get("warnings") or []]) + "</span>"

        status = _("Model: {model}.").format(model=result.get("model", ""))
        if result.get("slices"):
            status += " " + _("{n} slices classified.").format(n=len(result["slices"]))
        if output.heatmapNode is not None:
            status += " " + _("Heatmap: {method}, class {name}.").format(
                method=output.heatmapNode.GetAttribute("BrainSpineAI.heatmapMethod") or "Grad-CAM",
                name=output.heatmapNode.GetAttribute("BrainSpineAI.heatmapClass") or predicted)
        if result.get("sicf") and inputVolume is not None and slicer.mrmlScene.IsNodePresent(inputVolume):
            from BrainSpineAILib import sicf_logic

            self.tryRun(_("Could not show the SICF ROI and keypoints."), sicf_logic.showSICFResult,
                        slicer.mrmlScene, inputVolume, result["sicf"])
            status += " " + _("SICF: {kept} of {n} features kept by the optimiser; ROI and {k} SIFT keypoints shown.").format(
                kept=result["sicf"]["n_features_kept"], n=result["sicf"]["n_features"], k=len(result["sicf"]["keypoints"]))
        self.setStatus(status)

        if output.heatmapNode is not None:
            if self._parameterNode:
                self._parameterNode.heatmapVolume = output.heatmapNode
            if inputVolume is not None and slicer.mrmlScene.IsNodePresent(inputVolume):
                self.tryRun(_("Could not show the heatmap."), self.logic.showHeatmap,
                            output.heatmapNode, inputVolume, self.ui.opacitySlider.value)
        if output.plotChartNode is not None:
            # shown in the layout's plot views; the Train module's curves view does not take it
            slicer.modules.plots.logic().ShowChartInLayout(output.plotChartNode)


#
# BrainSpineAILogic
#


class BrainSpineAILogic(ScriptedLoadableModuleLogic, ClassificationLogic):
    """Classification logic usable without the GUI (see BrainSpineAILib.classification_logic).

    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        ClassificationLogic.__init__(self, slicer.mrmlScene)

    def getParameterNode(self):
        return BrainSpineAIParameterNode(super().getParameterNode())


#
# BrainSpineAITest
#


class BrainSpineAITest(ScriptedLoadableModuleTest):
    """Self-test for "Reload and Test" in a user's Slicer: Slicer's own sample data (SampleData
    module: ``MRBrainTumor1``, ``MRHead``) goes through the module's logic, the background
    ``brainspineai classify`` process (PythonSlicer) and back into the scene, and the result is
    checked (nodes, geometry, probabilities). Missing sample data or packages fail the test.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    TIMEOUT_S = 1800  # a 3D volume on CPU, first start of torch included

    def setUp(self):
        """Reset the state: clear the scene."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ClassifySampleVolumesInBackground()

    # -- helpers
    def _sample(self, name):
        """A SampleData volume (downloaded once, cached by Slicer); fails when it cannot be had."""
        import SampleData

        self.delayDisplay(f"Loading sample data {name}")
        nodes = SampleData.SampleDataLogic().downloadSamples(name)
        self.assertTrue(nodes, f"SampleData could not provide '{name}' (no network?)")
        self.assertTrue(nodes[0].IsA("vtkMRMLScalarVolumeNode"), f"{name} is not a volume")
        return nodes[0]

    def _requirePackages(self, logic):
        """Install missing packages as a user would (one question; automatic under ctest)."""
        confirm = (lambda message: True) if slicer.app.testingEnabled() else slicer.util.confirmOkCancelDisplay
        ready = logic.ensureDependencies(confirm=confirm, pipInstall=slicer.util.pip_install)
        self.assertTrue(ready, f"required Python packages are missing: {logic.missingPackages()}")

    def _wait(self, job, what):
        import time

        start = time.time()
        while not job.poll():
            if time.time() - start > self.TIMEOUT_S:
                job.cancel()
                self.fail(f"{what} did not finish within {self.TIMEOUT_S} s")
            slicer.app.processEvents()
            time.sleep(0.1)

    @staticmethod
    def _matrix(node):
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        return [m.GetElement(i, j) for i in range(4) for j in range(4)]

    # -- tests
    def test_ClassifySampleVolumesInBackground(self):
        """MRBrainTumor1 and MRHead -> background classification -> table, per-slice chart and
        Grad-CAM volume on each input's grid."""
        import numpy as np

        logic = BrainSpineAILogic()
        self._requirePackages(logic)
        cards = logic.availableModels()
        self.assertTrue(cards, "no classification model found (the default model ships with the extension)")
        heatmaps = []
        for name in ("MRBrainTumor1", "MRHead"):
            volume = self._sample(name)
            self.delayDisplay(f"Classifying {name} in a background process")
            job = logic.startBackgroundClassification(volume, device="auto")
            self.assertIsNotNone(job.process.pid)
            self._wait(job, f"classification of {name}")
            output = logic.finishBackgroundClassification(job)
            self.assertFalse(job.workdir.exists(), "the job's temporary folder was not removed")

            result = output.result
            classes, probabilities = result["classes"], result["probabilities"]
            self.assertEqual(len(classes), len(probabilities))
            self.assertAlmostEqual(sum(probabilities), 1.0, delta=1e-4)
            self.assertIn(result["predicted"], classes)
            self.assertEqual(result["predicted"], classes[int(np.argmax(probabilities))])

            # one probability table row per class, in the scene
            table = output.tableNode
            self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(table.GetID()))
            self.assertEqual(table.GetNumberOfRows(), len(classes))
            self.assertEqual(table.GetAttribute("BrainSpineAI.predicted"), result["predicted"])

            # a volume: per-slice probabilities, one plot series per class
            dims = volume.GetImageData().GetDimensions()
            slices = result.get("slices") or []
            self.assertTrue(slices, f"{name} is a 3D volume: per-slice probabilities expected")
            for s in slices:
                self.assertTrue(0 <= s["index"] < max(dims), f"slice index {s['index']} outside the volume")
                self.assertAlmostEqual(sum(s["probabilities"]), 1.0, delta=1e-3)
            self.assertIsNotNone(output.plotChartNode)
            self.assertEqual(output.plotChartNode.GetNumberOfPlotSeriesNodes(), len(classes))

            # Grad-CAM: same grid and geometry as the input, values in [0, 1]
            heat = output.heatmapNode
            self.assertIsNotNone(heat, "no Grad-CAM volume")
            self.assertEqual(heat.GetImageData().GetDimensions(), dims)
            for a, b in zip(self._matrix(heat), self._matrix(volume)):
                self.assertAlmostEqual(a, b, places=5, msg="Grad-CAM IJK-to-RAS differs from the input's")
            arr = slicer.util.arrayFromVolume(heat)
            self.assertTrue(np.isfinite(arr).all())
            self.assertGreaterEqual(float(arr.min()), 0.0)
            self.assertLessEqual(float(arr.max()), 1.0 + 1e-5)
            self.assertGreater(float(arr.max()), 0.0, "Grad-CAM is empty")
            heatmaps.append(heat.GetID())
            self.delayDisplay(f"{name}: {result['predicted']} ({max(probabilities):.0%}), {len(slices)} slices")
        self.assertEqual(len(set(heatmaps)), 2, "the second input replaced the first one's Grad-CAM")
        self.delayDisplay("Test passed")
