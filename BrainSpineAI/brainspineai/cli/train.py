"""``brainspineai train classifier | affcl | simclr | finetune`` and ``brainspineai ablation affcl |
label-efficiency``: the 2D classification pipelines."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

from .common import _backbones, _check_train_out, _common_train_args, _event_sink, _report_model, _skull_strip_arg


def _guarded(fn):
    """A ``train`` command run under the lock of its ``--out`` (:func:`checkpoint.run_lock`:
    a second run on the same folder is refused, a killed run's leftovers are removed), with
    SIGTERM ending it by one line (exit 128 + signal number) once the files being written
    are removed; the last finished epoch's checkpoint stays for ``--resume``."""
    @functools.wraps(fn)
    def run(args) -> int:
        from ..checkpoint import Terminated, read_checkpoint, run_lock, work_dir

        _check_train_out(args)  # before the lock makes <out>.work
        last = work_dir(args.out) / "last.pt"
        if getattr(args, "resume", False) and last.is_file():
            read_checkpoint(last)  # an unusable checkpoint is refused before anything is touched
        try:
            with run_lock(args.out):
                return fn(args)
        except Terminated as exc:
            print(f"brainspineai: {exc}", file=sys.stderr)
            return 128 + exc.signum
    return run


@_guarded
def cmd_train_classifier(args) -> int:
    _check_train_out(args)
    from ..classification.training import TrainConfig, train_classifier

    cfg = TrainConfig(architecture=args.architecture, image_size=args.image_size, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction, seed=args.seed,
                      device=args.device, limit_per_class=args.limit_per_class, model_id=args.model_id or "",
                      keep=args.keep, skull_strip_p=args.skull_strip_p, extra_card={"description": args.description} if args.description else {},
                      init_model=getattr(args, "init_model", None) or "", boxes=args.boxes or "",
                      align_weight=args.align_weight, align_sizes=tuple(args.align_sizes or ()))
    folder = train_classifier(args.data, args.out, cfg, resume=args.resume, progress=_event_sink(args.events))
    _report_model(folder)
    return 0


def _affcl_config(args):
    from ..classification.affcl import AFFCLConfig

    return AFFCLConfig(backbone=args.backbone, two_branch=not getattr(args, "single_branch", False),
                       fusion=args.fusion, crop_fraction=args.crop_fraction,
                       supcon_weight=args.supcon_weight, temperature=args.temperature, queue_size=args.queue_size,
                       aux_weight=args.aux_weight, image_size=args.image_size, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction, seed=args.seed,
                       device=args.device, limit_per_class=args.limit_per_class, skull_strip_p=args.skull_strip_p,
                       boxes=args.boxes or "", model_id=args.model_id or "",
                       extra_card={"description": args.description} if args.description else {},
                       init_model=getattr(args, "init_model", None) or "")


@_guarded
def cmd_train_affcl(args) -> int:
    _check_train_out(args)
    from ..classification.affcl import train_affcl

    folder = train_affcl(args.data, args.out, _affcl_config(args), resume=args.resume, progress=_event_sink(args.events))
    _report_model(folder)
    return 0


def cmd_ablation_affcl(args) -> int:
    from ..classification.affcl import run_ablation

    doc = run_ablation(args.data, args.out, _affcl_config(args), progress=_event_sink(args.events))
    from ..classification.affcl import ablation_markdown

    print(ablation_markdown(doc), end="")
    print(f"table written to {Path(args.out) / 'ablation.md'} and ablation.json")
    return 0


@_guarded
def cmd_train_simclr(args) -> int:
    _check_train_out(args)
    from ..classification.simclr import SimCLRConfig, train_simclr

    cfg = SimCLRConfig(backbone=args.backbone, image_size=args.image_size, proj_dim=args.proj_dim,
                       temperature=args.temperature, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       val_fraction=args.val_fraction, seed=args.seed, device=args.device,
                       limit_per_class=args.limit_per_class, model_id=args.model_id or "",
                       extra_card={"description": args.description} if args.description else {},
                       init_model=getattr(args, "init_model", None) or "")
    folder = train_simclr(args.data, args.out, cfg, resume=args.resume, progress=_event_sink(args.events))
    _report_model(folder)
    return 0


def _finetune_config(args):
    from ..classification.simclr import FinetuneConfig

    return FinetuneConfig(encoder=getattr(args, "encoder", None) or "", backbone=args.backbone,
                          image_size=args.image_size, head=args.head, freeze_encoder=args.freeze_encoder,
                          label_fraction=getattr(args, "label_fraction", 1.0), epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction, seed=args.seed,
                          device=args.device, limit_per_class=args.limit_per_class, skull_strip_p=args.skull_strip_p,
                          model_id=args.model_id or "",
                          extra_card={"description": args.description} if args.description else {},
                          init_model=getattr(args, "init_model", None) or "")


@_guarded
def cmd_train_finetune(args) -> int:
    _check_train_out(args)
    from ..classification.simclr import train_finetune

    folder = train_finetune(args.data, args.out, _finetune_config(args), resume=args.resume,
                            progress=_event_sink(args.events))
    _report_model(folder)
    return 0


def cmd_ablation_label_efficiency(args) -> int:
    from ..classification.simclr import run_label_efficiency

    run_label_efficiency(args.data, args.out, args.encoder, _finetune_config(args), fractions=args.fractions,
                         progress=_event_sink(args.events))
    print((Path(args.out) / "label_efficiency.md").read_text(), end="")
    return 0


def _affcl_args(p) -> None:
    p.add_argument("--backbone", default="resnet18-w32", choices=_backbones())
    p.add_argument("--fusion", choices=["aff", "iaff"], default="aff", help="attentional feature fusion or iterative AFF")
    p.add_argument("--crop-fraction", type=float, default=0.5, help="local crop side as a fraction of the slice")
    p.add_argument("--boxes", metavar="CSV", help="tumour boxes (figshare3/tumor_boxes.csv layout) for the local crop")
    p.add_argument("--supcon-weight", type=float, default=0.5, help="weight of the SupCon queue loss (0 = off)")
    p.add_argument("--temperature", type=float, default=0.1, help="SupCon temperature")
    p.add_argument("--queue-size", type=int, default=1024, help="labelled memory queue length (embeddings)")
    p.add_argument("--aux-weight", type=float, default=0.3, help="weight of the global branch's auxiliary cross-entropy")
    _skull_strip_arg(p)


def _finetune_args(p) -> None:
    p.add_argument("--backbone", default="resnet18-w32", choices=_backbones(), help="only without --encoder")
    p.add_argument("--head", choices=["linear", "mlp"], default="linear")
    p.add_argument("--freeze-encoder", action="store_true", help="train the head only")
    _skull_strip_arg(p)


def add_train_parsers(tsub) -> None:
    tc = tsub.add_parser("classifier", help="supervised 2D classifier (cross-entropy) on an ImageFolder dataset")
    _common_train_args(tc, image_size=128, epochs=30, lr=2e-3)
    tc.add_argument("--architecture", default="resnet18-w32")
    tc.add_argument("--keep", choices=["last", "best"], default="last",
                    help="weights to keep: the last epoch (default; unbiased validation figure) or the best validation epoch")
    _skull_strip_arg(tc)
    tc.add_argument("--boxes", metavar="CSV", help="tumour boxes (image relative to --data, x_center, y_center, width, "
                                                   "height as fractions), e.g. figshare3/tumor_boxes.csv; for --align-weight")
    tc.add_argument("--align-weight", type=float, default=0.0,
                    help="weight of the explanation-alignment loss: the share of the class activation map outside the "
                         "tumour box, on slices with a box (0 = off)")
    tc.add_argument("--align-sizes", type=int, nargs="+", metavar="PX",
                    help="further input sides at which the alignment loss is also applied, one drawn per step "
                         "(e.g. 192 256: the finer scales of the default heatmap); default: none")
    tc.set_defaults(func=cmd_train_classifier)

    ta = tsub.add_parser("affcl", help="AFF-CL: global + local branches, attentional feature fusion, SupCon memory queue")
    _common_train_args(ta, image_size=128, epochs=30, lr=2e-3)
    _affcl_args(ta)
    ta.add_argument("--single-branch", action="store_true", help="no local branch / fusion (ablation)")
    ta.set_defaults(func=cmd_train_affcl)

    ts = tsub.add_parser("simclr", help="SSCLNet pre-training: SimCLR / NT-Xent on unlabelled slices -> encoder model")
    _common_train_args(ts, image_size=96, epochs=50, lr=2e-3, batch_size=64)
    ts.add_argument("--backbone", default="resnet18-w32", choices=_backbones(), help="encoder (ResNet-18 layout by default)")
    ts.add_argument("--proj-dim", type=int, default=128, help="projection head output size")
    ts.add_argument("--temperature", type=float, default=0.5, help="NT-Xent temperature")
    ts.set_defaults(func=cmd_train_simclr)

    tf = tsub.add_parser("finetune", help="SSCLNet fine-tuning: classifier from a SimCLR encoder on a fraction of labels")
    _common_train_args(tf, image_size=0, epochs=30, lr=2e-3)
    _finetune_args(tf)
    tf.add_argument("--encoder", help="SimCLR encoder model id / folder / URL (omit: random initialisation)")
    tf.add_argument("--label-fraction", type=float, default=1.0, help="fraction of the training labels used, e.g. 0.1")
    tf.set_defaults(func=cmd_train_finetune)



def add_ablation_parsers(absub) -> None:
    aa = absub.add_parser("affcl", help="cross-entropy vs +SupCon queue vs +AFF two-branch vs both")
    _common_train_args(aa, image_size=128, epochs=30, lr=2e-3, resume=False)
    _affcl_args(aa)
    aa.set_defaults(func=cmd_ablation_affcl)
    al = absub.add_parser("label-efficiency", help="fine-tuning with vs without SimCLR pre-training at several label fractions")
    _common_train_args(al, image_size=0, epochs=30, lr=2e-3, resume=False)
    _finetune_args(al)
    al.add_argument("--encoder", required=True, help="SimCLR encoder model id / folder / URL")
    al.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 1.0], help="label fractions")
    al.set_defaults(func=cmd_ablation_label_efficiency)
