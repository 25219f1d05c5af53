"""BrainSpineAI: tumour AI for brain and spine MRI, usable headless and from 3D Slicer.

The library has no Slicer or Qt import. Heavy packages (torch, monai, SimpleITK) are
imported by the submodules that need them, so ``import brainspineai`` stays cheap.

Core (imports no capability package)
------------------------------------
``errors``     error classes (all user-caused failures derive from BrainSpineAIError)
``io``         reading NIfTI / NRRD / MHA / DICOM series / JPEG / PNG; atomic writes
``device``     device choice and autocast
``catalogue``  model folders (weights + card), checksums, download cache, loader registry
``engine``     the one Lightning Fabric training loop (checkpoints, resume, events, DDP)
``metrics``    accuracy, per-class figures, AUC with bootstrap intervals, plots
``datasets``   dataset summaries before training
``cases``      BraTS / ``dataset.json`` volume case layouts
``retrain``    retraining a model into its next version

Capabilities
------------
``classification``  2D classifiers: data, networks, training, AFF-CL, SimCLR, inference, Grad-CAM
``sicf``            SICF (LO-RF) for spinal tumour slices
``segmentation``    CLIP-guided 3D U-Net for BraTS regions (ET / TC / WT)
``cli``             the ``brainspineai`` command
"""

__version__ = "0.1.0"
