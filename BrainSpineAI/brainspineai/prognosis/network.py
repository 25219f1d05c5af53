"""The multi-modal prognosis network (torch): per-sequence slice encoders, modality attention
over T1 / T1c / FLAIR, a bidirectional GRU over the slice series, a Cox head and a grade head.

Input per patient (:func:`patient_tensor`): for each sequence, ``N_SLICES`` axial slices
through the tumour (evenly spaced over the slices the mask covers), each cropped to the
tumour's in-plane bounding box (+ 15% margin, square) and resized to ``CROP`` x ``CROP``,
with the mask as a second channel: float32 ``(3, N_SLICES, 2, CROP, CROP)``, intensities
z-scored per sequence inside the head (voxels > 0), and ``available`` bool ``(3,)``.

Network (:class:`PrognosisNet`): a small CNN per sequence gives a slice embedding; modality
attention (additive attention, Bahdanau et al. 2015; as in attention-based multi-modal
fusion of MRI sequences) weighs the available sequences per slice (a missing sequence gets
weight 0, and sequences are dropped at random in training so the weights cope with it); a
bidirectional GRU runs over the slice series and is mean-pooled; the Cox head (with the
standardised age) gives the log relative hazard, trained with the negative Cox partial
log-likelihood (Breslow ties; as in DeepSurv, Katzman et al. 2018), and the grade head a
logit trained with binary cross-entropy. Trained full-batch on CPU in about a minute.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .data import SEQUENCES

N_SLICES = 8
CROP = 32


@dataclass
class NetConfig:
    width: int = 6
    hidden: int = 24
    epochs: int = 40
    lr: float = 3e-3
    weight_decay: float = 1e-3
    grade_weight: float = 0.5
    drop_p: float = 0.3  # chance of dropping each of T1 / T1c in a training step
    seed: int = 0


def patient_tensor(case: dict):
    """``(x float32 (3, N_SLICES, 2, CROP, CROP), available bool (3,))`` of a loaded case
    (:func:`.data.load_case`); needs the mask."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    import torch.nn.functional as F

    m = sitk.GetArrayFromImage(case["mask"]) > 0  # (z, y, x)
    zs = np.where(m.any(axis=(1, 2)))[0]
    ys, xs = np.where(m.any(axis=0))
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min(), 8) * 0.575 + 1
    idx = np.round(np.linspace(zs.min(), zs.max(), N_SLICES)).astype(int)
    H, W = m.shape[1:]
    y0, y1 = int(np.floor(cy - half)), int(np.ceil(cy + half))
    x0, x1 = int(np.floor(cx - half)), int(np.ceil(cx + half))

    def crop(vol):
        pad = np.zeros((len(idx), y1 - y0, x1 - x0), dtype=np.float32)
        sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
        pad[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = vol[idx][:, sy0:sy1, sx0:sx1]
        t = torch.from_numpy(pad)[:, None]
        return F.interpolate(t, size=(CROP, CROP), mode="bilinear", align_corners=False)[:, 0]

    mask_c = crop(m.astype(np.float32))
    out = torch.zeros(len(SEQUENCES), N_SLICES, 2, CROP, CROP)
    avail = torch.zeros(len(SEQUENCES), dtype=torch.bool)
    for i, s in enumerate(SEQUENCES):
        img = case["images"].get(s)
        if img is None:
            continue
        a = sitk.GetArrayFromImage(img).astype(np.float32)
        fg = a[a > 0]
        if fg.size < 10:
            continue
        a = (a - fg.mean()) / (fg.std() + 1e-6)
        out[i, :, 0] = crop(a)
        out[i, :, 1] = mask_c
        avail[i] = True
    return out, avail


def _build(cfg: NetConfig):
    import torch
    from torch import nn

    w, h = cfg.width, cfg.hidden

    def encoder():
        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(1, o), nn.ReLU(), nn.MaxPool2d(2)]
        return nn.Sequential(*block(2, w), *block(w, 2 * w), *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4 * w, h))

    class PrognosisNet(nn.Module):
        """``forward(x (B, 3, S, 2, H, W), available bool (B, 3), age_z (B,))`` ->
        ``(risk (B,), grade_logit (B,), modality_weights (B, 3))``."""

        def __init__(self):
            super().__init__()
            self.encoders = nn.ModuleList([encoder() for _ in SEQUENCES])
            self.att = nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1))
            self.gru = nn.GRU(h, h, batch_first=True, bidirectional=True)
            self.risk = nn.Linear(2 * h + 1, 1)
            self.grade = nn.Linear(2 * h, 1)

        def forward(self, x, available, age_z):
            B, M, S = x.shape[:3]
            emb = torch.stack([self.encoders[m](x[:, m].reshape(B * S, *x.shape[3:])).reshape(B, S, -1)
                               for m in range(M)], dim=2)  # (B, S, M, h)
            score = self.att(emb).squeeze(-1)  # (B, S, M)
            score = score.masked_fill(~available[:, None, :], float("-inf"))
            a = torch.softmax(score, dim=-1)
            fused = (a.unsqueeze(-1) * emb).sum(dim=2)  # (B, S, h)
            seq, _ = self.gru(fused)
            z = seq.mean(dim=1)
            risk = self.risk(torch.cat([z, age_z[:, None]], dim=1)).squeeze(-1)
            return risk, self.grade(z).squeeze(-1), a.mean(dim=1)

    return PrognosisNet()


def cox_loss(risk, time, event):
    """Negative Cox partial log-likelihood (Breslow), mean over deaths. ``risk`` (n,) log hazards."""
    import torch

    order = torch.argsort(time, descending=True)
    r, e = risk[order], event[order]
    log_cum = torch.logcumsumexp(r, dim=0)  # log sum over the risk set (time >= t_i)
    return -((r - log_cum) * e).sum() / e.sum().clamp(min=1)


def train_network(X, avail, age_z, time, event, grade, cfg: NetConfig):
    """Train full-batch on CPU. ``X`` (n, 3, S, 2, H, W), ``avail`` (n, 3) bool, ``age_z`` (n,),
    ``time`` days, ``event`` 0/1, ``grade`` 2/3 or NaN. :returns: the network (eval mode)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)
    net = _build(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    t = torch.as_tensor(time, dtype=torch.float32)
    e = torch.as_tensor(event, dtype=torch.float32)
    g = torch.as_tensor(grade, dtype=torch.float32)
    known = ~torch.isnan(g)
    az = torch.as_tensor(age_z, dtype=torch.float32)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs):
        net.train()
        av = avail.clone()
        drop = torch.rand(av.shape, generator=gen) < cfg.drop_p
        drop[:, SEQUENCES.index("flair")] = False  # FLAIR always kept
        av &= ~drop
        risk, glogit, _ = net(X, av, az)
        loss = cox_loss(risk, t, e)
        if known.any():
            loss = loss + cfg.grade_weight * F.binary_cross_entropy_with_logits(glogit[known], (g[known] == 3).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net


def run_network(net, X, avail, age_z):
    """``(risk (n,), grade_logit (n,), modality_weights (n, 3))`` as numpy, no gradients."""
    import torch

    with torch.no_grad():
        r, g, a = net(X, avail, torch.as_tensor(age_z, dtype=torch.float32))
    return r.numpy().astype("float64"), g.numpy().astype("float64"), a.numpy().astype("float64")


def breslow(lp, time, event):
    """Breslow baseline survival at the distinct death times: ``(days list, S0 list)``."""
    import numpy as np

    lp, t, e = (np.asarray(a, dtype=float) for a in (lp, time, event))
    days = np.unique(t[e == 1])
    h, out = 0.0, []
    for d in days:
        h += ((t == d) & (e == 1)).sum() / np.exp(lp[t >= d]).sum()
        out.append(float(np.exp(-h)))
    return days.tolist(), out


def save_state(net) -> bytes:
    """The network's weights as safetensors bytes."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()})


def load_state(data: bytes, cfg: dict):
    """Rebuild the network of ``cfg`` (a :class:`NetConfig` as dict) from safetensors bytes."""
    from safetensors.torch import load

    net = _build(NetConfig(**cfg))
    net.load_state_dict(load(data))
    net.eval()
    return net


def config_dict(cfg: NetConfig) -> dict:
    return asdict(cfg)


def cohort_tensors(data_dir, patients, spacing, cache_dir=None):
    """Stacked :func:`patient_tensor` of every patient: ``(X (n, 3, S, 2, CROP, CROP), avail (n, 3))``,
    each cached as safetensors in ``cache_dir`` (keyed by patient, spacing and crop)."""
    from pathlib import Path

    import torch
    from safetensors.torch import load_file, save_file

    from .data import load_case

    xs, avs = [], []
    for p in patients:
        cache = Path(cache_dir) / f"{p.patient}-net{N_SLICES}x{CROP}-{'x'.join(map(str, spacing))}.safetensors" \
            if cache_dir else None
        if cache is not None and cache.is_file():
            d = load_file(str(cache))
            x, av = d["x"], d["available"].bool()
        else:
            x, av = patient_tensor(load_case(Path(data_dir) / p.patient, spacing))
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                save_file({"x": x.contiguous(), "available": av.to(torch.uint8)}, str(cache))
        xs.append(x)
        avs.append(av)
    return torch.stack(xs), torch.stack(avs)


def cross_validate_network(X, avail, age, time, event, grade, splits, cfg: NetConfig, log=None):
    """Out-of-fold ``{"risk" (n,), "p_grade" (n,) grade III probability, "group" (n,) "high" /
    "low" against the training fold's median risk, "modality_weights" (n, 3)}`` on ``splits``
    (the folds of :func:`.study.folds`); age standardised inside each training fold."""
    import numpy as np

    age = np.asarray(age, dtype=float)
    n = len(age)
    risk, pg, mw = np.zeros(n), np.zeros(n), np.zeros((n, len(SEQUENCES)))
    group = np.empty(n, dtype=object)
    for k, (tr, te) in enumerate(splits):
        mu, sd = age[tr].mean(), age[tr].std() + 1e-9
        net = train_network(X[tr], avail[tr], (age[tr] - mu) / sd, np.asarray(time)[tr], np.asarray(event)[tr],
                            np.asarray(grade, dtype=float)[tr], cfg)
        r, g, a = run_network(net, X[te], avail[te], (age[te] - mu) / sd)
        risk[te], pg[te], mw[te] = r, 1 / (1 + np.exp(-g)), a
        cut = float(np.median(run_network(net, X[tr], avail[tr], (age[tr] - mu) / sd)[0]))
        group[te] = np.where(r > cut, "high", "low")
        if log:
            log(f"network fold {k + 1}/{len(splits)} done")
    return {"risk": risk, "p_grade": pg, "group": group.tolist(), "modality_weights": mw}
