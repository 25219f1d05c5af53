"""BrainSpineAI: tumour AI for brain and spine MRI, usable headless and from 3D Slicer.

The library has no Slicer or Qt import. Heavy packages (torch, monai, SimpleITK) are
imported by the submodules that need them, so ``import brainspineai`` stays cheap.

Submodules
----------
``errors``     error classes (all user-caused failures derive from BrainSpineAIError)
``io``         reading NIfTI / NRRD / MHA / DICOM series / JPEG / PNG into SimpleITK images
``preprocess`` slice extraction in radiological orientation, intensity normalisation
``networks``   classifier architectures
``catalogue``  model folders (weights + model card), checksums, download cache
``inference``  slice and volume classification, the volume-level rule
``explain``    Grad-CAM heatmaps with the input's exact geometry
``training``   supervised classifier training
``metrics``    accuracy, per-class precision / recall / F1, confusion matrix
``cli``        the ``brainspineai`` command
"""

__version__ = "0.1.0"
