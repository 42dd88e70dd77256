"""Draw the quickstart's training images: one made-up subject, "zwx", in varied scenes.

zwx is a purple, round-bodied toy with two white eyes and a yellow antenna. Following the
kohya_ss community advice on data (variety of backgrounds, sizes and positions; captions describe what
changes, not what is constant), each image varies background colour, size, position and
whether a ground line is drawn, and its caption says so. Deterministic: re-running writes the
same files.

    python examples/quickstart/draw_subject.py [OUT_DIR]   # default: examples/quickstart/train/10_zwx
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

BACKGROUNDS = {
    "blue": (70, 110, 200), "green": (80, 160, 90), "grey": (128, 128, 128), "orange": (230, 140, 60),
    "white": (240, 240, 240), "pink": (230, 150, 180), "teal": (60, 150, 150), "black": (25, 25, 25),
}
SIZE = 128


def draw_zwx(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    """The subject: body, eyes, antenna. Proportions are fixed so it is one recognisable thing."""
    draw.line([(cx, cy - r), (cx + r * 0.3, cy - r * 1.6)], fill=(240, 200, 40), width=max(2, int(r / 8)))
    draw.ellipse([cx + r * 0.15, cy - r * 1.8, cx + r * 0.45, cy - r * 1.5], fill=(240, 200, 40))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(130, 60, 170))
    for ex in (-0.38, 0.38):
        draw.ellipse([cx + ex * r - r * 0.2, cy - r * 0.35, cx + ex * r + r * 0.2, cy + r * 0.05], fill="white")
        draw.ellipse([cx + ex * r - r * 0.08, cy - r * 0.2, cx + ex * r + r * 0.08, cy - r * 0.04], fill="black")


def make_images(out_dir: Path, count: int = 10, seed: int = 7) -> list[Path]:
    """Write `count` PNG + caption pairs into `out_dir`; return the image paths."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(BACKGROUNDS)
    paths = []
    for i in range(count):
        bg = names[i % len(names)]
        img = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[bg])
        draw = ImageDraw.Draw(img)
        ground = i % 3 == 0
        if ground:
            draw.rectangle([0, SIZE * 0.78, SIZE, SIZE], fill=(110, 80, 50))
        r = rng.uniform(18, 34)
        cx = rng.uniform(r + 4, SIZE - r - 4)
        cy = rng.uniform(r * 1.9, SIZE - r - 4)
        draw_zwx(draw, cx, cy, r)
        size_word = "close up" if r > 28 else ("small" if r < 22 else "medium shot")
        where = "on the left" if cx < SIZE * 0.4 else ("on the right" if cx > SIZE * 0.6 else "in the centre")
        article = "an" if bg[0] in "aeiou" else "a"
        caption = f"photo of zwx, a toy on {article} {bg} background, {size_word}, {where}"
        if ground:
            caption += ", standing on brown ground"
        path = out_dir / f"zwx_{i:02d}.png"
        img.save(path)
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "train" / "10_zwx"
    for p in make_images(target):
        print(p)
