"""BrainSpineAI Train: train, watch, stop, resume and retrain models inside 3D Slicer.

The work is done by ``BrainSpineAITrainLib.training_logic`` (no Qt) and, in a separate
process, by the ``brainspineai`` library's ``train`` commands; this file is the Slicer shell
(module, parameter node, widget polling the run with a QTimer, logic, test). Heavy packages
(torch, monai, SimpleITK) are never imported here.
"""

import logging
import os
import sys
from typing import Annotated, Optional

import qt

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


def _useLibrary() -> None:
    """BrainSpineAILib and brainspineai live in the BrainSpineAI module's folder: the same
    folder once the extension is installed, a sibling folder in a source tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    sibling = os.path.join(os.path.dirname(here), "BrainSpineAI")
    if os.path.isdir(os.path.join(sibling, "BrainSpineAILib")) and sibling not in sys.path:
        sys.path.append(sibling)


_useLibrary()

from BrainSpineAITrainLib.training_logic import PIPELINES, TrainingLogic  # noqa: E402


#
# BrainSpineAITrain
#


class BrainSpineAITrain(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BrainSpineAI Train")
        self.parent.categories = ["BrainSpineAI"]
        self.parent.dependencies = []
        self.parent.contributors = ["BrainSpineAI team"]
        self.parent.helpText = _("""
Train and retrain BrainSpineAI models without leaving 3D Slicer: supervised classifier,
AFF-CL, SimCLR pre-training, fine-tuning, SICF and the 3D tumour segmenter. Choose a dataset
folder (one folder of slices per class, or BraTS cases / dataset.json for the segmenter),
check its summary, set the hyper-parameters (preset to the papers' defaults), and Start.
Training runs as a separate process on the GPU when there is one (several GPUs: DDP); the
finished model appears at once in the model lists of the BrainSpineAI modules.
Same as <code>brainspineai train PIPELINE --data DIR --out DIR</code>.<br>
<b>Research software: not for clinical use.</b><br>
See the <a href="https://github.com/brainspineai/SlicerBrainSpineAI">project page</a>.
""")
        self.parent.acknowledgementText = _("""
Developed by the BrainSpineAI team. Built on 3D Slicer, PyTorch, Lightning Fabric and MONAI.
""")


#
# BrainSpineAITrainParameterNode
#


@parameterNodeWrapper
class BrainSpineAITrainParameterNode:
    """
    modelName - id of the model to write.
    initModel - model to start from (retraining; empty: random initialisation).
    device - "auto", "cpu" or "cuda".
    gpus - processes under torchrun (pipelines with DDP).
    """

    modelName: str = ""
    initModel: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    gpus: Annotated[int, WithinRange(1, 64)] = 1


#
# BrainSpineAITrainWidget
#


class BrainSpineAITrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None  # the running TrainingRun
        self._summaryJob = None
        self._summaryJson = None
        self._paramWidgets = {}
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainSpineAITrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = BrainSpineAITrainLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(500)
        self._timer.connect("timeout()", self._poll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for key, pipe in PIPELINES.items():
            self.ui.pipelineSelector.addItem(pipe.title, key)
        self._formLayout = qt.QFormLayout(self.ui.hyperParametersWidget)
        self.ui.pipelineSelector.connect("currentIndexChanged(int)", self.onPipelineChanged)
        self.ui.summaryButton.connect("clicked(bool)", self.onSummaryButton)
        self.ui.resetDefaultsButton.connect("clicked(bool)", self.onPipelineChanged)
        self.ui.detectDevicesButton.connect("clicked(bool)", self.onDetectDevices)
        self.ui.startButton.connect("clicked(bool)", self.onStartButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.resumeButton.connect("clicked(bool)", self.onResumeButton)
        self.onPipelineChanged()
        self.refreshRuns()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        # a running training keeps running only while Slicer does: stop it (it can be resumed)
        if self._run is not None:
            self._run.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[BrainSpineAITrainParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
        self._updateButtons()

    # -- helpers -------------------------------------------------------------------

    def _tryRun(self, message: str, function, *args, waitCursor: bool = True, **kwargs):
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=waitCursor):
                return True, function(*args, **kwargs)
        except Exception as exc:  # already displayed
            logging.error("%s %s", message, exc)
            self.ui.statusLabel.text = f"{message} {exc}"
            return False, None

    def _pipelineKey(self) -> str:
        return self.ui.pipelineSelector.currentData or "classifier"

    def _updateButtons(self) -> None:
        running = self._run is not None
        self.ui.startButton.enabled = not running
        self.ui.cancelButton.enabled = running
        self.ui.resumeButton.enabled = not running and self.ui.runSelector.count > 0

    # -- pipeline and hyper-parameters -----------------------------------------------

    def onPipelineChanged(self, *args) -> None:
        """Rebuild the hyper-parameter form with the pipeline's defaults."""
        while self._formLayout.count():
            item = self._formLayout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self._paramWidgets = {}
        pipe = PIPELINES[self._pipelineKey()]
        for p in pipe.params:
            if p.kind == "bool":
                w = qt.QCheckBox()
                w.checked = bool(p.default)
            elif p.kind == "int":
                w = qt.QSpinBox()
                w.setRange(0, 1000000)
                w.value = int(p.default)
            elif p.kind == "float":
                w = qt.QDoubleSpinBox()
                w.setDecimals(6)
                w.setRange(0.0, 1e6)
                w.setSingleStep(0.1 if p.default >= 0.1 else p.default / 10 or 0.01)
                w.value = float(p.default)
            elif p.kind == "choice":
                w = qt.QComboBox()
                for c in p.choices:
                    w.addItem(c)
                w.currentText = str(p.default)
            else:
                w = qt.QLineEdit(str(p.default))
            w.toolTip = p.help or p.flag
            self._formLayout.addRow(p.name.replace("_", " ") + ":", w)
            self._paramWidgets[p.name] = (p, w)
        self.ui.hyperParametersCollapsibleButton.toolTip = pipe.paper
        self.ui.initModelLineEdit.enabled = pipe.initModel

    def _params(self) -> dict:
        out = {}
        for name, (p, w) in self._paramWidgets.items():
            if p.kind == "bool":
                out[name] = bool(w.checked)
            elif p.kind == "int":
                out[name] = int(w.value)
            elif p.kind == "float":
                out[name] = float(w.value)
            elif p.kind == "choice":
                out[name] = w.currentText
            else:
                out[name] = w.text.strip()
        return out

    # -- dataset summary -------------------------------------------------------------

    def onSummaryButton(self) -> None:
        path = self.ui.datasetPathLineEdit.currentPath
        if not path:
            self.ui.summaryText.setPlainText(_("Choose a dataset folder."))
            return
        import tempfile

        fd, self._summaryJson = tempfile.mkstemp(suffix=".json", prefix="brainspineai-summary-")
        os.close(fd)
        ok, job = self._tryRun(_("Could not summarise the dataset."), self.logic.startSummary, path,
                               self._summaryJson, waitCursor=False)
        if ok:
            self._summaryJob = job
            self.ui.summaryText.setPlainText(_("Reading the dataset..."))
            self._timer.start()

    def _pollSummary(self) -> None:
        job = self._summaryJob
        if job is None or not job.poll():
            return
        self._summaryJob = None
        if job.succeeded:
            self.ui.summaryText.setPlainText("\n".join(job.logLines))
        else:
            self.ui.summaryText.setPlainText(job.errorText or _("The summary failed."))
        try:
            os.remove(self._summaryJson)
        except OSError:
            pass

    # -- devices ---------------------------------------------------------------------

    def onDetectDevices(self) -> None:
        # nvidia-smi only: instant, so the GUI does not wait for torch to load in a subprocess
        ok, info = self._tryRun(_("Could not detect the GPUs."), self.logic.detectDevices, useTorch=False)
        if not ok:
            return
        if info["cuda"]:
            self.ui.deviceInfoLabel.text = _("{n} GPU(s): {names}").format(n=info["cuda"], names=", ".join(info["names"]))
            if self._parameterNode:
                self._parameterNode.gpus = info["cuda"]
        else:
            self.ui.deviceInfoLabel.text = _("No GPU found: training runs on the CPU (slow).")

    # -- runs ------------------------------------------------------------------------

    def refreshRuns(self) -> None:
        self.ui.runSelector.clear()
        ok, runs = self._tryRun(_("Could not list the runs."), self.logic.listRuns)
        for r in runs or []:
            if r.get("state") != "succeeded":
                self.ui.runSelector.addItem(f"{r['name']} ({r.get('state')}, {r.get('pipeline')})", r["name"])
        self._updateButtons()

    def _ensureDependencies(self) -> bool:
        ok, ready = self._tryRun(
            _("Could not install the required Python packages."), self.logic.ensureDependencies,
            confirm=lambda msg: slicer.util.confirmOkCancelDisplay(msg), pipInstall=slicer.util.pip_install,
            waitCursor=False)
        return bool(ok and ready)

    def onStartButton(self) -> None:
        if not self._ensureDependencies():
            return
        p = self._parameterNode
        dataDir = self.ui.datasetPathLineEdit.currentPath
        if not dataDir:
            self.ui.statusLabel.text = _("Choose a dataset folder.")
            return
        pipe = PIPELINES[self._pipelineKey()]
        ok, run = self._tryRun(_("Could not start the training."), self.logic.startRun, pipe.key, dataDir,
                               p.modelName.strip(), params=self._params(), device=p.device, gpus=p.gpus,
                               initModel=p.initModel.strip() if pipe.initModel else "")
        if ok:
            self._begin(run)

    def onResumeButton(self) -> None:
        name = self.ui.runSelector.currentData
        if not name or not self._ensureDependencies():
            return
        ok, run = self._tryRun(_("Could not resume the run."), self.logic.resumeRun, name)
        if ok:
            self._begin(run)

    def startRetrain(self, modelRef: str, datasetDir: str, epochs: Optional[int] = None) -> None:
        """Retrain (called by the other modules): show and start the run here."""
        ok, run = self._tryRun(_("Could not start the retraining."), self.logic.retrain, modelRef, datasetDir, epochs)
        if ok:
            self._begin(run)

    def _begin(self, run) -> None:
        self._run = run
        self.ui.progressBar.value = 0
        self.ui.logText.setPlainText(" ".join(run.request["arguments"]))
        self.ui.statusLabel.text = _("Training {id} started ({folder}).").format(id=run.modelId, folder=run.runDir)
        self._table, self._chart = self.logic.curveNodes(run.modelId)
        self.ui.plotWidget.setMRMLPlotViewNode(self.logic.plotViewNode(self._chart))
        self._updateButtons()
        self._timer.start()

    def _poll(self) -> None:
        self._pollSummary()
        run = self._run
        if run is None:
            if self._summaryJob is None:
                self._timer.stop()
            return
        ok, ended = self._tryRun(_("Training failed."), run.poll, waitCursor=False)
        if run.lastEvents:
            if any(e.get("event") == "epoch" for e in run.lastEvents):
                self.logic.updateCurves(run.history, self._table, self._chart, slicer.mrmlScene)
            self.ui.logText.appendPlainText("\n".join(self._eventLine(e) for e in run.lastEvents))
        self.ui.progressBar.value = int(100 * (run.fraction or 0))
        eta = run.etaSeconds
        self.ui.statusLabel.text = run.progressText + (f", {int(eta) // 60} min {int(eta) % 60} s left"
                                                       if isinstance(eta, (int, float)) else "")
        if not ok or not ended:
            return
        self._run = None
        if run.state == "succeeded":
            ok, result = self._tryRun(_("Could not read the model card."), run.resultText, waitCursor=False)
            self.ui.statusLabel.text = _("Model {result} is in the catalogue: {folder}").format(
                result=result if ok else run.modelId, folder=run.modelFolder)
        elif run.state == "failed":
            self.ui.statusLabel.text = _("Training failed: {error}").format(error=run.errorText)
            self.ui.logText.appendPlainText(run.logText())
        self.refreshRuns()

    @staticmethod
    def _eventLine(e: dict) -> str:
        kind = e.get("event")
        if kind == "epoch":
            metrics = ", ".join(f"{k} {v:.4g}" for k, v in (e.get("metrics") or {}).items() if isinstance(v, (int, float)))
            return f"epoch {e.get('epoch')}/{e.get('epochs')}: loss {e.get('loss', float('nan')):.4g}" + (
                f", {metrics}" if metrics else "")
        if kind == "step":
            return f"  step {e.get('step')}/{e.get('steps')}: loss {e.get('loss', float('nan')):.4g}"
        return str(e)

    def onCancelButton(self) -> None:
        run = self._run
        self._run = None
        if run is not None:
            self._tryRun(_("Could not cancel the training."), run.cancel)
            self.ui.statusLabel.text = _("Training cancelled; the catalogue is unchanged. Resume continues it.")
        self.refreshRuns()


#
# BrainSpineAITrainLogic
#


class BrainSpineAITrainLogic(ScriptedLoadableModuleLogic, TrainingLogic):
    """Slicer logic: :class:`BrainSpineAITrainLib.training_logic.TrainingLogic` plus the
    parameter node and the scene's curve nodes.

    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return BrainSpineAITrainParameterNode(super().getParameterNode())

    @staticmethod
    def curveNodes(modelId: str, scene=None):
        """A table node and a plot chart node for a run's curves (new ones, named after it)."""
        scene = scene or slicer.mrmlScene
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{modelId} training curves")
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{modelId} training chart")
        return table, chart

    @staticmethod
    def plotViewNode(chart, scene=None):
        scene = scene or slicer.mrmlScene
        view = scene.GetFirstNodeByClass("vtkMRMLPlotViewNode") or scene.AddNewNodeByClass("vtkMRMLPlotViewNode")
        view.SetPlotChartNodeID(chart.GetID())
        return view


#
# BrainSpineAITrainTest
#


class BrainSpineAITrainTest(ScriptedLoadableModuleTest):
    """Self-test for "Reload and Test" in a user's Slicer: a tiny two-class training set is cut
    from Slicer's sample data (SampleData ``MRBrainTumor1`` slices as "tumour", ``MRHead`` slices
    as "normal"), trained for two epochs by the background ``brainspineai train classifier``
    process, and the result is checked: run state, curves in the scene, the model registered in
    the catalogue with our classes. Missing sample data or packages fail the test.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    TIMEOUT_S = 1800
    SLICES_PER_CLASS = 12

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LogicInstantiation()
        self.setUp()
        self.test_TrainOnSampleData()

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

    def _writeSlices(self, volume, folder, count):
        """``count`` central slices (along the array's first axis) as 8-bit PNG files."""
        import numpy as np
        import SimpleITK as sitk  # ships with Slicer

        arr = slicer.util.arrayFromVolume(volume).astype("float32")
        k = arr.shape[0]
        indices = np.linspace(int(k * 0.35), int(k * 0.65), count).astype(int)
        folder.mkdir(parents=True, exist_ok=True)
        for n, index in enumerate(indices):
            plane = arr[index]
            lo, hi = np.percentile(plane, (1, 99))
            self.assertGreater(hi, lo, f"{volume.GetName()} slice {index} is blank")
            img = np.clip((plane - lo) / (hi - lo) * 255.0, 0, 255).astype("uint8")
            sitk.WriteImage(sitk.GetImageFromArray(img), str(folder / f"{volume.GetName()}_{n:02d}.png"))
        return len(indices)

    # -- tests
    def test_LogicInstantiation(self):
        logic = BrainSpineAITrainLogic()
        self.assertIsInstance(logic, ScriptedLoadableModuleLogic)
        self.assertEqual(set(PIPELINES), {"classifier", "affcl", "simclr", "finetune", "sicf", "segmenter"})
        self.delayDisplay("Test passed")

    def test_TrainOnSampleData(self):
        import json
        import shutil
        import tempfile
        import time
        from pathlib import Path

        import vtk

        logic = BrainSpineAITrainLogic()
        self._requirePackages(logic)
        tmp = Path(tempfile.mkdtemp(prefix="BrainSpineAITrain-selftest-"))
        old = os.environ.get("BRAINSPINEAI_HOME")
        os.environ["BRAINSPINEAI_HOME"] = str(tmp / "home")  # the user's catalogue is left alone
        try:
            for cls, sample in (("tumour", "MRBrainTumor1"), ("normal", "MRHead")):
                written = self._writeSlices(self._sample(sample), tmp / "ds" / cls, self.SLICES_PER_CLASS)
                self.assertEqual(written, self.SLICES_PER_CLASS)
            modelId = "slicer-selftest"
            self.delayDisplay("Training a tiny classifier in a background process")
            run = logic.startRun("classifier", tmp / "ds", modelId,
                                 {"epochs": 2, "image_size": 64, "batch_size": 8, "val_fraction": 0.25},
                                 device="auto")
            self.assertTrue((run.runDir / "run.json").is_file())
            table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{modelId} training curves")
            chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{modelId} training chart")
            start = time.time()
            while not run.poll():
                if time.time() - start > self.TIMEOUT_S:
                    run.cancel()
                    self.fail(f"training did not finish within {self.TIMEOUT_S} s")
                run.takeNewEvents()
                slicer.app.processEvents()
                time.sleep(0.2)
            self.assertEqual(run.state, "succeeded", run.errorText)

            # curves of both epochs in the scene
            logic.updateCurves(run.history, table, chart, slicer.mrmlScene)
            self.assertEqual(table.GetNumberOfRows(), 2)
            epochs = [table.GetTable().GetValueByName(r, "epoch").ToDouble() for r in range(2)]
            self.assertEqual(epochs, [1.0, 2.0])
            losses = [table.GetTable().GetValueByName(r, "loss").ToDouble() for r in range(2)]
            self.assertTrue(all(loss == loss and loss > 0 for loss in losses), f"losses {losses}")
            self.assertGreaterEqual(chart.GetNumberOfPlotSeriesNodes(), 1)

            # the model is in the (test) catalogue with our classes, and classifies a slice
            self.assertEqual(Path(run.modelFolder), tmp / "home" / "models" / modelId)
            card = json.loads((Path(run.modelFolder) / "model.json").read_text())
            self.assertEqual(sorted(card["class_names"]), ["normal", "tumour"])
            from BrainSpineAILib.classification_logic import ClassificationLogic

            self.assertIn(modelId, [c["id"] for c in ClassificationLogic.availableModels()])
            slicePath = sorted((tmp / "ds" / "tumour").iterdir())[0]
            sliceNode = slicer.util.loadVolume(str(slicePath), properties={"singleFile": True})
            classifier = ClassificationLogic(slicer.mrmlScene)
            job = classifier.startBackgroundClassification(sliceNode, modelRef=modelId, device="auto")
            start = time.time()
            while not job.poll():
                if time.time() - start > self.TIMEOUT_S:
                    job.cancel()
                    self.fail(f"classification with the new model did not finish within {self.TIMEOUT_S} s")
                slicer.app.processEvents()
                time.sleep(0.1)
            output = classifier.finishBackgroundClassification(job)
            self.assertEqual(sorted(output.result["classes"]), ["normal", "tumour"])
            self.assertAlmostEqual(sum(output.result["probabilities"]), 1.0, delta=1e-4)
            self.assertIsNotNone(output.heatmapNode)
            self.assertEqual(output.heatmapNode.GetImageData().GetDimensions(), sliceNode.GetImageData().GetDimensions())
            matrices = []
            for node in (sliceNode, output.heatmapNode):
                m = vtk.vtkMatrix4x4()
                node.GetIJKToRASMatrix(m)
                matrices.append([m.GetElement(i, j) for i in range(4) for j in range(4)])
            for a, b in zip(*matrices):
                self.assertAlmostEqual(a, b, places=5)
        finally:
            if old is None:
                os.environ.pop("BRAINSPINEAI_HOME", None)
            else:
                os.environ["BRAINSPINEAI_HOME"] = old
            shutil.rmtree(tmp, ignore_errors=True)
        self.delayDisplay("Test passed")
