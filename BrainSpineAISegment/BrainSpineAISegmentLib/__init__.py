"""Logic of the BrainSpineAI Segment module, independent of Qt: sequence guessing from node
names (:mod:`.sequences`, pure Python) and the MRML-level segmentation logic
(:mod:`.segment_logic`, VTK + Slicer MRML classes; runs in 3D Slicer and, for tests, with the
``slicer-core`` wheel)."""
