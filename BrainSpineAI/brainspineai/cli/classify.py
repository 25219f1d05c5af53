"""``brainspineai classify``: 2D slices or 3D volumes, optionally with a Grad-CAM heatmap.

One input, or several (files and folders; a folder of image files counts as its files, a
folder without any as one DICOM series): the model is loaded once, every input is read and
classified (:func:`classify_one`), and only when all succeeded is anything written
(``--json`` / ``--heatmap`` for one input; ``--json-dir OUT``: one ``<name>.json`` per input
plus ``summary.csv``). A bad input stops the run with one error line and nothing written.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import InputError
from .common import HEATMAP_VOLUME_SUFFIXES, _suffix_ok
from .progress import add_progress_arg, json_line, make_progress, scaled
from .sicf import add_trust_pickle_arg, load_model_trusting

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".jpg", ".jpeg", ".png")


def expand_inputs(paths) -> list[str]:
    """The inputs as files: a folder holding image files (:data:`IMAGE_SUFFIXES`, not
    recursive, sorted by name) is replaced by them; any other folder stays (a DICOM series).

    :raises InputError: a path that does not exist."""
    out = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise InputError(f"input not found: {p}")
        if path.is_dir():
            files = sorted(str(f) for f in path.iterdir() if f.is_file() and _suffix_ok(f.name, IMAGE_SUFFIXES))
            out.extend(files or [str(p)])
        else:
            out.append(str(p))
    return out


def classify_one(args, model, path: str, progress=None, image=None) -> tuple:
    """Read (unless ``image``, already read from ``path``, is given) and classify one input with
    a loaded ``model``: ``(result document, result, image)``; the document is what ``--json``
    writes (``classes``, ``probabilities``, ``predicted``, ``slices`` for volumes, ``sicf`` for
    an SICF model, ``input``, ``seconds``)."""
    import time

    from ..io import read_image

    image = read_image(path) if image is None else image
    t0 = time.perf_counter()
    prep = None
    if getattr(args, "preprocess", "off") != "off":
        image, prep = _brain_extract(args, image, progress)
    if getattr(model, "kind", "") == "sicf":
        from ..sicf.inference import classify_sicf

        result = classify_sicf(image, model, progress=progress)
        doc = {**result.to_json(), "sicf": result.extra["sicf"]}
    else:
        from ..classification.inference import classify_image

        result = classify_image(image, model, heatmap=bool(args.heatmap), heatmap_class=args.heatmap_class,
                                progress=progress, heatmap_method=args.heatmap_method,
                                heatmap_sizes=args.heatmap_size, heatmap_slice_sigma=args.heatmap_slice_sigma)
        doc = result.to_json()
        add_trust_fields(doc, image, model, args.device)
    doc.setdefault("warnings", [])
    if prep is not None:
        doc["preprocessing"] = prep
    doc["input"] = str(path)
    doc["seconds"] = round(time.perf_counter() - t0, 3)  # inference (and Grad-CAM), without reading the input
    return doc, result, image


def _brain_extract(args, image, progress=None) -> tuple:
    """``classify --preprocess``: brain extraction (deepbet, :mod:`brainspineai.preprocessing`) of
    a 3D input on its own grid, so results and heatmaps map onto the input voxel for voxel.
    ``auto`` strips only a skull that is still there and leaves a 2D slice alone; ``on`` always
    strips and refuses a 2D slice. Returns ``(image to classify, report or None)``."""
    from ..io import is_slice
    from ..preprocessing.pipeline import preprocess
    from .preprocess import _device, brain_ml_arg, summary_line

    if is_slice(image):
        if args.preprocess == "on":
            raise InputError("--preprocess on: brain extraction needs a 3D volume, this input is a 2D slice")
        return image, {"mode": args.preprocess, "brain_extraction": {"applied": False, "reason": "2D slice: not preprocessed"}}
    res = preprocess({"input": image}, "input", mode=args.preprocess, device=_device(args.device),
                     brain_ml=brain_ml_arg(args))
    line = summary_line(res.report)
    if getattr(args, "progress", "text") == "jsonl" and progress is not None:
        progress(0.0, line)
    else:
        print(line, file=sys.stderr)
    return res.images["input"], res.report


def add_trust_fields(doc: dict, image, model, device) -> list:
    """Add ``"sequence"`` (detected MRI sequence) and ``"warnings"`` to a classify result
    document (``"uncertain"`` comes from :func:`brainspineai.classification.inference.classify_image`);
    return the text lines that say them (:func:`trust_lines`)."""
    from ..classification.sequence import check_sequence

    seq, warnings = check_sequence(image, model.card, device, predicted=doc.get("predicted"))
    doc["sequence"], doc["warnings"] = seq, warnings
    return trust_lines(doc)


def trust_lines(doc: dict) -> list:
    """The text lines for the detected sequence and an uncertain answer of a result document."""
    from ..classification.sequence import SEQUENCE_LABELS

    lines = []
    seq = doc.get("sequence")
    if seq:
        p = seq["probabilities"][seq["predicted"]]
        lines.append(f"sequence: {SEQUENCE_LABELS.get(seq['predicted'], seq['predicted'])} ({p:.0%}, model {seq['model']})")
    if doc.get("uncertain"):
        lines.append("UNCERTAIN: do not rely on this answer: " + "; ".join(doc["uncertainty"]["reasons"]))
    return lines


def _json_names(inputs) -> list[str]:
    """``<file name without image suffix>.json`` per input, made unique with ``-2``, ``-3``..."""
    names, seen = [], {}
    for p in inputs:
        base = Path(p).name
        for s in IMAGE_SUFFIXES:
            if base.lower().endswith(s):
                base = base[:-len(s)]
                break
        n = seen[base.lower()] = seen.get(base.lower(), 0) + 1
        names.append(f"{base}.json" if n == 1 else f"{base}-{n}.json")
    return names


def summary_csv(docs) -> str:
    """CSV text: ``input,predicted,p_predicted,<one column per class>`` (probabilities)."""
    import csv
    import io

    classes = docs[0]["classes"] if docs else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["input", "predicted", "p_predicted", "uncertain", "sequence"] + [f"p_{c}" for c in classes])
    for d in docs:
        p = d["probabilities"]
        seq = (d.get("sequence") or {}).get("predicted", "")
        w.writerow([d["input"], d["predicted"], f"{p[d['classes'].index(d['predicted'])]:.6f}",
                    int(bool(d.get("uncertain"))), seq] + [f"{x:.6f}" for x in p])
    return buf.getvalue()


def _check_args(args, inputs) -> None:
    from ..outputs import check_outputs

    if args.heatmap_method:
        from ..classification.explain import parse_method

        parse_method(args.heatmap_method)  # refused before anything is read
    if args.heatmap_size is not None:
        from ..classification.explain import MAX_HEATMAP_SIZE, MIN_HEATMAP_SIZE

        if not all(MIN_HEATMAP_SIZE <= v <= MAX_HEATMAP_SIZE for v in args.heatmap_size):
            raise InputError(f"--heatmap-size {' '.join(map(str, args.heatmap_size))}: give whole numbers of pixels "
                             f"from {MIN_HEATMAP_SIZE} to {MAX_HEATMAP_SIZE}")
    if args.heatmap_slice_sigma is not None:
        from ..classification.explain import MAX_SLICE_SIGMA

        if not 0 <= args.heatmap_slice_sigma <= MAX_SLICE_SIGMA:  # NaN fails this too
            raise InputError(f"--heatmap-slice-sigma {args.heatmap_slice_sigma:g}: give a number of slices from 0 to "
                             f"{MAX_SLICE_SIGMA:g} (0: no smoothing across slices)")
    many = len(inputs) > 1
    if many and (args.json or args.heatmap):
        raise InputError(f"{len(inputs)} inputs: --json and --heatmap take one input; use --json-dir OUT for several")
    if args.heatmap and not args.heatmap.lower().endswith(".png") and not _suffix_ok(args.heatmap, HEATMAP_VOLUME_SUFFIXES):
        raise InputError(f"--heatmap {args.heatmap}: use a .png file (2D overlay) or .nii.gz, .nii, .nrrd or .mha")
    outs = [("--json", args.json), ("--heatmap", args.heatmap)]
    if args.json_dir:
        if Path(args.json_dir).exists() and not Path(args.json_dir).is_dir():
            raise InputError(f"--json-dir {args.json_dir}: exists and is not a folder")
        outs += [("--json-dir", str(Path(args.json_dir) / n)) for n in _json_names(inputs) + ["summary.csv"]]
    check_outputs(outs, inputs=list(inputs) + [args.model])


def cmd_classify(args) -> int:
    from .validate import guarded_load
    from .worker import cached_load

    inputs = expand_inputs(args.input)
    if not inputs:
        raise InputError("no input given")
    _check_args(args, inputs)
    if len(inputs) == 1 and not args.json_dir:
        from ..io import read_image

        image = read_image(inputs[0])  # a bad input is said before seconds of model loading
        return _classify_single(args, inputs[0], cached_load(args.model, guarded_load, load_model_trusting, args),
                                image)
    model = cached_load(args.model, guarded_load, load_model_trusting, args)
    progress = make_progress(args.progress)
    docs = []
    try:
        for k, path in enumerate(inputs):
            step = scaled(progress, k / len(inputs), (k + 1) / len(inputs), f"{k + 1}/{len(inputs)} ")
            docs.append(classify_one(args, model, path, progress=step)[0])
            progress((k + 1) / len(inputs), f"{k + 1}/{len(inputs)} classified")
    finally:
        progress.close()
    _write_batch(args, inputs, docs)  # all computed: now write
    return 0


def _write_batch(args, inputs, docs) -> None:
    from ..io import atomic_write_text

    if args.json_dir:
        for name, doc in zip(_json_names(inputs), docs):
            atomic_write_text(Path(args.json_dir) / name, json.dumps(doc, indent=2) + "\n")
        atomic_write_text(Path(args.json_dir) / "summary.csv", summary_csv(docs))
    if args.progress == "jsonl":
        json_line({"event": "done", "result": {"model": docs[0]["model"], "results": docs}})
        return
    print(f"model: {docs[0]['model']}   {len(docs)} inputs")
    width = min(max(len(d["input"]) for d in docs), 60)
    for d in docs:
        p = d["probabilities"][d["classes"].index(d["predicted"])]
        print(f"  {d['input'][-width:]:<{width}}  {d['predicted']:<12} {p:7.2%}" + ("  UNCERTAIN" if d.get("uncertain") else ""))
        for w in d.get("warnings", []):
            print(f"warning: {Path(d['input']).name}: {w}", file=sys.stderr)
    if args.json_dir:
        print(f"results: {args.json_dir} ({len(docs)} JSON files and summary.csv)")


def _classify_single(args, path: str, model, image) -> int:
    from ..classification.explain import overlay_png
    from ..classification.preprocess import slice_array
    from ..io import atomic_write_bytes, atomic_write_text, is_slice, write_image_atomic

    if args.heatmap:
        if getattr(model, "kind", "") == "sicf":
            raise InputError(f"model '{model.id}' is an SICF model (random forest on SIFT + VGG16 features): it has "
                             "no Grad-CAM heatmap; leave out --heatmap")
        if not is_slice(image) and not _suffix_ok(args.heatmap, HEATMAP_VOLUME_SUFFIXES):
            raise InputError(f"--heatmap {args.heatmap}: a volume's heatmap is a volume; use .nii.gz, .nii, .nrrd or .mha")
    progress = make_progress(args.progress)
    try:
        doc, result, image = classify_one(args, model, path, progress=progress, image=image)
    finally:
        progress.close()
    slice_input = is_slice(image)
    # all computed: now write
    if args.heatmap:
        if args.heatmap.lower().endswith(".png"):
            atomic_write_bytes(args.heatmap, overlay_png(slice_array(image), slice_array(result.heatmap)))
        else:
            write_image_atomic(result.heatmap, args.heatmap)
    if args.json:
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    if args.progress == "jsonl":
        json_line({"event": "done", "result": doc})
        return 0
    order = sorted(range(len(doc["classes"])), key=lambda i: -doc["probabilities"][i])
    p_pred = doc["probabilities"][doc["classes"].index(doc["predicted"])]
    print(f"model: {doc['model']}" + (" (SICF)" if "sicf" in doc else ""))
    kind = "2D slice" if slice_input else f"volume, {len(doc['slices'])} slices classified"
    print(f"input: {path} ({kind})")
    print(f"predicted: {doc['predicted']} ({p_pred:.1%})")
    for i in order:
        print(f"  {doc['classes'][i]:<12} {doc['probabilities'][i]:7.2%}")
    if "sicf" in doc:
        s = doc["sicf"]
        where = "" if s["slice_index"] is None else f" of LPS axial slice {s['slice_index']}"
        print(f"ROI ({s['roi_mode']}) rows {s['roi_box'][0]}-{s['roi_box'][2]}, columns {s['roi_box'][1]}-"
              f"{s['roi_box'][3]}{where}; {len(s['keypoints'])} SIFT keypoints; {s['n_features_kept']} of "
              f"{s['n_features']} features kept")
    elif not slice_input:
        print(f"volume rule: {doc['volume_rule']}")
    for line in trust_lines(doc):
        print(line)
    for w in doc.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    if args.heatmap:
        used = getattr(result, "heatmap_method", None) or {}
        print(f"heatmap ({result.heatmap_class}, {used.get('name', '?')} at {used.get('layer', '?')}, "
              f"{'+'.join(map(str, used.get('input_sizes', [])))} px input"
              + (f", smoothed across slices, sigma {used['slice_sigma']:g} slices" if used.get("slice_sigma") else "")
              + f"): {args.heatmap}")
    return 0


def add_parser(sub) -> None:
    from ..device import DEVICE_CHOICES

    c = sub.add_parser("classify", help="classify 2D slices or 3D volumes, optionally with a Grad-CAM heatmap")
    c.add_argument("input", nargs="+", help="NIfTI / NRRD / MHA files, DICOM series folders, JPEG / PNG slices, "
                                            "or folders of such files (the model is loaded once)")
    c.add_argument("--model", help="model id, model folder or URL (default: the shipped 4-class model)")
    c.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    c.add_argument("--heatmap", metavar="OUT", help="Grad-CAM output: NIfTI/NRRD/MHA for volumes, PNG overlay for 2D "
                                                    "(one input only)")
    c.add_argument("--heatmap-class", metavar="CLASS", help="class to explain (default: the predicted class)")
    c.add_argument("--heatmap-method", metavar="METHOD[@LAYER]",
                   help="gradcam, gradcam++, hirescam or layercam, optionally at a layer (e.g. layercam@layer3); "
                        "default: the model's choice")
    c.add_argument("--heatmap-size", metavar="PX", type=int, nargs="+",
                   help="side(s) in pixels of the slice the heatmap is computed on; several: the product of "
                        "their maps (the probabilities always use the model's own input size); default: the "
                        "model's choice")
    c.add_argument("--heatmap-slice-sigma", metavar="SLICES", type=float,
                   help="volumes: smooth the heatmap across axial slices by a Gaussian of this many slices, then cut "
                        "it to each slice's head again (0: none); default: the model's choice")
    c.add_argument("--json", metavar="OUT", help="write the result as JSON (one input only)")
    c.add_argument("--json-dir", metavar="OUT", help="write one JSON per input and summary.csv into this folder")
    from .preprocess import add_preprocess_arg

    add_preprocess_arg(c, default="off", single=True)
    add_progress_arg(c)
    add_trust_pickle_arg(c)
    c.set_defaults(func=cmd_classify)
