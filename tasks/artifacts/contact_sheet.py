"""The contact sheet of a job: one row per frame, what the fleet chose and why.

Each row starts with the frame's chained input images, then every candidate as a thumbnail with
its overall / PickScore / CLIP / aesthetic / consistency scores; the selected one is outlined in
green, failed candidates are grey boxes with their error, and warnings and fallbacks are written
under the frame's name. A static HTML page shows the same with links to the full images.

The sheet is drawn at finalize, on every job's critical path, where decoding every candidate at
full size was most of its cost (with real providers' larger images, more so). Scoring, which
decodes a round's candidates anyway, stores their thumbnails (``candidate_thumbnail``) while the
scorer runs and names each in its variation's record (``thumbnail_key``), and the sheet reads
those; it decodes the full image where none is named, or it cannot be read, or it was drawn at
another size.
"""

from __future__ import annotations

import functools
import html
import io
import logging
import zlib
from typing import Callable

from framefleet.tasks.artifacts.images import candidate_size, fitted
from framefleet.tasks.artifacts.store import read_in_parallel
from framefleet.tasks.job.records import FrameRecord, Manifest, VariationRecord
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

LABEL_W = 250
TEXT_H = 64
PAD = 12
INPUT_SCALE = 0.6
BACKGROUND, INK, DIM = (250, 250, 248), (30, 30, 30), (110, 110, 110)
SELECTED, WARNING, FAILED = (26, 150, 65), (200, 120, 0), (200, 40, 40)


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def score_line(variation: VariationRecord) -> tuple[str, str]:
    s = variation.scores
    if s is None:
        return ("not scored", "")
    consistency = ""
    if s.consistency:
        consistency = " cons " + "/".join(f"{c:.2f}" for c in s.consistency)
    return (f"overall {_fmt(s.overall)}", f"PS {_fmt(s.pickscore)} CLIP {_fmt(s.clip_score)} "
                                          f"AES {_fmt(s.aesthetic)}{consistency}")


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def render_contact_sheet(manifest: Manifest, aspect_ratio: str, load: Callable[[str], Image.Image]) -> bytes:
    """``load`` reads an image by key (KeyError when it is not in the store)."""
    thumb = candidate_size(aspect_ratio)
    small = (round(thumb[0] * INPUT_SCALE), round(thumb[1] * INPUT_SCALE))
    thumbnails = _load_thumbnails(manifest, {"input": small, "candidate": thumb}, load)
    candidates = max((len(f.variations) for f in manifest.frames), default=1)
    inputs = max((len(f.inputs) for f in manifest.frames), default=0)
    row_h = thumb[1] + TEXT_H + PAD
    width = LABEL_W + inputs * (small[0] + PAD) + (PAD if inputs else 0) + candidates * (thumb[0] + PAD) + PAD
    header_h = 56
    sheet = Image.new("RGB", (width, header_h + row_h * len(manifest.frames) + PAD), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, 10), f"{manifest.job_id}: {manifest.kind}, {manifest.status}, revision {manifest.revision}",
              fill=INK, font=_font(20))
    draw.text((PAD, 34), f"scorer: {manifest.scorer}   providers: {manifest.providers.get('llm')} / "
                         f"{manifest.providers.get('images')}   failed clips: {manifest.failed_clips or 'none'}",
              fill=DIM, font=_font(13))
    for row, frame in enumerate(manifest.frames):
        top = header_h + row * row_h
        _draw_label(draw, frame, top, changed_in(manifest, frame))
        x = LABEL_W
        for key in frame.inputs:
            if thumbnails.get((key, "input")) is not None:
                sheet.paste(thumbnails[key, "input"], (x, top))
            else:
                draw.rectangle((x, top, x + small[0], top + small[1]), outline=DIM)
            draw.text((x, top + small[1] + 2), "input", fill=DIM, font=_font(12))
            x += small[0] + PAD
        if inputs:
            x = LABEL_W + inputs * (small[0] + PAD) + PAD
        for variation in frame.variations:
            tile = thumbnails.get((variation.key, "candidate"))
            _draw_candidate(sheet, draw, frame, variation, (x, top), thumb, tile)
            x += thumb[0] + PAD
    out = io.BytesIO()
    # A preview: encode time matters more than bytes (run-length deflate: the fastest here, and no larger).
    sheet.save(out, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return out.getvalue()


def _load_thumbnails(manifest: Manifest, sizes: dict[str, tuple[int, int]],
                     load: Callable[[str], Image.Image]) -> dict[tuple[str, str], Image.Image | None]:
    """Every image the sheet shows, fetched and decoded once, in parallel (the sheet is drawn
    before the job is done: it is on every job's critical path); (key, use) → thumbnail, None for
    an input that is no longer in the store. An input that is a selected frame is read as the
    candidate it was copied from, which the sheet shows anyway."""
    copied_from = {f.selected.frame_key: f.selected.key for f in manifest.frames if f.selected}
    uses: dict[str, set[str]] = {}
    for frame in manifest.frames:
        for key in frame.inputs:
            uses.setdefault(copied_from.get(key, key), set()).add("input")
        for variation in frame.variations:
            if variation.key:
                uses.setdefault(variation.key, set()).add("candidate")

    recorded = {v.key: v.thumbnail_key for f in manifest.frames for v in f.variations if v.key and v.thumbnail_key}

    def stored_thumbnail(key: str) -> Image.Image | None:
        try:
            thumbnail = load(recorded[key])
        except Exception as error:  # noqa: BLE001 — a shortcut only: the full image is read instead
            log.warning("contact sheet: thumbnail %s unreadable (%s); reading %s", recorded[key], error, key)
            return None
        return thumbnail if thumbnail.size == sizes["candidate"] else None  # drawn for another layout

    def thumbnails_of(key: str) -> dict[tuple[str, str], Image.Image | None]:
        if key in recorded and (thumbnail := stored_thumbnail(key)) is not None:
            return {(key, use): thumbnail if use == "candidate" else fitted(thumbnail, sizes[use])
                    for use in uses[key]}
        try:
            image = load(key)
        except KeyError:
            if "candidate" in uses[key]:
                raise  # a stored candidate that cannot be read is a fault, not a gap
            return {(key, "input"): None}
        return {(key, use): fitted(image, sizes[use]) for use in uses[key]}

    thumbnails = {k: v for found in read_in_parallel(thumbnails_of, uses) for k, v in found.items()}
    for copy, original in copied_from.items():
        if (original, "input") in thumbnails:
            thumbnails[copy, "input"] = thumbnails[original, "input"]
    return thumbnails


def changed_in(manifest: Manifest, frame: FrameRecord) -> bool:
    """Whether the frame changed in the manifest's revision (a choose, regenerate or re-chain)."""
    return manifest.revision > 0 and frame.revision == manifest.revision


def _draw_label(draw: ImageDraw.ImageDraw, frame: FrameRecord, top: int, changed: bool) -> None:
    colour = {"succeeded": INK, "failed": FAILED, "skipped": DIM, "pending": DIM}[frame.status]
    draw.text((PAD, top), frame.name, fill=colour, font=_font(16))
    if changed:
        draw.text((PAD + 150, top + 2), f"changed in r{frame.revision}", fill=WARNING, font=_font(12))
    draw.text((PAD, top + 20), f"{frame.status}, selected v{frame.selected.index}" if frame.selected
              else frame.status, fill=DIM, font=_font(12))
    y = top + 38
    for note in frame.warnings + frame.fallbacks:
        for line in _wrap(note, 34)[:2]:
            draw.text((PAD, y), line, fill=WARNING, font=_font(11))
            y += 14


def _draw_candidate(sheet, draw, frame: FrameRecord, variation: VariationRecord, origin, thumb,
                    thumbnail: Image.Image | None) -> None:
    x, y = origin
    if thumbnail is not None:
        sheet.paste(thumbnail, (x, y))
    else:
        draw.rectangle((x, y, x + thumb[0], y + thumb[1]), fill=(225, 225, 225))
        for n, line in enumerate(_wrap(f"failed: {variation.error}", 30)[:4]):
            draw.text((x + 6, y + 6 + 14 * n), line, fill=FAILED, font=_font(11))
    chosen = frame.selected is not None and frame.selected.index == variation.index \
        and frame.selected.key == variation.key
    if chosen:
        draw.rectangle((x - 3, y - 3, x + thumb[0] + 2, y + thumb[1] + 2), outline=SELECTED, width=4)
    first, second = score_line(variation)
    rank = f"#{variation.rank} " if variation.rank else ""
    source = " (original prompt)" if variation.prompt_source == "original" else ""
    draw.text((x, y + thumb[1] + 4), f"{rank}v{variation.index} {first}{source}",
              fill=SELECTED if chosen else INK, font=_font(13))
    draw.text((x, y + thumb[1] + 22), second, fill=DIM, font=_font(11))


def render_contact_html(manifest: Manifest, relative: Callable[[str], str]) -> str:
    """A static page next to the images; ``relative`` turns an artifact key into a link."""
    rows = []
    for frame in manifest.frames:
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in frame.warnings + frame.fallbacks)
        changed = f"<br><span class=changed>changed in revision {frame.revision}</span>" \
            if changed_in(manifest, frame) else ""
        cells = [f"<td class=label><b>{frame.name}</b><br>{frame.status}{changed}<ul>{notes}</ul></td>"]
        cells += [f"<td class=input><img src='{relative(k)}'><br>input</td>" for k in frame.inputs]
        for v in frame.variations:
            chosen = frame.selected is not None and frame.selected.key == v.key
            first, second = score_line(v)
            image = f"<a href='{relative(v.key)}'><img src='{relative(v.key)}'></a>" if v.key \
                else f"<div class=failed>failed: {html.escape(v.error or '')}</div>"
            cells.append(f"<td class='{'selected' if chosen else ''}'>{image}<br>v{v.index} "
                         f"{'#' + str(v.rank) if v.rank else ''} {first}<br><small>{second}</small></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"""<!doctype html><meta charset=utf-8><title>{manifest.job_id} contact sheet</title>
<style>body{{font-family:sans-serif;background:#fafaf8}} td{{vertical-align:top;padding:6px;font-size:13px}}
img{{width:224px}} .input img{{width:134px}} .selected img{{outline:4px solid #1a9641}}
.failed{{width:224px;height:126px;background:#e1e1e1;color:#c82828}} .label{{width:230px}} li{{color:#c87800}}
.changed{{color:#c87800;font-weight:bold}}</style>
<h2>{manifest.job_id} — {manifest.kind}, {manifest.status}, revision {manifest.revision}</h2>
<p>scorer: {manifest.scorer}; failed clips: {manifest.failed_clips or 'none'};
<a href='manifest.json'>manifest.json</a></p>
<table>{''.join(rows)}</table>
"""
