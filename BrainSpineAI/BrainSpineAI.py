"""BrainSpineAI Classify: brain tumour classification of MRI slices and volumes in 3D Slicer.

The computation lives in the Slicer-free package ``brainspineai`` and in
``BrainSpineAILib.classification_logic``; this file is the Slicer shell (module, parameter
node, widget, logic, test). Heavy packages (torch, monai, SimpleITK) are never imported here.
"""

import html
import logging
import os
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
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode

from BrainSpineAILib.classification_logic import ClassificationLogic


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
        self.parent.contributors = ["BrainSpineAI team"]
        self.parent.helpText = _("""
Classifies brain MRI into tumour classes (for the default model: glioma, meningioma,
pituitary tumour, no tumour) and shows a Grad-CAM heatmap of the image regions that drove
the prediction.<br>
Load a 2D MRI slice (JPEG, PNG, DICOM, ...) or a 3D MRI volume, select it as input, pick a
model and click <b>Classify</b>. A single slice is classified at once; a volume is classified
slice by slice in a separate process (it can be cancelled) and a per-slice probability plot
is shown. The heatmap has exactly the geometry of the input and is shown as foreground in
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


class BrainSpineAIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cards = []  # model cards, in model selector order
        self._job = None  # running background classification
        self._jobInput = None  # its input volume node
        self._timer = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainSpineAI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets ("mrmlSceneChanged(vtkMRMLScene*)" is connected in the .ui).
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = BrainSpineAILogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self._pollJob)

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.classifyButton.connect("clicked(bool)", self.onClassifyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModels)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)

        self.refreshModels()
        self._setupTrainingSet()

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._job is not None:
            self.onCancelButton()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.refreshModels()  # models trained meanwhile (BrainSpineAI Train) appear at once
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        if self._job is not None:
            self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[BrainSpineAIParameterNode]) -> None:
        """Set and observe parameter node, connect it to the GUI."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # ui element that needs connection to the parameter node must have the
            # "SlicerParameterName" dynamic property set in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._selectModel(self._parameterNode.modelId)
        self._updateButtons()

    # -- models ------------------------------------------------------------------

    def refreshModels(self) -> None:
        """Fill the model selector from the catalogue; the first entry is the default model."""
        previousId = self._parameterNode.modelId if self._parameterNode else ""
        ok, cards = self._tryRun(_("Could not list the models."), self.logic.availableModels)
        self._cards = list(cards) if ok and cards else []
        wasBlocked = self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for card in self._cards:
            self.ui.modelSelector.addItem(str(card.get("id", "?")), card.get("path", ""))
        self.ui.modelSelector.blockSignals(wasBlocked)
        if ok and not self._cards:
            self.ui.statusLabel.text = _("No classification model found. Install a model in "
                                         "~/.brainspineai/models or set BRAINSPINEAI_MODEL_PATH, then click Refresh.")
        self._selectModel(previousId)

    def _selectModel(self, modelId: str) -> None:
        """Select the model with this id (the first model if not found) and show its card."""
        ids = [str(card.get("id", "")) for card in self._cards]
        index = ids.index(modelId) if modelId in ids else (0 if ids else -1)
        wasBlocked = self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.setCurrentIndex(index)
        self.ui.modelSelector.blockSignals(wasBlocked)
        self.onModelSelected(index)

    def onModelSelected(self, index: int) -> None:
        card = self._cards[index] if 0 <= index < len(self._cards) else None
        if self._parameterNode and card is not None and self._parameterNode.modelId != card.get("id"):
            self._parameterNode.modelId = str(card.get("id", ""))
        self.ui.modelCardLabel.text = self._cardHtml(card) if card else ""
        self.ui.heatmapClassSelector.clear()
        self.ui.heatmapClassSelector.addItem(_("predicted class"), "")
        for name in (card or {}).get("class_names") or []:
            self.ui.heatmapClassSelector.addItem(str(name), str(name))
        isSICF = (card or {}).get("task") == "sicf-2d"  # SICF models have no Grad-CAM
        self.ui.heatmapCheckBox.enabled = self.ui.heatmapClassSelector.enabled = not isSICF
        self._updateButtons()

    @staticmethod
    def _cardHtml(card: dict) -> str:
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

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self._job is not None
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.classifyButton.enabled = hasInput and bool(self._cards) and not running
        self.ui.classifyButton.toolTip = (_("Classify the input image.") if hasInput
                                          else _("Select an input image."))
        self.ui.cancelButton.enabled = running

    def _installTorch(self):
        """Install PyTorch with the PyTorch extension's helper; None when that extension is absent
        (the library then falls back to pip). Raises if the user declines the installation."""
        try:
            import PyTorchUtils
        except ImportError:
            return None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True)
        if torch is None:
            raise RuntimeError(_("PyTorch is required; its installation was cancelled."))
        return torch

    def _tryRun(self, message: str, function, *args, waitCursor: bool = True, **kwargs):
        """Call function; any error is shown in a dialog (tryWithErrorDisplay) and in the status
        line. Returns (ok, result)."""
        error = _("see the error message")
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=waitCursor):
                return True, function(*args, **kwargs)
        except Exception as exc:  # already displayed by tryWithErrorDisplay
            error = exc
        logging.error("%s %s", message, error)
        self.ui.statusLabel.text = f"{message} {error}"
        return False, None

    def onClassifyButton(self) -> None:
        """Run the classification when the user clicks "Classify"."""
        inputVolume = self._parameterNode.inputVolume
        if not inputVolume:
            self.ui.statusLabel.text = _("Select an input image.")
            return
        ok, ready = self._tryRun(
            _("Could not install the required Python packages."), self.logic.ensureDependencies,
            confirm=lambda msg: slicer.util.confirmOkCancelDisplay(msg),
            installTorch=self._installTorch, pipInstall=slicer.util.pip_install, waitCursor=False)
        if not ok or not ready:
            if ok:
                self.ui.statusLabel.text = _("Required Python packages are missing: classification not started.")
            return

        index = self.ui.modelSelector.currentIndex
        modelRef = self.ui.modelSelector.itemData(index) if index >= 0 else None
        options = dict(modelRef=modelRef or None, device=self._parameterNode.device,
                       computeHeatmap=self._parameterNode.computeHeatmap and self.ui.heatmapCheckBox.enabled,
                       heatmapClass=self.ui.heatmapClassSelector.currentData or None)
        self._clearResults()

        ok, singleSlice = self._tryRun(_("Classification failed."), self.logic.isSingleSlice, inputVolume)
        if not ok:
            return
        if singleSlice:
            self.ui.statusLabel.text = _("Classifying...")
            slicer.app.processEvents()
            ok, output = self._tryRun(_("Classification failed."), self.logic.classify, inputVolume, **options)
            if ok:
                self._showOutput(output, inputVolume)
            return

        ok, job = self._tryRun(_("Classification failed."), self.logic.startBackgroundClassification,
                               inputVolume, **options)
        if not ok:
            return
        self._job, self._jobInput = job, inputVolume
        self.ui.statusLabel.text = _("Classification started...")
        self._updateButtons()
        self._timer.start()

    def _pollJob(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        ok, finished = self._tryRun(_("Classification failed."), job.poll, waitCursor=False)
        if not ok:
            self._endJob()
            return
        if not finished:
            self.ui.statusLabel.text = job.progressText or ""
            return
        inputVolume = self._jobInput
        self._endJob()
        ok, output = self._tryRun(_("Classification failed."), self.logic.finishBackgroundClassification, job)
        if ok:
            self._showOutput(output, inputVolume)

    def onCancelButton(self) -> None:
        job = self._job
        self._endJob()
        if job is not None:
            self._tryRun(_("Could not cancel the classification."), job.cancel)
            self.ui.statusLabel.text = _("Classification cancelled.")

    def _endJob(self) -> None:
        self._timer.stop()
        self._job, self._jobInput = None, None
        self._updateButtons()

    # -- training set and retraining (logic: BrainSpineAILib.training_set, BrainSpineAITrain) --

    def _setupTrainingSet(self) -> None:
        self.ui.addToTrainingSetButton.connect("clicked(bool)", self.onAddToTrainingSet)
        self.ui.retrainButton.connect("clicked(bool)", self.onRetrain)
        self.ui.trainingSetPathLineEdit.connect("currentPathChanged(QString)", self._refreshTrainingClasses)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self._refreshTrainingClasses)
        self._refreshTrainingClasses()

    def _refreshTrainingClasses(self, *args) -> None:
        from BrainSpineAILib.training_set import datasetClasses

        index = self.ui.modelSelector.currentIndex
        card = self._cards[index] if 0 <= index < len(self._cards) else {}
        names = list(card.get("class_names", []))
        names += [c for c in datasetClasses(self.ui.trainingSetPathLineEdit.currentPath) if c not in names]
        current = self.ui.trainingClassSelector.currentText
        self.ui.trainingClassSelector.clear()
        for name in names:
            self.ui.trainingClassSelector.addItem(name)
        if current:
            self.ui.trainingClassSelector.setCurrentText(current)
        self.ui.addToTrainingSetButton.text = _("Add to training set as {name}").format(
            name=self.ui.trainingClassSelector.currentText or "...")

    def onAddToTrainingSet(self) -> None:
        from BrainSpineAILib.training_set import addToTrainingSet, sliceIndexAt

        volume = self._parameterNode.inputVolume if self._parameterNode else None
        folder = self.ui.trainingSetPathLineEdit.currentPath
        className = self.ui.trainingClassSelector.currentText.strip()
        if not volume or not folder or not className:
            self.ui.statusLabel.text = _("Select an input image, a dataset folder and a class.")
            return
        sliceIndex = None
        if self.ui.trainingSliceCheckBox.checked:
            sliceIndex = sliceIndexAt(volume, slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode())
        ok, path = self._tryRun(_("Could not add the image to the training set."), addToTrainingSet,
                                volume, folder, className, sliceIndex=sliceIndex)
        if ok:
            self.ui.statusLabel.text = _("Added to the training set: {path}").format(path=path)
            self._refreshTrainingClasses()

    def onRetrain(self) -> None:
        folder = self.ui.trainingSetPathLineEdit.currentPath
        index = self.ui.modelSelector.currentIndex
        modelRef = self.ui.modelSelector.itemData(index) if index >= 0 else None
        if not folder or not modelRef:
            self.ui.statusLabel.text = _("Select a model and a dataset folder to retrain on.")
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
        table.setRowCount(len(classes))
        for row, (name, prob) in enumerate(zip(classes, probabilities)):
            table.setItem(row, 0, qt.QTableWidgetItem(str(name)))
            item = qt.QTableWidgetItem(f"{prob:.1%}")
            item.setTextAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
            table.setItem(row, 1, item)
        table.resizeColumnToContents(0)

        status = _("Model: {model}.").format(model=result.get("model", ""))
        if result.get("slices"):
            status += " " + _("{n} slices classified.").format(n=len(result["slices"]))
        if result.get("sicf") and inputVolume is not None and slicer.mrmlScene.IsNodePresent(inputVolume):
            from BrainSpineAILib import sicf_logic

            self._tryRun(_("Could not show the SICF ROI and keypoints."), sicf_logic.showSICFResult,
                         slicer.mrmlScene, inputVolume, result["sicf"])
            status += " " + _("SICF: {kept} of {n} features kept by the optimiser; ROI and {k} SIFT keypoints shown.").format(
                kept=result["sicf"]["n_features_kept"], n=result["sicf"]["n_features"], k=len(result["sicf"]["keypoints"]))
        self.ui.statusLabel.text = status

        if output.heatmapNode is not None:
            if self._parameterNode:
                self._parameterNode.heatmapVolume = output.heatmapNode
            if inputVolume is not None and slicer.mrmlScene.IsNodePresent(inputVolume):
                self._tryRun(_("Could not show the heatmap."), self.logic.showHeatmap,
                             output.heatmapNode, inputVolume, self.ui.opacitySlider.value)
        if output.plotChartNode is not None:
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
