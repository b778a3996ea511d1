"""Labelled photo folders: the PAD-UFES-20 layout (`images/` + `metadata.csv`) and a plain one
(`labels.csv` with `file,label`). Labels resolve through the taxonomy (ids, names, synonyms,
dataset codes). `biopsed` is read by nobody: it leaks the label (see DATA.md)."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from models.knowledge.taxonomy import Condition, Taxonomy, UnknownLabelError

# The development photos: $DERMTRIAGE_DATA, else the checkout's sibling `shared/data/pad-ufes-20`.
DEFAULT_DATA = Path(
    os.environ.get("DERMTRIAGE_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data" / "pad-ufes-20"
)
PAD_FLAG_COLUMNS = ("itch", "grew", "hurt", "changed", "bleed", "elevation")
# ISIC ground-truth names the taxonomy does not list (ISIC's other usual labels, MEL/NEV/SEK/BKL/DF/VASC/
# AKIEC and "nevus", resolve through taxonomy.yaml's dataset codes, abbreviations and synonyms). Kept here,
# not in taxonomy.yaml: any edit there changes the taxonomy fingerprint, which the shipped calibration,
# fusion and text cache are keyed on (they would all need refitting), and a synonym also joins the
# condition's prompt ensemble.
DATASET_LABELS = {"pigmented benign keratosis": "seborrheic_keratosis", "vascular lesion": "cherry_angioma"}


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


class DatasetError(ValueError):
    """A labelled folder that cannot be read as asked; the message is one line that says why."""


def load_labelled_folder(root: str | Path, taxonomy: Taxonomy, split: str | None = None) -> list[LabelledImage]:
    """Read a labelled folder in either layout; raises FileNotFoundError naming what is missing and
    DatasetError (one line) for unknown labels, missing files or a split with no rows. `split` keeps
    the rows of labels.csv whose `split` column says so (ISIC 2017: train, validation, test)."""
    root = Path(root)
    if (root / "metadata.csv").exists():
        if split:
            raise DatasetError(f"{root}: the PAD-UFES-20 layout has no splits; drop --split")
        return _load_pad(root, taxonomy)
    if (root / "labels.csv").exists():
        return _load_plain(root, taxonomy, split)
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


def _load_plain(root: Path, taxonomy: Taxonomy, split: str | None = None) -> list[LabelledImage]:
    with (root / "labels.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        for needed in ("file", "label", *(["split"] if split else [])):
            if needed not in columns:
                raise DatasetError(f"{root / 'labels.csv'}: no `{needed}` column (columns: {', '.join(columns)})")
        rows = list(reader)
    if split:
        available = sorted({(r.get("split") or "").strip() for r in rows} - {""})
        rows = [r for r in rows if (r.get("split") or "").strip().lower() == split.lower()]
        if not rows:
            raise DatasetError(f"{root / 'labels.csv'}: no rows in split {split!r} (splits: {', '.join(available)})")
    out: list[LabelledImage] = []
    unknown: dict[str, int] = {}
    missing: list[str] = []
    for row in rows:
        path = root / row["file"]
        if not path.exists():
            missing.append(row["file"])
            continue
        try:
            condition = resolve_label(taxonomy, row["label"])
        except UnknownLabelError:
            unknown[row["label"]] = unknown.get(row["label"], 0) + 1
            continue
        meta = {k: v for k, v in row.items() if k not in ("file", "label")}
        out.append(LabelledImage(path, condition.id, row.get("patient_id") or path.stem, meta))
    if unknown:
        listed = ", ".join(f"{k!r} ({n} rows)" for k, n in sorted(unknown.items()))
        raise DatasetError(f"{root / 'labels.csv'}: labels the taxonomy does not know: {listed}")
    if missing:
        raise DatasetError(
            f"{root / 'labels.csv'}: {len(missing)} listed file(s) missing under {root}, e.g. {', '.join(missing[:3])}"
        )
    return out


def resolve_label(taxonomy: Taxonomy, label: str) -> Condition:
    """The taxonomy's condition for a dataset label (DATASET_LABELS first, then Taxonomy.resolve)."""
    alias = DATASET_LABELS.get(" ".join(label.casefold().replace("_", " ").split()))
    return taxonomy.get(alias) if alias else taxonomy.resolve(label)


def row_modality(item: LabelledImage, default: str) -> str:
    """The row's own `modality` (clinical or dermoscopic) when labels.csv has one, else `default`."""
    value = (item.metadata.get("modality") or "").strip().lower()
    return value if value in ("clinical", "dermoscopic") else default


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
