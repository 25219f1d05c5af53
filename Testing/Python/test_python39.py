"""Everything 3D Slicer loads runs on Python 3.9 (Slicer 5.8, numpy 1.26.4) and 3.12 (Slicer 5.10,
numpy 2.0.2); no 3.9 interpreter can be installed here, so the sources are checked instead:

- ``vermin`` (https://github.com/netromdk/vermin) with target 3.9: syntax, standard-library modules,
  members, keyword arguments new since 3.9;
- ``ast.parse(feature_version=(3, 9))``: 3.10+ grammar (``match``, ``except*``, ...);
- ``X | Y`` unions evaluated at run time (``isinstance(x, int | None)``, aliases, and annotations of a
  module without ``from __future__ import annotations``), which neither of the above sees;
- calls of 3.10+ library APIs from a short list (a second net under vermin);
- numpy names that exist in only one of numpy 1.26 and 2.0.

The files: the library ``BrainSpineAI/brainspineai/**``, the three module scripts and their
``*Lib/`` packages.
"""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from conftest import ROOT

MODULES = ["BrainSpineAI", "BrainSpineAISegment", "BrainSpineAITrain"]


def slicer_files() -> list:
    files = sorted((ROOT / "BrainSpineAI" / "brainspineai").rglob("*.py"))
    for module in MODULES:
        files.append(ROOT / module / f"{module}.py")
        files += sorted((ROOT / module / f"{module}Lib").rglob("*.py"))
    return [f for f in files if "__pycache__" not in f.parts]


FILES = slicer_files()
IDS = [str(f.relative_to(ROOT)) for f in FILES]

# (module, attribute) new in Python 3.10+ (What's New in Python 3.10 / 3.11 / 3.12)
NEW_MEMBERS = {
    ("itertools", "pairwise"): "3.10", ("itertools", "batched"): "3.12", ("bisect", "bisect"): None,
    ("typing", "TypeAlias"): "3.10", ("typing", "ParamSpec"): "3.10", ("typing", "Concatenate"): "3.10",
    ("typing", "TypeGuard"): "3.10", ("typing", "is_typeddict"): "3.10", ("typing", "Self"): "3.11",
    ("typing", "Never"): "3.11", ("typing", "LiteralString"): "3.11", ("typing", "assert_never"): "3.11",
    ("typing", "reveal_type"): "3.11", ("typing", "Required"): "3.11", ("typing", "NotRequired"): "3.11",
    ("typing", "Unpack"): "3.11", ("typing", "TypeVarTuple"): "3.11", ("typing", "override"): "3.12",
    ("typing", "dataclass_transform"): "3.11", ("datetime", "UTC"): "3.11", ("enum", "StrEnum"): "3.11",
    ("contextlib", "chdir"): "3.11", ("contextlib", "aclosing"): "3.10", ("hashlib", "file_digest"): "3.11",
    ("operator", "call"): "3.11", ("math", "cbrt"): "3.11", ("math", "exp2"): "3.11",
    ("asyncio", "TaskGroup"): "3.11", ("asyncio", "timeout"): "3.11", ("sys", "stdlib_module_names"): "3.10",
    ("sys", "orig_argv"): "3.10", ("importlib.metadata", "packages_distributions"): "3.10",
    ("os", "EX_OK"): None, ("types", "NoneType"): "3.10", ("types", "EllipsisType"): "3.10",
    ("types", "UnionType"): "3.10", ("inspect", "get_annotations"): "3.10", ("zoneinfo", "ZoneInfo"): None,
}
NEW_MEMBERS = {k: v for k, v in NEW_MEMBERS.items() if v}
NEW_MODULES = {"tomllib": "3.11", "wsgiref.types": "3.11"}
NEW_BUILTINS = {"aiter": "3.10", "anext": "3.10", "EncodingWarning": "3.10", "ExceptionGroup": "3.11",
                "BaseExceptionGroup": "3.11"}
# method / keyword usages: (attribute or call name, keyword) -> version
NEW_KEYWORDS = {("zip", "strict"): "3.10", ("dataclass", "slots"): "3.10", ("dataclass", "kw_only"): "3.10",
                ("dataclass", "match_args"): "3.10", ("bisect_left", "key"): "3.10", ("bisect_right", "key"): "3.10",
                ("insort", "key"): "3.10", ("glob", "root_dir"): "3.10", ("iglob", "root_dir"): "3.10",
                ("rmtree", "onexc"): "3.12", ("Popen", "process_group"): "3.11", ("run", "process_group"): "3.11"}
NEW_METHODS = {"bit_count": "3.10", "hardlink_to": "3.10", "is_junction": "3.12", "walk": None, "removeprefix": None}
NEW_METHODS = {k: v for k, v in NEW_METHODS.items() if v}
# numpy: only in numpy >= 2.0 (absent from Slicer 5.8's 1.26.4) / removed in 2.0 (absent from 5.10's 2.0.2)
NUMPY_2_ONLY = {"bool", "trapezoid", "concat", "isdtype", "long", "ulong", "astype", "unstack", "pow", "acos", "asin",
                "atan", "atan2", "acosh", "asinh", "atanh", "bitwise_left_shift", "bitwise_right_shift",
                "bitwise_invert", "permute_dims", "matrix_transpose", "vecdot", "cumulative_sum", "cumulative_prod"}
NUMPY_REMOVED_IN_2 = {"float_", "complex_", "NaN", "Inf", "NINF", "PINF", "infty", "Infinity", "string_", "unicode_",
                      "product", "cumproduct", "sometrue", "alltrue", "round_", "asfarray", "find_common_type",
                      "cast", "msort", "deprecate", "safe_eval", "who", "set_string_function", "obj2sctype",
                      "sctype2char", "issubsctype", "maximum_sctype", "mat", "source", "lookfor", "byte_bounds"}
TYPE_NAMES = {"int", "float", "str", "bytes", "bool", "list", "dict", "tuple", "set", "frozenset", "type", "object",
              "complex", "Path"}


def _annotation_nodes(tree) -> set:
    ids = set()
    for node in ast.walk(tree):
        anns = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            anns.append(node.returns)
            a = node.args
            anns += [x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x]
        elif isinstance(node, ast.AnnAssign):
            anns.append(node.annotation)
        for ann in anns:
            if ann is not None:
                ids |= {id(n) for n in ast.walk(ann)}
    return ids


def _is_type_like(node) -> bool:
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.Name):
        return node.id in TYPE_NAMES or node.id[:1].isupper() and node.id not in {"True", "False"}
    if isinstance(node, ast.Attribute):
        return node.attr[:1].isupper() and isinstance(node.value, ast.Name) and node.value.id in {"typing", "np", "numpy"}
    if isinstance(node, ast.Subscript):
        return _is_type_like(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_type_like(node.left) or _is_type_like(node.right)
    return False


def runtime_unions(tree) -> list:
    """Lines with ``A | B`` of types that Python evaluates (3.10+ at run time)."""
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
                 for n in tree.body)
    skip = _annotation_nodes(tree) if future else set()
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and id(node) not in skip:
            if (isinstance(node.left, ast.Constant) and node.left.value is None) or \
                    (isinstance(node.right, ast.Constant) and node.right.value is None) or \
                    (_type_name(node.left) and _type_name(node.right)):
                bad.append(node.lineno)
    return sorted(set(bad))


def _type_name(node) -> bool:
    """A builtin / typing type (``int``, ``list[str]``, ``typing.Any``), not a bit-flag operand."""
    if isinstance(node, ast.Name):
        return node.id in TYPE_NAMES
    if isinstance(node, ast.Subscript):
        return isinstance(node.value, ast.Name) and node.value.id in TYPE_NAMES | {"Optional", "Union", "List", "Dict"}
    if isinstance(node, ast.Attribute):
        return isinstance(node.value, ast.Name) and node.value.id == "typing"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _type_name(node.left) or _type_name(node.right)
    return False


def new_api_uses(tree) -> list:
    """(line, what) for library calls and names new since Python 3.10, or numpy-version-specific."""
    found = []
    aliases = {}  # local name -> module (import x as y / from x import y)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if a.name in NEW_MODULES:
                    found.append((node.lineno, f"module {a.name} (Python {NEW_MODULES[a.name]})"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in NEW_MODULES:
                found.append((node.lineno, f"module {node.module} (Python {NEW_MODULES[node.module]})"))
            for a in node.names:
                if (node.module, a.name) in NEW_MEMBERS:
                    found.append((node.lineno, f"{node.module}.{a.name} (Python {NEW_MEMBERS[(node.module, a.name)]})"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = aliases.get(node.value.id)
            if module and (module, node.attr) in NEW_MEMBERS:
                found.append((node.lineno, f"{module}.{node.attr} (Python {NEW_MEMBERS[(module, node.attr)]})"))
            if module == "numpy" and node.attr in NUMPY_2_ONLY:
                found.append((node.lineno, f"numpy.{node.attr} (numpy >= 2.0 only; Slicer 5.8 has 1.26.4)"))
            if module == "numpy" and node.attr in NUMPY_REMOVED_IN_2:
                found.append((node.lineno, f"numpy.{node.attr} (removed in numpy 2.0; Slicer 5.10 has 2.0.2)"))
        if isinstance(node, ast.Attribute) and node.attr in NEW_METHODS:
            found.append((node.lineno, f".{node.attr} (Python {NEW_METHODS[node.attr]})"))
        if isinstance(node, ast.Name) and node.id in NEW_BUILTINS:
            found.append((node.lineno, f"{node.id} (Python {NEW_BUILTINS[node.id]})"))
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            for kw in node.keywords:
                if (name, kw.arg) in NEW_KEYWORDS:
                    found.append((node.lineno, f"{name}({kw.arg}=) (Python {NEW_KEYWORDS[(name, kw.arg)]})"))
    return sorted(set(found))


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_python39_grammar_and_apis(path):
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path), feature_version=(3, 9))  # SyntaxError on 3.10+ grammar
    assert runtime_unions(tree) == [], f"{path.name}: X | Y evaluated at run time (Python 3.10+) on these lines"
    assert new_api_uses(tree) == [], f"{path.name}: APIs that Slicer 5.8 / 5.10 lack"


def test_every_file_slicer_loads_is_checked():
    names = set(IDS)
    assert "BrainSpineAI/brainspineai/engine.py" in names and "BrainSpineAI/BrainSpineAILib/background.py" in names
    assert "BrainSpineAISegment/BrainSpineAISegmentLib/segment_logic.py" in names
    assert "BrainSpineAITrain/BrainSpineAITrain.py" in names and len(FILES) > 40


BAD = '''
from __future__ import annotations
import itertools
import numpy as np
from typing import TypeAlias
def f(x: int | None) -> list[str]:  # fine: an annotation under the future import
    return list(zip([1], [2], strict=True))
Alias = int | None
ok = isinstance(3, (int, type(None)))
flags = 1 | 2
bad = isinstance(3, int | str)
for a, b in itertools.pairwise([1, 2]):
    pass
mask = np.zeros(3, dtype=np.bool)
area = np.trapz([1, 2])
nan = np.NaN
'''


def test_the_checks_catch_what_slicer_58_cannot_run():
    """The checks above can fail: each planted 3.10+ / numpy-version-specific use is reported."""
    tree = ast.parse(BAD, feature_version=(3, 9))
    assert runtime_unions(tree) == [8, 11]
    found = " ".join(what for _, what in new_api_uses(tree))
    for what in ("zip(strict=)", "itertools.pairwise", "typing.TypeAlias", "numpy.bool", "numpy.NaN"):
        assert what in found, what
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 9))
    no_future = ast.parse("def f(x: int | None): pass\n", feature_version=(3, 9))
    assert runtime_unions(no_future) == [1]  # evaluated at definition time without the future import


def _vermin(*paths):
    runner = "import sys, vermin; sys.argv[0] = 'vermin'; sys.exit(vermin.main())"  # vermin has no __main__
    return subprocess.run([sys.executable, "-c", runner, "-t=3.9-", "--violations", "--no-tips",
                           "--no-parse-comments", *map(str, paths)], capture_output=True, text=True, timeout=900)


def test_vermin_finds_nothing_newer_than_python39(tmp_path):
    pytest.importorskip("vermin", reason="vermin is in the test extra: pip install -e .[test]")
    planted = tmp_path / "planted.py"
    planted.write_text("import itertools\nlist(itertools.pairwise([1, 2]))\n")
    blind = _vermin(planted)
    assert blind.returncode != 0 and "pairwise" in blind.stdout, f"vermin cannot see 3.10 APIs: {blind.stdout}{blind.stderr}"
    out = _vermin(*FILES)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
