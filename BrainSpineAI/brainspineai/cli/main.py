"""The ``brainspineai`` command: every job of the library, headless. One module per command
group (:mod:`.classify`, :mod:`.train`, :mod:`.sicf`, :mod:`.evaluate`, :mod:`.segment`,
:mod:`.models`); this one assembles the parser and turns errors into exit codes.

Exit status: 0 on success, 2 when the input, the model, the options or the environment
are at fault (one line ``brainspineai: error: ...`` on stderr, and no output file written:
option ranges are checked by the parser, output paths before anything is computed, see
:func:`brainspineai.outputs.check_outputs`), 1 for an unexpected failure (a bug: one line
``brainspineai: internal error: ...``; ``--debug`` shows the traceback), 130 when
interrupted. Outputs are written only after the whole job succeeded, each atomically
(temporary file, then rename) with the mode the umask allows.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import BrainSpineAIError
from . import classify, evaluate, models, preprocess, prognosis, segment, sicf, train, worker
from .validate import OneLineParser, clean_message, install_validators


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that names each option's default (when it has a meaningful one)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" not in text and "(default:" not in text and action.option_strings and default not in (None, False, True, "")
                and default is not argparse.SUPPRESS and not isinstance(action, argparse._VersionAction)):
            text += " (default: %(default)s)"
        return text


def _use_defaults_formatter(parser) -> None:
    parser.formatter_class = DefaultsFormatter
    for action in parser._actions:
        if action.help is None and action.option_strings and action.default not in (None, False, True, ""):
            action.help = "(default: %(default)s)"  # an option without help still names its default
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _use_defaults_formatter(child)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = OneLineParser(prog="brainspineai", description="Tumour AI for brain and spine MRI (research use only).")
    p.add_argument("--version", action="version", version=f"brainspineai {__version__}")
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
    preprocess.add_parser(sub)
    prognosis.add_train_parser(tsub)
    prognosis.add_parsers(sub)
    worker.add_parser(sub, main)
    install_validators(p)
    _use_defaults_formatter(p)
    return p


def _error(text: str, prefix: str = "brainspineai: error: ") -> None:
    sys.stderr.write(prefix + clean_message(text) + "\n")
    sys.stderr.flush()


def _os_error_text(exc: OSError) -> str:
    name = exc.filename if exc.filename is not None else None
    why = exc.strerror or str(exc) or type(exc).__name__
    return f"{name}: {why}" if name is not None else why


def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a parser error (2, already printed as one line)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during a training run (checkpoint.Terminated)
        signum = getattr(exc, "signum", None)
        print(f"brainspineai: {exc}" if signum else "brainspineai: interrupted", file=sys.stderr)
        return 128 + int(signum) if signum else 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line (tracebacks with --debug)
        if args.debug:
            raise
        if isinstance(exc, BrainSpineAIError):
            _error(str(exc))
            return 2
        if isinstance(exc, OSError):  # a file of the user's that cannot be read or written
            _error(_os_error_text(exc))
            return 2
        if isinstance(exc, MemoryError):
            _error("not enough memory for this input (is it far larger than a clinical scan?)")
            return 2
        first = (str(exc).strip().splitlines() or [""])[0]
        _error(f"{type(exc).__name__}: {first} (this is a bug; rerun with --debug for the traceback)",
               prefix="brainspineai: internal error: ")
        return 1


if __name__ == "__main__":
    sys.exit(main())
