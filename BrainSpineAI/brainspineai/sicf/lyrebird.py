"""Lyrebird Optimization Algorithm and the SICF wrapper feature selection.

Source: Dehghani M., Bektemyssova G., Montazeri Z., Shaikemelev G., Malik O. P., Dhiman G.,
"Lyrebird Optimization Algorithm: a new bio-inspired metaheuristic algorithm for solving
optimization problems", Biomimetics 8(6):507, 2023 (Eqs. 1-8 and its Algorithm 1), written
here directly in numpy (no optimisation library). SICF (Shi et al., Front. Med. 2025) uses it
as a binary wrapper around its random forest: :func:`select_features`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .forest import make_forest


@dataclass
class LOAResult:
    """Outcome of :func:`lyrebird_optimize`: ``position`` float64 (D,) of the best lyrebird,
    its objective value ``fitness``, ``history`` (the best objective value after the
    initialisation, then after each iteration: ``iterations + 1`` values) and the number
    of objective ``evaluations`` (``population x (iterations + 1)``)."""

    position: np.ndarray
    fitness: float
    history: list = field(default_factory=list)
    evaluations: int = 0


def lyrebird_optimize(objective, lb, ub, population: int = 10, iterations: int = 10, seed: int = 0,
                      maximize: bool = False) -> LOAResult:
    """Optimise ``objective`` over the box ``[lb, ub]`` with the Lyrebird Optimization
    Algorithm (Dehghani et al. 2023).

    Lyrebirds start uniformly in the box (Eq. 2). Each iteration ``t = 1..iterations``, every
    lyrebird ``i`` (position ``x_i``, objective ``F_i``) takes one of two phases with
    probability 1/2 each (Eq. 3), clipped to the box:

    * escape (exploration, Eqs. 4-6): its *safe areas* are the members better than it plus
      the best lyrebird so far; one is drawn at random (``SSA``) and
      ``x_new = x_i + r * (SSA - I * x_i)``, ``r ~ U(0, 1)`` and ``I ~ {1, 2}`` per dimension;
    * hiding (exploitation, Eqs. 7-8): ``x_new = x_i + (1 - 2 r) * (ub - lb) / t``;

    ``x_new`` replaces ``x_i`` only if it is better (greedy); the best lyrebird is saved
    after each iteration. Every random number comes from ``numpy.random.default_rng(seed)``,
    so a seed gives one result.

    :param objective: callable(float64 (D,)) -> float.
    :param lb, ub: lower and upper bounds, float (D,), ``lb < ub``.
    :param maximize: maximise instead of minimise.
    :returns: :class:`LOAResult`.
    :raises ValueError: population below 2, no iteration, or bounds that do not form a box.
    """
    lb, ub = np.asarray(lb, np.float64).ravel(), np.asarray(ub, np.float64).ravel()
    if population < 2 or iterations < 1:
        raise ValueError(f"LOA needs a population of at least 2 and at least 1 iteration; got {population} x {iterations}")
    if lb.shape != ub.shape or lb.size == 0 or not np.all(lb < ub):
        raise ValueError("LOA bounds: lb and ub must have the same length (at least 1) and lb < ub everywhere")
    sign = -1.0 if maximize else 1.0  # minimise sign * objective
    rng = np.random.default_rng(seed)
    n, d = int(population), lb.size
    x = lb + rng.random((n, d)) * (ub - lb)
    f = np.array([sign * float(objective(xi.copy())) for xi in x])
    evaluations = n
    b = int(np.argmin(f))
    best_x, best_f = x[b].copy(), float(f[b])
    history = [best_f]
    for t in range(1, int(iterations) + 1):
        for i in range(n):
            if rng.random() <= 0.5:  # escape towards a safer area
                safer = np.flatnonzero(f < f[i])
                k = int(rng.integers(len(safer) + 1))
                ssa = best_x if k == len(safer) else x[safer[k]]
                new = x[i] + rng.random(d) * (ssa - rng.integers(1, 3, d) * x[i])
            else:  # hide nearby, in a neighbourhood that shrinks with t
                new = x[i] + (1.0 - 2.0 * rng.random(d)) * (ub - lb) / t
            new = np.clip(new, lb, ub)
            value = sign * float(objective(new.copy()))
            evaluations += 1
            if value < f[i]:
                x[i], f[i] = new, value
        b = int(np.argmin(f))
        if f[b] < best_f:
            best_x, best_f = x[b].copy(), float(f[b])
        history.append(best_f)
    return LOAResult(position=best_x, fitness=sign * best_f, history=[sign * h for h in history],
                     evaluations=evaluations)


def transfer(position) -> np.ndarray:
    """Binary mask from a continuous position: sigmoid transfer, kept where sigmoid(x) > 0.5."""
    return 1.0 / (1.0 + np.exp(-np.asarray(position, dtype=np.float64))) > 0.5


def select_features(x, y, population: int, iterations: int, penalty: float = 0.01, folds: int = 5,
                    seed: int = 0, candidates=None, progress=None) -> tuple[np.ndarray, dict]:
    """LOA wrapper feature selection (SICF step 6): :func:`lyrebird_optimize` over positions
    in ``[-4, 4]^D`` (D = number of candidate columns), mapped to a mask by :func:`transfer`;
    fitness (maximised) = ``folds``-fold stratified cross-validated accuracy of
    :func:`brainspineai.sicf.forest.make_forest` on the kept columns minus ``penalty`` x the
    fraction of columns kept (an empty mask scores 0). Progress events:
    ``{"event": "progress", "stage": "loa", "fraction", "message", "evaluations", "of", "eta_s"}``.

    :param x: float32 (N, D) training features; ``y``: int (N,) labels.
    :param candidates: bool (D,) columns that may be selected (default all).
    :returns: ``(mask, info)``: bool (D,) and ``{"cv_accuracy", "fitness", "n_kept",
        "n_candidates", "evaluations", "seconds"}``.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x = np.asarray(x, np.float32)
    cand = np.ones(x.shape[1], bool) if candidates is None else np.asarray(candidates, bool)
    cols = np.flatnonzero(cand)
    n_min = int(np.bincount(y).min())
    cv = StratifiedKFold(n_splits=max(2, min(folds, n_min)), shuffle=True, random_state=seed)
    cache, count = {}, [0]
    t0 = time.time()
    total = population * (iterations + 1)

    def accuracy(sub_mask):
        key = np.packbits(sub_mask).tobytes()
        if key not in cache:
            cache[key] = float(cross_val_score(make_forest(seed), x[:, cols[sub_mask]], y, cv=cv).mean()) \
                if sub_mask.any() else 0.0
        return cache[key]

    def fitness(position):
        sub = transfer(position)
        count[0] += 1
        f = accuracy(sub) - penalty * sub.mean()
        if progress and count[0] % max(1, population // 2) == 0:
            rate = count[0] / max(time.time() - t0, 1e-6)
            progress({"event": "progress", "stage": "loa", "fraction": round(0.35 + 0.6 * min(count[0] / total, 1), 3),
                      "message": f"Lyrebird selection {count[0]}/{total} fitness evaluations", "evaluations": count[0],
                      "of": total, "eta_s": round(max(total - count[0], 0) / rate, 1)})
        return f

    best = lyrebird_optimize(fitness, [-4.0] * len(cols), [4.0] * len(cols), population, iterations, seed,
                             maximize=True)
    sub = transfer(best.position)
    mask = np.zeros(x.shape[1], bool)
    mask[cols[sub]] = True
    return mask, {"cv_accuracy": accuracy(sub), "fitness": float(best.fitness), "n_kept": int(mask.sum()),
                  "n_candidates": int(len(cols)), "evaluations": count[0], "seconds": round(time.time() - t0, 2)}
