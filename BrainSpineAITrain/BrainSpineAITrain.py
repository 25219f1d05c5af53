"""BrainSpineAI Train: training, retraining and correct-and-retrain inside Slicer (coming).

Placeholder module of the BrainSpineAI extension: the widget tells what is coming.
Heavy packages (torch, monai, SimpleITK) are never imported here.
"""

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer < 5.4: no translation support

    def _(text):
        return text


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
Coming soon: training, retraining and correct-and-retrain of BrainSpineAI models inside
Slicer. Meanwhile, classifiers can be trained from the command line:
<code>brainspineai train classifier --data DIR --out DIR</code><br>
<b>Research software: not for clinical use.</b><br>
See the <a href="https://github.com/brainspineai/SlicerBrainSpineAI">project page</a>.
""")
        self.parent.acknowledgementText = _("""
Developed by the BrainSpineAI team. Built on 3D Slicer, PyTorch and MONAI.
""")


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

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainSpineAITrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = BrainSpineAITrainLogic()

    def cleanup(self) -> None:
        self.removeObservers()


#
# BrainSpineAITrainLogic
#


class BrainSpineAITrainLogic(ScriptedLoadableModuleLogic):
    """Training logic (placeholder: in-Slicer training is coming).

    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)


#
# BrainSpineAITrainTest
#


class BrainSpineAITrainTest(ScriptedLoadableModuleTest):
    """Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Reset the state: clear the scene."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_LogicInstantiation()

    def test_LogicInstantiation(self):
        """The module's logic can be instantiated."""
        logic = BrainSpineAITrainLogic()
        self.assertIsInstance(logic, ScriptedLoadableModuleLogic)
        self.delayDisplay("Test passed")
