"""The ``brainspineai`` command: every job of the library, headless. One module per command
group (:mod:`.classify`, :mod:`.train`, :mod:`.sicf`, :mod:`.evaluate`, :mod:`.segment`,
:mod:`.models`); this one assembles the parser and turns errors into exit codes.

Exit status: 0 on success, 2 when the input, the model or the options are at fault (one
line ``brainspineai: error: ...`` on stderr, and no output file written), 1 for an
unexpected failure. Outputs are written only after the whole job succeeded, each
atomically (temporary file, then rename).
"""
from __future__ import annotations

import argparse
import sys

from ..errors import BrainSpineAIError
from . import classify, evaluate, models, prognosis, segment, sicf, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brainspineai", description="Tumour AI for brain and spine MRI (research use only).")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    classify.add_parser(sub)
    t = sub.add_parser("train", help="train a model")
    tsub = t.add_subparsers(dest="pipeline", required=True)
    train.add_train_parsers(tsub)
    ab = sub.add_parser("ablation", help="train several variants on one split and seed and write one table")
    absub = ab.add_subparsers(dest="study", required=True)
    train.add_ablation_parsers(absub)
    sicf.add_parsers(tsub, absub)
    evaluate.add_parser(sub)
    models.add_dataset_summary_parser(sub)
    segment.add_segment_parser(sub)
    segment.add_train_parser(tsub)
    segment.add_evaluate_parser(sub)
    models.add_parsers(sub)
    prognosis.add_train_parser(tsub)
    prognosis.add_parsers(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrainSpineAIError as exc:
        if args.debug:
            raise
        print(f"brainspineai: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("brainspineai: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
