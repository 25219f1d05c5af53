"""MRML-level logic of the BrainSpineAI Train module (no Qt): training pipelines, runs in
the background, registration in the catalogue, curves. Testable with ``slicer-core``."""
