"""MRML-level logic of the BrainSpineAI modules: converts scene nodes to arrays and back
and calls the :mod:`brainspineai` library. It imports VTK and Slicer's MRML classes only (no
Qt), so it runs inside 3D Slicer and, for tests, in plain Python with the ``slicer-core`` wheel.
"""
