#!/usr/bin/env python3
"""Regenerate the BrainSpineAI icons (128x128 PNG) with Pillow.

Run from anywhere:  python3 Resources/make_icons.py
Writes:
  Resources/BrainSpineAI.png                                   extension icon (brain + spine)
  BrainSpineAI/Resources/Icons/BrainSpineAI.png                classify (brain + heatmap spot)
  BrainSpineAISegment/Resources/Icons/BrainSpineAISegment.png  segment (brain + WT/TC/ET rings)
  BrainSpineAITrain/Resources/Icons/BrainSpineAITrain.png      train (spine column + cycle arrow)
Shapes are drawn at 4x and downsampled for anti-aliasing.
"""
import math
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw

SIZE = 128
SCALE = 4
S = SIZE * SCALE
ROOT = Path(__file__).resolve().parent.parent

NAVY = (28, 46, 84, 255)
BRAIN = (244, 176, 190, 255)
BRAIN_LINE = (150, 60, 90, 255)
BONE = (236, 228, 205, 255)
BONE_LINE = (120, 100, 70, 255)
DISC = (90, 160, 220, 255)
WT, TC, ET = (60, 190, 90, 255), (250, 210, 40, 255), (225, 45, 45, 255)


def p(x, y):
    """Icon coordinates (0..128) to canvas pixels."""
    return x * SCALE, y * SCALE


def box(x0, y0, x1, y1):
    return [*p(x0, y0), *p(x1, y1)]


def canvas():
    img = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle(box(2, 2, 126, 126), radius=22 * SCALE, fill=NAVY)
    return img, d


def brain(img, cx, cy, w, h):
    """Lateral view of a brain: a union of lobes, an outline, a few gyri and the cerebellum."""
    d = ImageDraw.Draw(img)
    lw = 3 * SCALE
    lobes = [(-0.55, 0.05, 0.45), (-0.25, -0.30, 0.50), (0.20, -0.32, 0.50),
             (0.55, -0.02, 0.45), (0.25, 0.25, 0.45), (-0.25, 0.28, 0.45)]

    def lobe_box(dx, dy, r, grow=0.0):
        x, y = cx + dx * w / 2, cy + dy * h / 2
        rx, ry = r * w / 2 + grow, r * h / 2 + grow
        return box(x - rx, y - ry, x + rx, y + ry)

    # cerebellum and brain stem behind the cerebrum
    d.ellipse(box(cx + 0.18 * w, cy + 0.18 * h, cx + 0.52 * w, cy + 0.48 * h), fill=BRAIN, outline=BRAIN_LINE, width=lw)
    d.rounded_rectangle(box(cx + 0.02 * w, cy + 0.25 * h, cx + 0.16 * w, cy + 0.62 * h), radius=3 * SCALE,
                        fill=BRAIN, outline=BRAIN_LINE, width=lw)
    for dx, dy, r in lobes:  # outline: lobes grown by the line width, then filled lobes on top
        d.ellipse(lobe_box(dx, dy, r, grow=1.5), fill=BRAIN_LINE)
    mask = Image.new("L", img.size, 0)
    md = ImageDraw.Draw(mask)
    for dx, dy, r in lobes:
        d.ellipse(lobe_box(dx, dy, r), fill=BRAIN)
        md.ellipse(lobe_box(dx, dy, r, grow=-2.5), fill=255)
    # gyri, clipped to the inside of the cerebrum
    gyri = Image.new("RGBA", img.size, (0, 0, 0, 0))
    g = ImageDraw.Draw(gyri)
    gl = int(2.2 * SCALE)
    g.arc(box(cx - 0.45 * w, cy - 0.30 * h, cx - 0.05 * w, cy + 0.10 * h), 200, 340, fill=BRAIN_LINE, width=gl)
    g.arc(box(cx - 0.05 * w, cy - 0.35 * h, cx + 0.40 * w, cy + 0.10 * h), 200, 340, fill=BRAIN_LINE, width=gl)
    g.arc(box(cx - 0.50 * w, cy - 0.05 * h, cx + 0.05 * w, cy + 0.45 * h), 250, 20, fill=BRAIN_LINE, width=gl)
    g.line([*p(cx - 0.05 * w, cy - 0.05 * h), *p(cx + 0.35 * w, cy + 0.12 * h)], fill=BRAIN_LINE, width=gl)
    gyri.putalpha(ImageChops.darker(gyri.getchannel("A"), mask))
    img.alpha_composite(gyri)


def spine(d, x, y0, y1, w, n=5, curve=6):
    """A vertebral column: n vertebral bodies with blue discs, slightly curved."""
    step = (y1 - y0) / n
    for i in range(n):
        t = (i + 0.5) / n
        cx = x + curve * math.sin(math.pi * t)
        top, bot = y0 + i * step + 1.5, y0 + (i + 1) * step - 1.5
        if i:
            d.rounded_rectangle(box(cx - w * 0.42, top - 2.2, cx + w * 0.42, top + 0.6), radius=SCALE, fill=DISC)
        # spinous process
        d.polygon([p(cx + w * 0.45, top + 2), p(cx + w * 0.95, (top + bot) / 2 + 2), p(cx + w * 0.45, bot - 2)],
                  fill=BONE, outline=BONE_LINE)
        d.rounded_rectangle(box(cx - w / 2, top + 0.8, cx + w / 2, bot), radius=3 * SCALE,
                            fill=BONE, outline=BONE_LINE, width=2 * SCALE)


def heat_spot(img, cx, cy, r):
    """Grad-CAM style blob: concentric jet-like colours with transparency."""
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    for f, colour in ((1.0, (40, 120, 255, 110)), (0.78, (40, 220, 200, 140)), (0.58, (250, 230, 40, 170)),
                      (0.38, (255, 130, 20, 200)), (0.2, (230, 20, 20, 230))):
        d.ellipse(box(cx - r * f, cy - r * f, cx + r * f, cy + r * f), fill=colour)
    img.alpha_composite(layer)


def rings(d, cx, cy, r):
    """Nested tumour sub-regions: whole tumour, tumour core, enhancing tumour."""
    lw = int(2.5 * SCALE)
    d.ellipse(box(cx - r, cy - r * 0.85, cx + r, cy + r * 0.85), outline=WT, width=lw)
    d.ellipse(box(cx - r * 0.62, cy - r * 0.55, cx + r * 0.55, cy + r * 0.5), outline=TC, width=lw)
    d.ellipse(box(cx - r * 0.3, cy - r * 0.28, cx + r * 0.22, cy + r * 0.2), fill=ET)


def cycle_arrow(d, cx, cy, r, colour=(120, 220, 140, 255)):
    """Circular arrow (retraining loop)."""
    lw = int(4 * SCALE)
    d.arc(box(cx - r, cy - r, cx + r, cy + r), 30, 320, fill=colour, width=lw)
    a = math.radians(320)
    tip = (cx + r * math.cos(a), cy + r * math.sin(a))
    d.polygon([p(tip[0] + 7, tip[1] - 1), p(tip[0] - 5, tip[1] - 7), p(tip[0] - 1, tip[1] + 7)], fill=colour)


def save(img, relative):
    out = ROOT / relative
    out.parent.mkdir(parents=True, exist_ok=True)
    img.resize((SIZE, SIZE), Image.LANCZOS).save(out)
    print("wrote", out)


def main():
    # extension: brain above a spine column
    img, d = canvas()
    spine(d, 64, 66, 120, 20, n=4, curve=3)
    brain(img, 62, 44, 92, 64)
    save(img, "Resources/BrainSpineAI.png")

    # classify: brain with a heatmap spot
    img, d = canvas()
    brain(img, 62, 60, 104, 84)
    heat_spot(img, 52, 50, 20)
    save(img, "BrainSpineAI/Resources/Icons/BrainSpineAI.png")

    # segment: brain with WT/TC/ET rings
    img, d = canvas()
    brain(img, 62, 60, 104, 84)
    rings(d, 52, 50, 20)
    save(img, "BrainSpineAISegment/Resources/Icons/BrainSpineAISegment.png")

    # train: spine column with a retraining loop
    img, d = canvas()
    cycle_arrow(d, 64, 64, 46)
    spine(d, 58, 22, 108, 26, n=5, curve=5)
    save(img, "BrainSpineAITrain/Resources/Icons/BrainSpineAITrain.png")


if __name__ == "__main__":
    main()
