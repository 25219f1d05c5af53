"""``brainspineai train prognosis``, ``prognosis CASE_DIR`` and ``evaluate-prognosis``:
survival risk and WHO grade of lower-grade glioma (see :mod:`brainspineai.prognosis`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import InputError
from .common import _check_train_out, _overwrite_arg, _suffix_ok
from .progress import add_progress_arg, json_line, make_progress, scaled

DEFAULT_PROGNOSIS_ID = "tcga-lgg-prognosis"


def _load(ref):
    from ..catalogue import load_model

    return load_model(ref or DEFAULT_PROGNOSIS_ID, "cpu", task="prognosis")


def _check_json_out(path, option="--json"):
    if path and not _suffix_ok(path, (".json",)):
        raise InputError(f"{option} {path}: use a .json file")
    if path and Path(path).is_dir():
        raise InputError(f"{option} {path}: is a folder")


def cmd_train(args) -> int:
    _check_train_out(args)
    from ..prognosis.training import PrognosisConfig, train_prognosis

    if args.folds < 2:
        raise InputError(f"--folds {args.folds}: use at least 2")
    if args.bootstrap < 0 or args.penalizer < 0 or args.net_epochs < 1:
        raise InputError("--bootstrap and --penalizer must not be negative, --net-epochs at least 1")
    if not Path(args.data).is_dir():
        raise InputError(f"--data {args.data}: not a folder")
    cfg = PrognosisConfig(args.data, args.clinical, args.out, folds=args.folds, seed=args.seed,
                          bootstrap=args.bootstrap, penalizer=args.penalizer, cache=args.cache,
                          model_id=args.model_id, limit=args.limit, network=not args.no_network,
                          net_epochs=args.net_epochs)
    folder = train_prognosis(cfg, log=lambda m: print(m, file=sys.stderr))
    print(f"prognosis model written to {folder}")
    return 0


def cmd_prognosis(args) -> int:
    from ..io import atomic_write_text
    from ..prognosis.data import check_age
    from ..prognosis.series import check_case, predict_case

    _check_json_out(args.json)
    age = check_age(args.age)
    check_case(args.case_dir)
    jsonl = getattr(args, "progress", "text") == "jsonl"
    progress = make_progress(getattr(args, "progress", "text"))
    try:
        progress(0.0, "loading the prognosis model")
        model = _load(args.model)
        progress(0.2, "image features and prediction")
        res = predict_case(model, args.case_dir, age, mask=args.mask, progress=scaled(progress, 0.2, 1.0))
    finally:
        progress.close()
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2) + "\n")
    if jsonl:  # the protocol of BrainSpineAILib.background: the result as the done event
        json_line({"event": "done", "result": res})
        return 0
    days, prob = res["survival"]["days"], res["survival"]["probability"]

    def at(d):  # the step function at day d
        return [q for t, q in zip(days, prob) if t <= d][-1]
    print(f"model: {res['model']}   risk {res['risk']:+.3f} ({res['risk_group']} risk group)")
    print("survival probability: " + ", ".join(f"{y} y {at(365 * y):.2f}" for y in (1, 2, 3, 5)))
    p = res["grade"]["probabilities"]
    print(f"grade: II {p['II']:.2f}  III {p['III']:.2f}")
    print("modality weights: " + ", ".join(f"{k} {v:.2f}" for k, v in res["modality_weights"].items()))
    if res["missing_sequences"]:
        print(f"missing sequences (not needed): {', '.join(res['missing_sequences'])}")
    if "time_points" in res:
        for p in res["time_points"]:
            print(f"  day {p['days']:6.0f}  {p['study']}: tumour {p['tumour_volume_ml']:.1f} ml, mean diameter "
                  f"{p['mean_diameter_mm']:.1f} mm, risk {p['risk']:+.3f}, grade III {p['grade_III']:.2f}")
        g = res["growth"]
        if g:
            print(f"growth: VDE {g['vde_mm_per_year']:+.1f} mm/year over {g['interval_days']:.0f} days"
                  + (" (8 mm/year or more: associated with shorter survival, Pallud 2006)"
                     if g["vde_at_least_8_mm_per_year"] else ""))
        print(f"note: {res['time_points_note']}")
    return 0


def cmd_evaluate(args) -> int:
    import numpy as np

    from ..io import atomic_write_text
    from ..prognosis.data import read_clinical
    from ..prognosis.series import predict_case
    from ..prognosis.study import HORIZONS
    from ..prognosis.survival import bootstrap_ci, c_index, grade_auc, km_plot, time_dependent_auc

    _check_json_out(args.json)
    if args.km and not _suffix_ok(args.km, (".png",)):
        raise InputError(f"--km {args.km}: use a .png file")
    if not Path(args.data_dir).is_dir():
        raise InputError(f"{args.data_dir}: not a folder")
    patients = read_clinical(args.clinical, need_outcome=True, need_age=False)
    left = [p.patient for p in patients if p.age is None]
    patients = [p for p in patients if p.age is not None]
    if left:
        print(f"note: left out (unknown age): {', '.join(left)}", file=sys.stderr)
    if len(patients) < 2:
        raise InputError(f"{args.clinical}: fewer than 2 patients with an age")
    progress = make_progress(getattr(args, "progress", "text"))
    model = _load(args.model)
    rows = []
    try:
        for i, p in enumerate(patients):
            progress(i / len(patients), f"patient {i + 1}/{len(patients)}: {p.patient}")
            try:
                r = predict_case(model, Path(args.data_dir) / p.patient, p.age)
            except InputError as exc:
                raise InputError(f"patient {p.patient}: {exc}") from None
            rows.append((p, r))
    finally:
        progress.close()
    t = np.asarray([p.time_days for p, _ in rows])
    e = np.asarray([p.event for p, _ in rows])
    risk = np.asarray([r["risk"] for _, r in rows])
    doc = {"model": model.id, "n_patients": len(rows), "n_deaths": int(e.sum()), "left_out": left,
           "c_index": c_index(t, e, risk) if e.any() else None,
           "c_index_95ci": bootstrap_ci(c_index, (t, e, risk), args.bootstrap) if e.any() else None,
           "time_auc": {f"{h // 365}y": time_dependent_auc(t, e, risk, h) for h in HORIZONS}}
    known = [(p.grade == 3, r["grade"]["probabilities"]["III"]) for p, r in rows if p.grade is not None]
    if known:
        y, pg = np.asarray([k[0] for k in known], dtype=int), np.asarray([k[1] for k in known])
        doc["grade_auc"] = grade_auc(y, pg)
        doc["grade_auc_95ci"] = bootstrap_ci(grade_auc, (y, pg), args.bootstrap)
    doc = json.loads(json.dumps(doc).replace("NaN", "null"))
    doc["patients"] = [{"patient": p.patient, "risk": r["risk"], "risk_group": r["risk_group"],
                        "grade_III": r["grade"]["probabilities"]["III"]} for p, r in rows]
    if args.km:
        km_plot(args.km, t, e, [r["risk_group"] for _, r in rows], f"{model.id} on {Path(args.data_dir).name}")
        doc["km_png"] = str(Path(args.km).resolve())
    if args.json:
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    if getattr(args, "progress", "text") == "jsonl":
        json_line({"event": "done", "result": doc})
        return 0
    ci = doc["c_index_95ci"]
    print(f"model: {model.id}   {len(rows)} patients, {doc['n_deaths']} deaths")
    if doc["c_index"] is not None:
        print(f"C-index {doc['c_index']:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f})   time AUC "
              + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in doc["time_auc"].items()))
    if doc.get("grade_auc") is not None:
        print(f"grade AUC {doc['grade_auc']:.3f}")
    return 0


def add_train_parser(tsub) -> None:
    p = tsub.add_parser("prognosis", help="survival (Cox) and grade models of lower-grade glioma: cross-validated "
                                          "comparison with age alone, then the best refitted on all patients")
    p.add_argument("--data", required=True, help="folder of patient folders (flair.nii.gz, mask.nii.gz, ...)")
    p.add_argument("--clinical", required=True, help="clinical CSV (patient, age, grade, time_days, event)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the 95%% intervals")
    p.add_argument("--penalizer", type=float, default=0.5, help="ridge strength of the radiomics Cox models")
    p.add_argument("--cache", help="folder to cache each patient's features in")
    p.add_argument("--no-network", action="store_true", help="leave the multi-modal network out of the comparison")
    p.add_argument("--net-epochs", type=int, default=40, help="full-batch training steps of the network")
    p.add_argument("--limit", type=int, default=0, help="use the first N patients (quick runs)")
    p.add_argument("--model-id", help="id in the model card (default: the --out folder name)")
    _overwrite_arg(p)
    p.set_defaults(func=cmd_train, init_model=None)


def add_parsers(sub) -> None:
    p = sub.add_parser("prognosis", help="survival risk, survival curve and grade of one lower-grade glioma patient")
    p.add_argument("case_dir", metavar="CASE_DIR", help="patient folder: flair.nii.gz, mask.nii.gz (t1, t1ce optional); or a folder of "
                                                 "such study folders, one per time point, named by date (YYYY-MM-DD) "
                                                 "or dated by timepoints.csv (study, days): the latest study's "
                                                 "prognosis plus tumour growth per time point")
    p.add_argument("--age", type=float, help="age in years at diagnosis (required)")
    p.add_argument("--mask", help="tumour mask file to use instead of CASE_DIR/mask.nii.gz: binary, or the labelmap "
                                  "of `brainspineai segment` (its whole tumour is used)")
    p.add_argument("--model", help=f"model id, folder or URL (default {DEFAULT_PROGNOSIS_ID})")
    p.add_argument("--json", metavar="OUT", help="write the result as JSON")
    add_progress_arg(p)
    p.set_defaults(func=cmd_prognosis)
    e = sub.add_parser("evaluate-prognosis", help="C-index, time AUC, grade AUC and Kaplan-Meier of a prognosis "
                                                  "model on patients with known outcome")
    e.add_argument("data_dir", metavar="DATA_DIR")
    e.add_argument("--clinical", required=True, help="clinical CSV with the outcomes")
    e.add_argument("--model", help=f"model id, folder or URL (default {DEFAULT_PROGNOSIS_ID})")
    e.add_argument("--json", metavar="OUT")
    e.add_argument("--km", metavar="PNG", help="Kaplan-Meier curves by predicted risk group")
    e.add_argument("--bootstrap", type=int, default=1000)
    add_progress_arg(e)
    e.set_defaults(func=cmd_evaluate)
