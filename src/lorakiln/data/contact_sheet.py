"""Contact sheets: every image of a training folder with its caption, on a few PNG pages.

Why: captions are reviewed against the pictures ("is 'wearing sunglasses' captioned on every
photo that has them?"), and opening hundreds of caption files one by one is how mistakes slip
through. A sheet shows thumbnails in display orientation (EXIF applied, as the trainer sees
them) with the file name and the caption under each, and marks images without a caption in
red, since those silently train with the folder caption instead.

Layout is a pure function (`SheetLayout`) so page sizes can be checked without drawing;
pages are written atomically. Only Pillow is used, with its built-in font.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from lorakiln.atomic import atomic_path
from lorakiln.data.caption_edit import collect_captions
from lorakiln.data.caption_target import ImageGuard
from lorakiln.data.files import CaptionFile
from lorakiln.data.images import open_image_rgb
from lorakiln.errors import ConfigError
from lorakiln.io_guard import check_output as check_writable

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

#: Output formats by suffix; the temporary file has no useful suffix, so the format is explicit.
SHEET_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}

BACKGROUND = (255, 255, 255)
THUMB_BACKGROUND = (235, 235, 235)
TEXT = (20, 20, 20)
NAME = (90, 90, 90)
MISSING = (220, 0, 0)

NO_CAPTION = "(no caption)"
ELLIPSIS = "..."  # ASCII: the bitmap fallback font has no "…"


def load_font(size: int) -> Font:
    """Pillow's built-in font at `size` px (Pillow >= 10.1 with FreeType), else its bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # older Pillow (no `size`) or no FreeType
        return ImageFont.load_default()


def line_height(font: Font) -> int:
    """Pixel height of one text line, with a little spacing."""
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
        return ascent + descent + 2
    return int(font.getbbox("Ag|")[3]) + 3


def printable(text: str, font: Font) -> str:
    """Text the font can draw: the bitmap fallback font only encodes Latin-1 (else it raises)."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def fit_line(text: str, font: Font, width: int, *, keep_end: bool = False) -> str:
    """`text` shortened with "..." to fit `width` px; `keep_end` keeps the end (file names)."""
    if font.getlength(text) <= width:
        return text
    return _shorten(text, font, width, keep_end=keep_end)


def _shorten(text: str, font: Font, width: int, *, keep_end: bool = False) -> str:
    """`text` minus as many characters as needed for it plus "..." to fit `width` px."""
    chars = list(text)
    while chars:
        chars.pop(0 if keep_end else -1)
        candidate = ELLIPSIS + "".join(chars) if keep_end else "".join(chars).rstrip() + ELLIPSIS
        if font.getlength(candidate) <= width:
            return candidate
    return ELLIPSIS


def wrap_text(text: str, font: Font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` px, at most `max_lines` (the last one ends in "..." if cut).

    Words wider than a line (booru tags written without spaces) are broken between characters.
    """
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        for char in word:
            if font.getlength(current + char) > width and current:
                lines.append(current)
                current = ""
            current += char
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _shorten(lines[-1] + " x", font, width)  # " x" is always cut: the "..." shows
    return lines


@dataclass(frozen=True)
class SheetLayout:
    """Geometry of a page: a header line, then `rows` × `columns` cells.

    A cell is a `thumb`×`thumb` square, then one line for the file name and `caption_lines`
    lines of caption; cells and the page edge are separated by `padding`.
    """

    columns: int
    thumb: int
    line_height: int
    caption_lines: int = 6
    padding: int = 10

    @property
    def cell_height(self) -> int:
        return self.thumb + 4 + self.line_height * (1 + self.caption_lines)

    @property
    def header_height(self) -> int:
        return self.line_height + self.padding

    def rows(self, count: int) -> int:
        return max(1, math.ceil(count / self.columns))

    def page_size(self, count: int) -> tuple[int, int]:
        """(width, height) in px of a page holding `count` images."""
        width = self.columns * self.thumb + (self.columns + 1) * self.padding
        height = self.header_height + self.rows(count) * (self.cell_height + self.padding) + self.padding
        return width, height

    def cell_origin(self, index: int) -> tuple[int, int]:
        """Top-left corner of the thumbnail square of the `index`-th image on a page."""
        row, col = divmod(index, self.columns)
        x = self.padding + col * (self.thumb + self.padding)
        y = self.header_height + self.padding + row * (self.cell_height + self.padding)
        return x, y


def make_layout(count: int, *, columns: int, thumb: int, caption_lines: int = 6) -> tuple[SheetLayout, Font]:
    """Layout and font for `count` images: text scales with the thumbnail (10-20 px), and a
    folder with fewer images than `columns` gets a narrower sheet instead of empty columns."""
    font = load_font(max(10, min(20, thumb // 16)))
    layout = SheetLayout(columns=max(1, min(columns, count)), thumb=thumb, line_height=line_height(font),
                         caption_lines=caption_lines)
    return layout, font


def thumbnail(path: Path, size: int) -> Image.Image | None:
    """Display-oriented thumbnail fitting `size`×`size`, or None if the image cannot be opened."""
    try:
        img = open_image_rgb(path)
    except Exception:  # any Pillow failure: the sheet marks the cell instead of stopping
        return None
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return img


def caption_label(entry: CaptionFile) -> tuple[str, bool]:
    """(text to show, whether it is a problem to mark in red)."""
    if entry.error:
        return ("(caption unreadable: not UTF-8)" if "UTF-8" in entry.error else "(caption unreadable)"), True
    caption = entry.caption
    if caption is None:
        return (NO_CAPTION if entry.text is None else "(empty caption)"), True
    return caption, False


def render_page(entries: Sequence[CaptionFile], thumbs: Sequence[Image.Image | None], layout: SheetLayout,
                font: Font, *, root: Path, title: str) -> Image.Image:
    """Draw one page; `thumbs[i]` is the thumbnail of `entries[i]` (None: unreadable image)."""
    page = Image.new("RGB", layout.page_size(len(entries)), BACKGROUND)
    draw = ImageDraw.Draw(page)
    text_width = layout.thumb
    page_width = page.size[0] - 2 * layout.padding
    draw.text((layout.padding, layout.padding // 2), printable(fit_line(title, font, page_width), font),
              font=font, fill=TEXT)
    for index, (entry, thumb) in enumerate(zip(entries, thumbs, strict=True)):
        x, y = layout.cell_origin(index)
        draw.rectangle((x, y, x + layout.thumb - 1, y + layout.thumb - 1), fill=THUMB_BACKGROUND)
        if thumb is None:
            draw.text((x + 4, y + layout.thumb // 2), "(cannot open image)", font=font, fill=MISSING)
        else:
            page.paste(thumb, (x + (layout.thumb - thumb.width) // 2, y + (layout.thumb - thumb.height) // 2))
        label, problem = caption_label(entry)
        if problem:
            draw.rectangle((x, y, x + layout.thumb - 1, y + layout.thumb - 1), outline=MISSING, width=3)
        ty = y + layout.thumb + 4
        name = entry.image.relative_to(root).as_posix()
        draw.text((x, ty), printable(fit_line(name, font, text_width, keep_end=True), font), font=font, fill=NAME)
        for line in wrap_text(label, font, text_width, layout.caption_lines):
            ty += layout.line_height
            draw.text((x, ty), printable(line, font), font=font, fill=MISSING if problem else TEXT)
    return page


def page_paths(output: Path, pages: int) -> list[Path]:
    """`output` itself for one page, else `<stem>-001<suffix>`, `<stem>-002<suffix>`, ..."""
    if pages == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i:03d}{output.suffix}") for i in range(1, pages + 1)]


def check_output(output: str | os.PathLike[str], root: Path) -> Path:
    """Absolute output path with a known image suffix, outside the dataset.

    Inside the dataset the sheet would itself be picked up as a training image.
    """
    path = Path(output).expanduser()
    if not path.suffix:
        path = path.with_suffix(".png")
    if path.suffix.lower() not in SHEET_FORMATS:
        raise ConfigError(f"contact sheet {str(path)!r} must end in .png, .jpg or .webp")
    path = path.resolve()
    if path.is_relative_to(root):
        raise ConfigError(f"contact sheet {str(path)!r} is inside the dataset folder {str(root)!r}, where it would "
                          f"be trained as an image; write it elsewhere, e.g. -o {root.parent / 'sheet.png'}")
    return check_writable(path, [], verb="dataset sheet", force=True)  # not a folder, nor under a file


def write_contact_sheet(folder: str | os.PathLike[str], output: str | os.PathLike[str] = "sheet.png", *,
                        columns: int = 6, thumb: int = 256, caption_extension: str = ".txt",
                        max_per_page: int = 48, caption_lines: int = 6, recursive: bool = True) -> list[Path]:
    """Write contact sheet page(s) for the images under `folder`; return the written paths.

    All images fit one page → exactly `output`; otherwise pages of `max_per_page` images as
    `<stem>-001.png`, ... (every page as wide as the first). Unreadable images or captions are
    marked on the sheet, not raised: the sheet is the tool for finding them.
    """
    if not 1 <= columns <= 64:
        raise ConfigError(f"columns = {columns} is out of range; use 1 to 64")
    if not 32 <= thumb <= 2048:
        raise ConfigError(f"thumb = {thumb} px is out of range; use 32 to 2048, e.g. 256")
    if max_per_page < 1:
        raise ConfigError(f"max_per_page = {max_per_page} must be at least 1")
    if caption_lines < 1:
        raise ConfigError(f"caption_lines = {caption_lines} must be at least 1")
    root, entries = collect_captions(folder, caption_extension=caption_extension, recursive=recursive)
    out = check_output(output, root)
    layout, font = make_layout(len(entries), columns=columns, thumb=thumb, caption_lines=caption_lines)
    chunks = [entries[i:i + max_per_page] for i in range(0, len(entries), max_per_page)]
    paths = page_paths(out, len(chunks))
    guard = ImageGuard(e.image for e in entries)  # a hard link to an image outside the folder, too
    for path in paths:
        guard.refuse(path, verb="dataset sheet")
    missing = sum(1 for e in entries if caption_label(e)[1])
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # Pillow decodes without the GIL
        for number, (chunk, path) in enumerate(zip(chunks, paths, strict=True), start=1):
            thumbs = list(pool.map(lambda e: thumbnail(e.image, thumb), chunk))
            title = (f"{root.name} - page {number}/{len(chunks)} - {len(entries)} image(s), "
                     f"{missing} without a caption")
            page = render_page(chunk, thumbs, layout, font, root=root, title=title)
            with atomic_path(path) as tmp:
                page.save(tmp, format=SHEET_FORMATS[path.suffix.lower()])
    return paths
