"""``brainspineai classify``: a 2D slice or a 3D volume, optionally with a Grad-CAM heatmap."""
from __future__ import annotations

import json
import sys

from ..errors import InputError
from .common import HEATMAP_VOLUME_SUFFIXES, _json_line, _suffix_ok
from .sicf import add_trust_pickle_arg, load_model_trusting


def cmd_classify(args) -> int:
    from ..classification.explain import overlay_png
    from ..io import atomic_write_bytes, atomic_write_text, is_slice, read_image, write_image_atomic
    from ..classification.inference import classify_image
    from ..classification.preprocess import slice_array
    from ..outputs import check_outputs
    from .validate import guarded_load

    if args.heatmap_method:
        from ..classification.explain import parse_method

        parse_method(args.heatmap_method)  # refused before anything is read
    if args.heatmap and not args.heatmap.lower().endswith(".png") and not _suffix_ok(args.heatmap, HEATMAP_VOLUME_SUFFIXES):
        raise InputError(f"--heatmap {args.heatmap}: use a .png file (2D overlay) or .nii.gz, .nii, .nrrd or .mha")
    check_outputs([("--json", args.json), ("--heatmap", args.heatmap)], inputs=[args.input, args.model])
    image = read_image(args.input)
    slice_input = is_slice(image)
    if args.heatmap:
        if not slice_input and not _suffix_ok(args.heatmap, HEATMAP_VOLUME_SUFFIXES):
            raise InputError(f"--heatmap {args.heatmap}: a volume's heatmap is a volume; use .nii.gz, .nii, .nrrd or .mha")
    model = guarded_load(args.model, load_model_trusting, args)  # --trust-pickle: legacy SICF forests
    if getattr(model, "kind", "") == "sicf":
        from . import sicf as cli_sicf

        return cli_sicf.classify(args, image, model)
    progress = None
    if args.progress == "jsonl":
        progress = lambda f, m: _json_line({"event": "progress", "fraction": round(f, 3), "message": m})  # noqa: E731
    result = classify_image(image, model, heatmap=bool(args.heatmap), heatmap_class=args.heatmap_class, progress=progress,
                            heatmap_method=args.heatmap_method)
    doc = result.to_json()
    trust_lines = add_trust_fields(doc, image, model, args.device)
    # all computed: now write
    if args.heatmap:
        if args.heatmap.lower().endswith(".png"):
            atomic_write_bytes(args.heatmap, overlay_png(slice_array(image), slice_array(result.heatmap)))
        else:
            write_image_atomic(result.heatmap, args.heatmap)
    if args.json:
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    if args.progress == "jsonl":
        _json_line({"event": "done", "result": doc})
    else:
        order = sorted(range(len(doc["classes"])), key=lambda i: -doc["probabilities"][i])
        p_pred = doc["probabilities"][doc["classes"].index(doc["predicted"])]
        print(f"model: {doc['model']}")
        kind = "2D slice" if slice_input else f"volume, {len(doc['slices'])} slices classified"
        print(f"input: {args.input} ({kind})")
        print(f"predicted: {doc['predicted']} ({p_pred:.1%})")
        for i in order:
            print(f"  {doc['classes'][i]:<12} {doc['probabilities'][i]:7.2%}")
        if not slice_input:
            print(f"volume rule: {doc['volume_rule']}")
        for line in trust_lines:
            print(line)
        for w in doc["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        if args.heatmap:
            used = result.heatmap_method or {}
            print(f"heatmap ({result.heatmap_class}, {used.get('name', '?')} at {used.get('layer', '?')}): {args.heatmap}")
    return 0


def add_trust_fields(doc: dict, image, model, device) -> list:
    """Add ``"sequence"`` (detected MRI sequence) and ``"warnings"`` to a classify result
    document (``"uncertain"`` comes from :func:`brainspineai.classification.inference.classify_image`);
    return the text lines that say them."""
    from ..classification.sequence import SEQUENCE_LABELS, check_sequence

    seq, warnings = check_sequence(image, model.card, device)
    doc["sequence"], doc["warnings"] = seq, warnings
    lines = []
    if seq:
        p = seq["probabilities"][seq["predicted"]]
        lines.append(f"sequence: {SEQUENCE_LABELS.get(seq['predicted'], seq['predicted'])} ({p:.0%}, model {seq['model']})")
    if doc.get("uncertain"):
        lines.append("UNCERTAIN: do not rely on this answer: " + "; ".join(doc["uncertainty"]["reasons"]))
    return lines


def add_parser(sub) -> None:
    from ..device import DEVICE_CHOICES

    c = sub.add_parser("classify", help="classify a 2D slice or a 3D volume, optionally with a Grad-CAM heatmap")
    c.add_argument("input", help="NIfTI / NRRD / MHA file, DICOM series folder, or JPEG / PNG slice")
    c.add_argument("--model", help="model id, model folder or URL (default: the shipped 4-class model)")
    c.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    c.add_argument("--heatmap", metavar="OUT", help="Grad-CAM output: NIfTI/NRRD/MHA for volumes, PNG overlay for 2D")
    c.add_argument("--heatmap-class", metavar="CLASS", help="class to explain (default: the predicted class)")
    c.add_argument("--heatmap-method", metavar="METHOD[@LAYER]",
                   help="gradcam, gradcam++, hirescam or layercam, optionally at a layer (e.g. layercam@layer3); "
                        "default: the model's choice")
    c.add_argument("--json", metavar="OUT", help="write the result as JSON")
    c.add_argument("--progress", choices=["text", "jsonl"], default="text",
                   help="jsonl: progress and result as JSON lines on stdout (for 3D Slicer)")
    add_trust_pickle_arg(c)
    c.set_defaults(func=cmd_classify)

