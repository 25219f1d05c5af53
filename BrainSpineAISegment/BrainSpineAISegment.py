"""BrainSpineAI Segment: CLIP-guided segmentation of BraTS multi-sequence brain MRI (coming).

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
        self.parent.dependencies = []
        self.parent.contributors = ["BrainSpineAI team"]
        self.parent.helpText = _("""
Coming soon: CLIP-guided 3D U-Net segmentation of BraTS multi-sequence brain MRI
(T1, T1 contrast-enhanced, T2, FLAIR) into whole tumour (WT), tumour core (TC) and
enhancing tumour (ET).<br>
<b>Research software: not for clinical use.</b><br>
See the <a href="https://github.com/brainspineai/SlicerBrainSpineAI">project page</a>.
""")
        self.parent.acknowledgementText = _("""
Developed by the BrainSpineAI team. Built on 3D Slicer, PyTorch and MONAI.
""")


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

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainSpineAISegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = BrainSpineAISegmentLogic()

    def cleanup(self) -> None:
        self.removeObservers()


#
# BrainSpineAISegmentLogic
#


class BrainSpineAISegmentLogic(ScriptedLoadableModuleLogic):
    """Segmentation logic (placeholder: the segmentation pipeline is coming).

    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)


#
# BrainSpineAISegmentTest
#


class BrainSpineAISegmentTest(ScriptedLoadableModuleTest):
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
        logic = BrainSpineAISegmentLogic()
        self.assertIsInstance(logic, ScriptedLoadableModuleLogic)
        self.delayDisplay("Test passed")
