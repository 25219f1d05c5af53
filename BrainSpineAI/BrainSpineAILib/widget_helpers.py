"""What the three BrainSpineAI module panels (Classify, Segment, Train) share, so that each
module's widget file holds its own panel only.

- :class:`ModuleWidgetMixin`: the parameter node plumbing of Slicer's scripted module
  template (``initializeParameterNode`` / ``setParameterNode`` with ``connectGui``, scene
  close observers, ``enter`` / ``exit`` / ``cleanup``), error display (:meth:`tryRun`), the
  one-confirmation dependency install, and a developer-mode Reload that also reloads the
  module's ``*Lib`` packages.
- :class:`ModelListMixin`: the model selector filled from the catalogue, re-selected by id.
- :class:`JobPoller`: a background job (``BackgroundJob`` or ``TrainingRun``) polled by a
  ``QTimer`` in the GUI thread, with progress, cancel and scene-close handling.

A widget is declared as ``class XWidget(ModuleWidgetMixin, ScriptedLoadableModuleWidget,
VTKObservationMixin)`` (the mixins first, so that their ``enter`` / ``exit`` / ``cleanup`` /
``onReload`` are the ones Slicer calls). The widget sets ``self.logic`` (with
``getParameterNode()``) and defines ``updateButtons(caller=None, event=None)``. Names the
mixins use in ``self.ui`` must exist in each module's ``.ui`` (Testing/Python/test_module_files.py).

Follows https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
and the module template of Slicer's Extension Wizard.
"""

import logging
import time

import qt
import vtk

import slicer

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer < 5.4: no translation support

    def _(text):
        return text

from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget

from .module_support import RELOAD_PACKAGES, purgePackages
from .training_set import chosenFolder


def currentFolder(pathLineEdit):
    """The folder of a ``ctkPathLineEdit`` as a string, or None when the field is empty
    (``currentPath == ""``; ``Path("")`` would be the working directory)."""
    folder = chosenFolder(pathLineEdit.currentPath)
    return str(folder) if folder is not None else None


class JobPoller:
    """Polls one background job with a ``QTimer`` in the GUI thread.

    The job has ``poll() -> bool`` (True once ended), ``fraction``, ``progressText``,
    ``etaSeconds``, ``errorText`` and ``cancel()`` (``BackgroundJob``, ``TrainingRun``).

    :param onProgress: ``callable(job)`` after each poll of a running job.
    :param onFinished: ``callable(job, context)`` once it ended (context: what :meth:`start`
        got, plus ``seconds``).
    :param onError: ``callable(job, exc)`` when ``poll`` raised; polling stops.
    """

    def __init__(self, intervalMs, onProgress, onFinished, onError=None):
        self.job = None
        self.context = {}
        self._started = 0.0
        self._onProgress, self._onFinished, self._onError = onProgress, onFinished, onError
        self._timer = qt.QTimer()
        self._timer.setInterval(int(intervalMs))
        self._timer.connect("timeout()", self._poll)

    @property
    def running(self) -> bool:
        return self.job is not None

    def start(self, job, **context) -> None:
        """Poll ``job`` until it ends.

        :raises RuntimeError: a job is already polled (one at a time: it is never dropped).
        """
        if self.job is not None:
            raise RuntimeError(_("A job is still running; cancel it or wait for it to end."))
        self.job, self.context, self._started = job, dict(context), time.perf_counter()
        self._timer.start()

    def _poll(self) -> None:
        job = self.job
        if job is None:
            self._timer.stop()
            return
        try:
            ended = job.poll()
        except Exception as exc:
            self.detach()
            logging.error("background job failed: %s", exc)
            if self._onError is not None:
                self._onError(job, exc)
            return
        if not ended:
            self._onProgress(job)
            return
        context = dict(self.context, seconds=time.perf_counter() - self._started)
        self.detach()
        self._onFinished(job, context)

    def detach(self):
        """Stop polling (the job keeps running); returns the job."""
        self._timer.stop()
        job, self.job, self.context = self.job, None, {}
        return job

    def cancel(self):
        """Stop polling and cancel the job (kill its process tree); returns it (or None)."""
        job = self.detach()
        if job is not None:
            job.cancel()
        return job


class ModuleWidgetMixin:
    """Parameter node, scene-close, error display, dependency install and Reload plumbing of
    a BrainSpineAI module widget (see the module docstring)."""

    def initModuleWidget(self) -> None:
        """Call from ``__init__`` (after ``ScriptedLoadableModuleWidget.__init__``)."""
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._pollers = []

    def setupModuleWidget(self, uiFile: str) -> None:
        """Load the panel from ``Resources/UI/<uiFile>``, set the scene in its MRML widgets and
        observe scene close. Call at the start of ``setup`` (after the base class's)."""
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{uiFile}"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)  # "mrmlSceneChanged(vtkMRMLScene*)" is connected in the .ui
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    def newPoller(self, intervalMs, onProgress, onFinished) -> JobPoller:
        """A :class:`JobPoller` that scene close, cleanup and Reload cancel."""
        poller = JobPoller(intervalMs, onProgress, onFinished, onError=self._onJobError)
        self._pollers.append(poller)
        return poller

    def _onJobError(self, job, exc) -> None:
        self.setStatus(_("The background process failed: {error}").format(error=exc))
        self.updateButtons()

    # -- template plumbing -------------------------------------------------------------

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.cancelJobs()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed: the running job goes with it."""
        if self.cancelJobs():
            self.setStatus(_("Cancelled: the scene was closed."))
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def cancelJobs(self) -> bool:
        """Cancel every polled job; True when one was running."""
        running = [p for p in self._pollers if p.running]
        for poller in running:
            try:
                poller.cancel()
            except Exception as exc:  # a process that will not die must not stop the scene from closing
                logging.error("could not cancel a background job: %s", exc)
        if running:
            self.updateButtons()
        return bool(running)

    def initializeParameterNode(self) -> None:
        """Ensure the parameter node exists and is observed (needed for module reload too)."""
        self.setParameterNode(self.logic.getParameterNode())
        self.onParameterNodeInitialized()

    def onParameterNodeInitialized(self) -> None:
        """Override to select default inputs once the parameter node is set."""

    def setParameterNode(self, inputParameterNode) -> None:
        """Set and observe the parameter node and connect it to the GUI (widgets with the
        ``SlicerParameterName`` property in the .ui)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.onParameterNodeSet()
        self.updateButtons()

    def onParameterNodeSet(self) -> None:
        """Override to sync widgets that are not connected through ``connectGui``."""

    def onReload(self) -> None:
        """Developer-mode Reload: cancel the running job, forget this module's ``*Lib``
        packages (and BrainSpineAILib) so that the script's imports read them again, then
        Slicer's own reload (``slicer.util.reloadScriptedModule``)."""
        self.cancelJobs()
        removed = purgePackages(RELOAD_PACKAGES.get(self.moduleName, ()))
        logging.debug("Reloading %s; re-importing %s", self.moduleName, ", ".join(removed))
        ScriptedLoadableModuleWidget.onReload(self)

    # -- messages and errors -----------------------------------------------------------

    def setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def tryRun(self, message: str, function, *args, waitCursor: bool = True, **kwargs):
        """Call ``function``; an error is shown in a dialog (``slicer.util.tryWithErrorDisplay``)
        and in the status line. Returns ``(ok, result)``."""
        error = _("see the error message")
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=waitCursor):
                return True, function(*args, **kwargs)
        except Exception as exc:  # already displayed by tryWithErrorDisplay
            error = exc
        logging.error("%s %s", message, error)
        self.setStatus(f"{message} {error}")
        return False, None

    def dependenciesReady(self) -> bool:
        """Install missing Python packages after ONE confirmation (PyTorch only through the
        PyTorch extension's ``installTorch``, see :mod:`dependencies`). True when everything imports."""
        ok, ready = self.tryRun(
            _("Could not install the required Python packages."), self.logic.ensureDependencies,
            confirm=lambda msg: slicer.util.confirmOkCancelDisplay(msg),
            pipInstall=slicer.util.pip_install, waitCursor=False)
        if ok and not ready:
            self.setStatus(_("Required Python packages are missing."))
        return bool(ok and ready)

    def showJobProgress(self, job) -> None:
        """Progress text (and time left) in the status line and ``progressBar`` when the panel has one."""
        text = job.progressText or ""
        eta = getattr(job, "etaSeconds", None)
        if isinstance(eta, (int, float)):
            text += " " + _("({minutes} min {seconds} s left)").format(minutes=int(eta) // 60, seconds=int(eta) % 60)
        self.setStatus(text)
        progressBar = getattr(self.ui, "progressBar", None)
        if progressBar is not None:
            progressBar.setValue(int(round(100 * float(job.fraction or 0.0))))


class ModelListMixin:
    """A model selector (``ui.modelSelector``, ``ui.modelCardLabel``, ``ui.refreshModelsButton``)
    filled with ``self.logic.availableModels()`` (cards with ``id`` and ``path``) and kept in
    the parameter node's ``modelId``. The widget defines ``cardHtml(card)`` and may override
    ``onCardSelected(card)``."""

    noModelsText = ""
    _cards = ()  # model cards in selector order (set by setupModelList / refreshModels)

    def setupModelList(self) -> None:
        self._cards = []
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModels)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelSelected)

    def refreshModels(self) -> None:
        """Fill the selector from the catalogue (models trained meanwhile appear) and select
        the parameter node's model again (else the first)."""
        previousId = self._parameterNode.modelId if self._parameterNode else ""
        ok, cards = self.tryRun(_("Could not list the models."), self.logic.availableModels)
        self._cards = list(cards) if ok and cards else []
        wasBlocked = self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for card in self._cards:
            self.ui.modelSelector.addItem(str(card.get("id", "?")), card.get("path", ""))
        self.ui.modelSelector.blockSignals(wasBlocked)
        if ok and not self._cards:
            self.setStatus(self.noModelsText)
        self.selectModel(previousId)

    def selectModel(self, modelId: str) -> None:
        """Select the model with this id (the first model if not found) and show its card."""
        ids = [str(card.get("id", "")) for card in self._cards]
        index = ids.index(modelId) if modelId in ids else (0 if ids else -1)
        wasBlocked = self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.setCurrentIndex(index)
        self.ui.modelSelector.blockSignals(wasBlocked)
        self.onModelSelected(index)

    def currentCard(self):
        index = self.ui.modelSelector.currentIndex
        return self._cards[index] if 0 <= index < len(self._cards) else None

    def currentModelPath(self):
        card = self.currentCard()
        return str(card.get("path") or "") or None if card else None

    def onModelSelected(self, index: int) -> None:
        card = self._cards[index] if 0 <= index < len(self._cards) else None
        if self._parameterNode and card is not None and self._parameterNode.modelId != card.get("id"):
            self._parameterNode.modelId = str(card.get("id", ""))
        self.ui.modelCardLabel.text = self.cardHtml(card) if card else ""
        self.onCardSelected(card)
        self.updateButtons()

    def onCardSelected(self, card) -> None:
        """Override to adapt the panel to the selected model (None: no model)."""
