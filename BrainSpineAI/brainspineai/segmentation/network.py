"""CLIP-guided 3D U-Net for brain tumour segmentation (WT, TC, ET), multi-level fusion.

Follows the multi-level CLIP + 3D U-Net design described for BraTS 2020 (pixel level in
:mod:`brainspineai.segmentation.prepare`; feature and semantic levels here):

- Feature level: a 3D U-Net of MONAI residual units (``monai.networks.blocks.ResidualUnit``,
  instance norm, PReLU) each followed by squeeze-and-excitation channel attention
  (``ChannelSELayer``; Hu et al. 2018), attention gates on the skips
  (``monai.networks.nets.attentionunet.AttentionBlock``; Oktay et al. 2018), and deep
  supervision heads on the coarser decoder levels.
- Semantic level (each part switchable, all off with ``semantic=False``):
  (a) 3D-2D bridge: the axial, coronal and sagittal slices through the foreground centroid
      of the whole prepared volume go through CLIP's image encoder; the three embeddings
      are fused (concatenation + MLP) into a FiLM scale and shift of the bottleneck;
  (b) text gate: a report text (or the default per-region descriptions, averaged) goes
      through CLIP's text encoder; a sigmoid gate re-weights the channels of every decoder
      level;
  (c) semantic attention: text-conditioned spatial attention maps for TC and ET refine the
      final logits of those regions.
- CLIP (open_clip) is frozen. ``clip="small-random"`` builds a small randomly initialised
  CLIP locally (no download; deterministic, seed 0); otherwise an open_clip ``hf-hub:`` name
  or ``ARCH/PRETRAINED`` where PRETRAINED is an open_clip tag or a local checkpoint file.
  CLIP weights are saved inside the model's weights.

Input ``(B, C, z, y, x)`` float32 (C = number of sequences, prepared), output logits
``(B, 3, z, y, x)`` for sigmoid WT, TC, ET; in training mode also the deep supervision
logits at 1/2 and 1/4 resolution.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ModelError

ARCHITECTURE = "clipunet3d"
SMALL_CLIP = {"embed_dim": 64,
              "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16,
                             "mlp_ratio": 2.0},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                           "mlp_ratio": 2.0}}
REGION_TEXTS = (
    "whole tumour: glioma with surrounding peritumoral oedema, hyperintense on FLAIR",
    "tumour core: necrotic and non-enhancing tumour core of the glioma",
    "enhancing tumour: contrast-enhancing rim of the glioma, bright on T1 with contrast",
)
TRAIN_TEXTS = (
    "brain MRI showing a glioma with oedema, a necrotic core and an enhancing rim",
    "high-grade glioma with ring enhancement and peritumoral oedema",
    "glioblastoma: enhancing tumour, necrosis and surrounding FLAIR hyperintensity",
    "brain tumour with mass effect, oedema and contrast enhancement",
)


@dataclass
class SegmenterConfig:
    """Network settings, stored in the model card (``network``)."""

    in_channels: int = 2
    channels: tuple = (16, 32, 64, 128)
    semantic: bool = True
    image_bridge: bool = True
    text_gate: bool = True
    attention: bool = True
    clip: str = "small-random"
    deep_supervision: tuple = (0.5, 0.25)

    def to_json(self) -> dict:
        d = asdict(self)
        d["channels"], d["deep_supervision"] = list(self.channels), list(self.deep_supervision)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "SegmenterConfig":
        d = dict(d)
        d["channels"], d["deep_supervision"] = tuple(d["channels"]), tuple(d.get("deep_supervision", (0.5, 0.25)))
        return cls(**d)

    @property
    def use_bridge(self) -> bool:
        return self.semantic and self.image_bridge

    @property
    def use_gate(self) -> bool:
        return self.semantic and self.text_gate

    @property
    def use_attention(self) -> bool:
        return self.semantic and self.attention


def build_clip(spec: str, load_weights: bool = True):
    """(open_clip model, tokenizer, image size) for ``spec``; the model is frozen, eval mode.
    ``load_weights=False`` builds the architecture only (the weights then come from a saved
    segmenter; nothing is downloaded for a tag).

    :raises ModelError: an unknown tag or unreadable checkpoint."""
    import open_clip
    import torch

    try:
        if spec == "small-random":
            state = torch.random.get_rng_state()
            torch.manual_seed(0)
            try:
                model = open_clip.CLIP(embed_dim=SMALL_CLIP["embed_dim"], vision_cfg=SMALL_CLIP["vision_cfg"],
                                       text_cfg=SMALL_CLIP["text_cfg"])
            finally:
                torch.random.set_rng_state(state)
            tokenizer = lambda texts: open_clip.tokenize(texts, context_length=SMALL_CLIP["text_cfg"]["context_length"])  # noqa: E731
            size = SMALL_CLIP["vision_cfg"]["image_size"]
        else:
            if spec.startswith("hf-hub:"):
                model = open_clip.create_model(spec, load_weights=load_weights)
                tokenizer = open_clip.get_tokenizer(spec)
            else:
                arch, _, pretrained = spec.partition("/")
                model = open_clip.create_model(arch, pretrained=(pretrained or None) if load_weights else None)
                tokenizer = open_clip.get_tokenizer(arch)
            size = getattr(model.visual, "image_size", 224)
            size = size[0] if isinstance(size, (tuple, list)) else int(size)
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        raise ModelError(f"CLIP '{spec}' could not be built ({exc}); give small-random, an open_clip "
                         f"ARCH/TAG, ARCH/LOCAL_CHECKPOINT or hf-hub:NAME") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer, int(size)


def _blocks():
    from monai.networks.blocks import ChannelSELayer, ResidualUnit
    return ResidualUnit, ChannelSELayer


def _res_se(cin: int, cout: int, stride: int = 1):
    import torch.nn as nn

    ResidualUnit, ChannelSELayer = _blocks()
    return nn.Sequential(ResidualUnit(3, cin, cout, strides=stride, subunits=2, norm="INSTANCE", act="PRELU"),
                         ChannelSELayer(3, cout, r=4))


def _module_class():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from monai.networks.nets.attentionunet import AttentionBlock

    class ClipUNet3D(nn.Module):
        def __init__(self, cfg: SegmenterConfig, load_clip_weights: bool = True):
            super().__init__()
            self.cfg = cfg
            ch = list(cfg.channels)
            self.encoders = nn.ModuleList([_res_se(cfg.in_channels, ch[0])] +
                                          [_res_se(ch[i - 1], ch[i], stride=2) for i in range(1, len(ch))])
            self.ups = nn.ModuleList([nn.ConvTranspose3d(ch[i], ch[i - 1], 2, stride=2) for i in range(len(ch) - 1, 0, -1)])
            self.attn_gates = nn.ModuleList([AttentionBlock(3, f_int=max(4, ch[i - 1] // 2), f_g=ch[i - 1], f_l=ch[i - 1])
                                        for i in range(len(ch) - 1, 0, -1)])
            self.decoders = nn.ModuleList([_res_se(2 * ch[i - 1], ch[i - 1]) for i in range(len(ch) - 1, 0, -1)])
            self.head = nn.Conv3d(ch[0], 3, 1)
            n_ds = min(len(cfg.deep_supervision), len(ch) - 2)
            self.ds_heads = nn.ModuleList([nn.Conv3d(ch[i], 3, 1) for i in range(1, 1 + n_ds)])
            self.clip_model = None
            if cfg.semantic:
                clip, self._tokenizer, self.clip_size = build_clip(cfg.clip, load_clip_weights)
                self.clip_model = clip
                emb = int(clip.text_projection.shape[1]) if getattr(clip, "text_projection", None) is not None \
                    else int(clip.encode_text(self._tokenizer(["x"])).shape[-1])
                self.embed_dim = emb
                if cfg.image_bridge:
                    self.bridge = nn.Sequential(nn.Linear(3 * emb, 2 * ch[-1]), nn.GELU(), nn.Linear(2 * ch[-1], 2 * ch[-1]))
                    nn.init.zeros_(self.bridge[-1].weight)
                    nn.init.zeros_(self.bridge[-1].bias)
                if cfg.text_gate:
                    self.text_gates = nn.ModuleList([nn.Linear(emb, ch[i - 1]) for i in range(len(ch) - 1, 0, -1)])
                    for g in self.text_gates:  # start near identity: sigmoid(3) ~ 0.95
                        nn.init.normal_(g.weight, std=0.05)
                        nn.init.constant_(g.bias, 3.0)
                if cfg.attention:
                    self.att_query = nn.Linear(emb, 2 * ch[0])
                    self.att_key = nn.Conv3d(ch[0], ch[0], 1)
                    self.att_scale = nn.Parameter(torch.ones(2))

        # ---- semantic inputs -------------------------------------------------------
        def _clip_device(self):
            return next(self.clip_model.parameters()).device

        @torch.no_grad()
        def encode_text(self, texts):
            """CLIP text embeddings ``(len(texts), E)``, L2-normalised."""
            tok = self._tokenizer(list(texts)).to(self._clip_device())
            return F.normalize(self.clip_model.encode_text(tok).float(), dim=-1)

        @torch.no_grad()
        def text_embedding(self, report: str | None = None):
            """``(E,)``: the report's embedding, or the mean of :data:`REGION_TEXTS` embeddings."""
            if self.clip_model is None:
                return None
            if report:
                return self.encode_text([report])[0]
            return F.normalize(self.encode_text(REGION_TEXTS).mean(0), dim=-1)

        @torch.no_grad()
        def image_embedding(self, volume):
            """``(3E,)`` from the axial, coronal and sagittal slices through the foreground
            centroid of ``volume`` ``(C, z, y, x)`` (tensor, prepared)."""
            if self.clip_model is None:
                return None
            v = volume.float()
            fg = (v.abs().sum(0) > 0)
            if fg.any():
                c = [int(i.float().mean().round()) for i in torch.nonzero(fg, as_tuple=True)]
            else:
                c = [s // 2 for s in v.shape[1:]]
            rgb = v[[0, min(1, v.shape[0] - 1), min(2, v.shape[0] - 1) if v.shape[0] > 2 else 0]]
            slices = [rgb[:, c[0], :, :], rgb[:, :, c[1], :], rgb[:, :, :, c[2]]]
            batch = torch.stack([F.interpolate(s[None], size=(self.clip_size, self.clip_size), mode="bilinear",
                                               align_corners=False)[0] for s in slices]).to(self._clip_device())
            feats = F.normalize(self.clip_model.encode_image(batch).float(), dim=-1)
            return feats.reshape(-1)

        # ---- forward ---------------------------------------------------------------
        def channel_gates(self, text_emb):
            """Per decoder level channel gates ``[(B, C_l)]`` (all ones without the text gate)."""
            if not self.cfg.use_gate or text_emb is None:
                return None
            return [torch.sigmoid(g(text_emb)) for g in self.text_gates]

        def forward(self, x, image_emb=None, text_emb=None):
            skips = []
            h = x
            for enc in self.encoders:
                h = enc(h)
                skips.append(h)
            if self.cfg.use_bridge and image_emb is not None:
                gamma, beta = self.bridge(image_emb.to(h.dtype)).chunk(2, dim=-1)
                h = h * (1 + gamma[..., None, None, None]) + beta[..., None, None, None]
            gates = self.channel_gates(text_emb.to(h.dtype) if text_emb is not None else None)
            feats = []
            for k, (up, gate, dec) in enumerate(zip(self.ups, self.attn_gates, self.decoders)):
                skip = skips[-2 - k]
                g = up(h)
                g = g[..., :skip.shape[2], :skip.shape[3], :skip.shape[4]]
                h = dec(torch.cat([gate(g, skip), g], dim=1))
                if gates is not None:
                    h = h * gates[k][..., None, None, None]
                feats.append(h)
            logits = self.head(h)
            if self.cfg.use_attention and text_emb is not None:
                q = self.att_query(text_emb.to(h.dtype)).view(h.shape[0], 2, -1)   # (B, 2, C0)
                kmap = self.att_key(h)                                               # (B, C0, z, y, x)
                att = torch.sigmoid(torch.einsum("brc,bczyx->brzyx", q, kmap) / np.sqrt(h.shape[1]))
                scale = self.att_scale.view(1, 2, 1, 1, 1)
                refined = logits[:, 1:3] + scale * (2 * att - 1)
                logits = torch.cat([logits[:, :1], refined], dim=1)
            if not self.training:
                return logits
            # deep supervision from the coarser decoder levels (finest first after the final)
            ds = [head(feats[-2 - i]) for i, head in enumerate(self.ds_heads)]
            return [logits] + ds

    return ClipUNet3D


_CLS = None


def build_segmenter(cfg: SegmenterConfig, load_clip_weights: bool = True):
    """A ``ClipUNet3D`` ``torch.nn.Module`` for ``cfg``; ``load_clip_weights=False`` when the
    weights are loaded afterwards from a saved segmenter (no CLIP download)."""
    global _CLS
    if _CLS is None:
        _CLS = _module_class()
    return _CLS(cfg, load_clip_weights)


def count_parameters(net, trainable_only: bool = False) -> int:
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only))
