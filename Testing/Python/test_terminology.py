"""Segment terminology (issue 14 item 6): our ``.term.json`` is a Slicer terminology context that
Slicer's own loader (``vtkSlicerTerminologiesModuleLogic.LoadTerminologyFromFile``, slicer-core)
reads, and every segment's terminology string names an entry of it: context, category and type,
with the colour our segments get."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel is needed (pip install slicer-core)")
if str(ROOT / "BrainSpineAISegment") not in sys.path:
    sys.path.insert(0, str(ROOT / "BrainSpineAISegment"))

from BrainSpineAISegmentLib import segment_logic  # noqa: E402
from BrainSpineAISegmentLib.segment_logic import REGIONS, TERMINOLOGY_CONTEXT, TERMINOLOGY_FILE  # noqa: E402


@pytest.fixture
def tlogic():
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert segment_logic.loadTerminology(logic) == TERMINOLOGY_CONTEXT
    return logic


def _types(logic, category):
    out = []
    for i in range(logic.GetNumberOfTypesInTerminologyCategory(TERMINOLOGY_CONTEXT, category)):
        t = slicer.vtkSlicerTerminologyType()
        assert logic.GetNthTypeInTerminologyCategory(TERMINOLOGY_CONTEXT, category, i, t)
        out.append(t)
    return out


def test_file_is_a_slicer_terminology_context():
    doc = json.loads(TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    assert doc["SegmentationCategoryTypeContextName"] == TERMINOLOGY_CONTEXT
    assert doc["@schema"] == "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#"
    # the Segment module installs it (CMake resources), next to the Lib folder as loadTerminology expects
    cmake = (TERMINOLOGY_FILE.parents[1] / "CMakeLists.txt").read_text()
    assert f"Resources/{TERMINOLOGY_FILE.name}" in cmake


def test_every_segment_refers_to_an_entry_of_the_file(tlogic):
    for region in REGIONS:
        entry = slicer.vtkSlicerTerminologyEntry()
        assert tlogic.DeserializeTerminologyEntry(region.terminology, entry), region.terminology
        assert entry.GetTerminologyContextName() == TERMINOLOGY_CONTEXT
        categories = []
        for i in range(tlogic.GetNumberOfCategoriesInTerminology(TERMINOLOGY_CONTEXT)):
            c = slicer.vtkSlicerTerminologyCategory()
            assert tlogic.GetNthCategoryInTerminology(TERMINOLOGY_CONTEXT, i, c)
            categories.append(c)
        wanted = entry.GetCategoryObject()
        category = [c for c in categories if (c.GetCodingSchemeDesignator(), c.GetCodeValue())
                    == (wanted.GetCodingSchemeDesignator(), wanted.GetCodeValue())]
        assert len(category) == 1, f"{region.key}: category {wanted.GetCodeValue()} not in {TERMINOLOGY_FILE.name}"
        assert category[0].GetShowAnatomy()  # the Brain region of the string is shown
        t = entry.GetTypeObject()
        found = [x for x in _types(tlogic, category[0])
                 if (x.GetCodingSchemeDesignator(), x.GetCodeValue()) == (t.GetCodingSchemeDesignator(), t.GetCodeValue())]
        assert len(found) == 1, f"{region.key}: type {t.GetCodingSchemeDesignator()}^{t.GetCodeValue()} not in the file"
        assert found[0].GetCodeMeaning() == t.GetCodeMeaning()
        rgb = found[0].GetRecommendedDisplayRGBValue()
        assert [round(c * 255) for c in region.color] == pytest.approx(list(rgb), abs=1)
        assert entry.GetRegionObject().GetCodeValue() == "12738006"  # Brain, in Slicer's DICOM anatomic list


def test_types_are_exactly_our_three_regions(tlogic):
    c = slicer.vtkSlicerTerminologyCategory()
    assert tlogic.GetNthCategoryInTerminology(TERMINOLOGY_CONTEXT, 0, c)
    codes = {(t.GetCodingSchemeDesignator(), t.GetCodeValue()) for t in _types(tlogic, c)}
    assert codes == {("SCT", "52988006"), ("SCT", "108369006"), ("NCIt", "C113842")}


def test_loading_twice_keeps_one_context(tlogic):
    import vtk

    assert segment_logic.loadTerminology(tlogic) == TERMINOLOGY_CONTEXT
    names = vtk.vtkStringArray()
    tlogic.GetLoadedTerminologyNames(names)
    assert [names.GetValue(i) for i in range(names.GetNumberOfValues())].count(TERMINOLOGY_CONTEXT) == 1


def test_without_slicer_modules_nothing_is_loaded():
    """slicer-core has no slicer.modules: the segmentation still gets its terminology tags."""
    assert not hasattr(slicer, "modules") or not hasattr(slicer.modules, "terminologies")
    assert segment_logic.loadTerminology() == TERMINOLOGY_CONTEXT
