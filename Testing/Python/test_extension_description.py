"""The extension's description for the Extensions Index: CMakeLists.txt's EXTENSION_* variables,
the .s4ext description (Slicer's extension_description.s4ext.in format) and the catalog entry
(Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json, the format of the
Extensions Index for Slicer 5.8 and 5.10) say the same, and name the supported Slicer versions."""
from __future__ import annotations

import json
import re

from conftest import ROOT

CATALOG_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                "build_subdirectory", "enabled", "tier"}  # the schema's properties (additionalProperties false)
CATALOG_SCHEMA = ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                  "slicer-extension-catalog-entry-schema-v1.0.1.json#")


def cmake_vars() -> dict:
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    return {m.group(1): m.group(2) for m in re.finditer(r'^set\((EXTENSION_\w+) "([^"]*)"\)', text, re.M)}


def s4ext() -> dict:
    out = {}
    for line in (ROOT / "BrainSpineAI.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


def test_description_names_the_supported_slicer_versions():
    for text in (cmake_vars()["EXTENSION_DESCRIPTION"], s4ext()["description"]):
        assert "3D Slicer 5.8 and 5.10" in text
    assert "3D Slicer 5.8" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_s4ext_matches_cmake():
    cm, s4 = cmake_vars(), s4ext()
    pairs = {"homepage": "EXTENSION_HOMEPAGE", "category": "EXTENSION_CATEGORY", "description": "EXTENSION_DESCRIPTION",
             "iconurl": "EXTENSION_ICONURL", "screenshoturls": "EXTENSION_SCREENSHOTURLS",
             "contributors": "EXTENSION_CONTRIBUTORS", "depends": "EXTENSION_DEPENDS"}
    for key, var in pairs.items():
        assert s4[key] == cm[var], key
    assert s4["scm"] == "git" and s4["scmurl"] == cm["EXTENSION_HOMEPAGE"] and s4["enabled"] in ("0", "1")


def test_screenshot_urls_point_into_the_repository():
    cm = cmake_vars()
    urls = cm["EXTENSION_SCREENSHOTURLS"].split()
    assert urls, "the Extensions Index shows screenshots: list at least one"
    raw = cm["EXTENSION_HOMEPAGE"].replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    for url in urls + [cm["EXTENSION_ICONURL"]]:
        assert url.startswith(raw) and url.lower().endswith((".png", ".jpg")), url


def test_catalog_entry_follows_slicers_schema():
    entry = json.loads((ROOT / "BrainSpineAI.json").read_text(encoding="utf-8"))
    assert {"$schema", "category", "scm_url"} <= set(entry) <= CATALOG_KEYS
    assert entry["$schema"] == CATALOG_SCHEMA
    cm = cmake_vars()
    assert entry["category"] == cm["EXTENSION_CATEGORY"]
    assert entry["scm_url"] == cm["EXTENSION_HOMEPAGE"]
    assert entry["build_dependencies"] == cm["EXTENSION_DEPENDS"].split() == ["PyTorch"]
    assert isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5
