"""Labelled photo folders: the PAD-UFES-20 layout (`images/` + `metadata.csv`) and a plain one
(`labels.csv` with `file,label`). Labels resolve through the taxonomy (ids, names, synonyms,
dataset codes). `biopsed` is read by nobody: it leaks the label (see DATA.md)."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from models.knowledge.taxonomy import Taxonomy

# The development photos: $DERMTRIAGE_DATA, else the checkout's sibling `shared/data/pad-ufes-20`.
DEFAULT_DATA = Path(
    os.environ.get("DERMTRIAGE_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data" / "pad-ufes-20"
)
PAD_FLAG_COLUMNS = ("itch", "grew", "hurt", "changed", "bleed", "elevation")


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    condition_id: str
    group: str
    metadata: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def fitzpatrick(self) -> int | None:
        raw = self.metadata.get("fitspatrick", "") or self.metadata.get("fitzpatrick", "")
        try:
            value = int(float(raw))
        except ValueError:
            return None
        return value if 1 <= value <= 6 else None


def _find_image(images_dir: Path, img_id: str) -> Path | None:
    stem = Path(img_id).stem
    for ext in (Path(img_id).suffix, ".jpg", ".jpeg", ".png", ".webp"):
        candidate = images_dir / f"{stem}{ext}"
        if ext and candidate.exists():
            return candidate
    return None


def load_labelled_folder(root: str | Path, taxonomy: Taxonomy) -> list[LabelledImage]:
    """Read a labelled folder in either layout; raises FileNotFoundError naming what is missing."""
    root = Path(root)
    if (root / "metadata.csv").exists():
        return _load_pad(root, taxonomy)
    if (root / "labels.csv").exists():
        return _load_plain(root, taxonomy)
    raise FileNotFoundError(f"{root}: expected metadata.csv (PAD-UFES-20 layout) or labels.csv (file,label)")


def _load_pad(root: Path, taxonomy: Taxonomy) -> list[LabelledImage]:
    out: list[LabelledImage] = []
    images_dir = root / "images"
    with (root / "metadata.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            path = _find_image(images_dir, row["img_id"])
            if path is None:
                continue
            meta = {k: v for k, v in row.items() if k not in ("biopsed", "diagnostic")}
            condition = taxonomy.resolve(row["diagnostic"])
            out.append(LabelledImage(path, condition.id, row.get("patient_id") or path.stem, meta))
    if not out:
        raise FileNotFoundError(f"{root}: metadata.csv lists no image found under {images_dir}")
    return out


def _load_plain(root: Path, taxonomy: Taxonomy) -> list[LabelledImage]:
    out: list[LabelledImage] = []
    with (root / "labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            path = root / row["file"]
            if not path.exists():
                raise FileNotFoundError(f"{path} is listed in labels.csv but missing")
            condition = taxonomy.resolve(row["label"])
            meta = {k: v for k, v in row.items() if k not in ("file", "label")}
            out.append(LabelledImage(path, condition.id, row.get("patient_id") or path.stem, meta))
    return out


# ----------------------------------------------------------------------------- PAD flags -> words

_PAD_WORDS = {  # flag: (as an adjective or verb phrase when true, as a denial when false)
    "itch": ("itchy", "not itchy"),
    "grew": ("has grown", "has not grown"),
    "hurt": ("painful", "no pain"),
    "changed": ("has changed", "has not changed"),
    "bleed": ("bleeds", "no bleeding"),
    "elevation": ("raised", "flat"),
}


def sentence_from_pad(meta: Mapping[str, str]) -> str:
    """The lesion flags of a PAD row as a patient might write them: "itchy, raised spot that has
    grown and bleeds. No pain." Unknown flags are left out; an empty string when none is known."""

    def flag(col: str) -> bool | None:
        v = (meta.get(col) or "").strip().lower()
        return True if v == "true" else False if v == "false" else None

    values = {c: flag(c) for c in PAD_FLAG_COLUMNS}
    if all(v is None for v in values.values()):
        return ""
    adjectives = [_PAD_WORDS[c][0] for c in ("itch", "hurt", "elevation") if values[c] is True]
    verbs = [_PAD_WORDS[c][0] for c in ("grew", "changed", "bleed") if values[c] is True]
    denials = [_PAD_WORDS[c][1] for c in PAD_FLAG_COLUMNS if values[c] is False]
    subject = ", ".join(adjectives) + " spot" if adjectives else "a spot"
    if adjectives:
        subject = ("an " if adjectives[0][0] in "aeiou" else "a ") + subject
    sentence = subject
    if verbs:
        sentence += " that " + (" and ".join([", ".join(verbs[:-1]), verbs[-1]]) if len(verbs) > 1 else verbs[0])
    sentence = sentence[0].upper() + sentence[1:] + "."
    if denials:
        # "flat" and the verb phrases carry their own denial; join each as its own item
        sentence += " " + "; ".join(denials).capitalize() + "."
    return sentence
