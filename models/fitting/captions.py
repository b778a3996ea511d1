"""Training captions for the embedded model: the diagnosis (a name or synonym) and what is known
about the lesion, worded for the image's modality (clinical photo or dermoscopy)."""

from __future__ import annotations

import random

from models.fitting.datasets import PAD_FLAG_COLUMNS, LabelledImage
from models.knowledge.taxonomy import Taxonomy


def _truthy(value: str) -> bool | None:
    v = (value or "").strip().lower()
    return True if v == "true" else False if v == "false" else None


def captions_for(
    item: LabelledImage, taxonomy: Taxonomy, k: int, rng: random.Random, modality: str = "clinical"
) -> list[str]:
    """Captions from the diagnosis (name or a synonym) and the lesion's facts; missing facts are omitted.
    `modality` "dermoscopic" words them for dermatoscope images (ISIC: age and sex only)."""
    cond = taxonomy.get(item.condition_id)
    names = cond.prompt_names
    kind = "malignant" if cond.malignant else ("precancerous" if cond.premalignant else "benign")
    if modality == "dermoscopic":
        return _dermoscopic_captions(item, names, kind, k, rng)
    m = item.metadata
    region = (m.get("region") or "").strip().lower().replace("_", " ")
    age = m.get("age", "").strip()
    sex = {"MALE": "man", "FEMALE": "woman"}.get((m.get("gender") or "").upper(), "person")
    facts = {
        "itch": "itches",
        "grew": "has grown",
        "hurt": "hurts",
        "changed": "has changed",
        "bleed": "bleeds",
        "elevation": "is raised",
    }
    said = [facts[c] for c in PAD_FLAG_COLUMNS if _truthy(m.get(c, "")) is True]
    out = []
    for i in range(k):
        name = names[0] if i == 0 else rng.choice(names)
        options = [f"a clinical photo of {name}, a {kind} skin lesion."]
        if region:
            who = f" of a {age}-year-old {sex}" if age else ""
            options.append(f"{name} on the {region}{who}.")
        if said:
            options.append(f"{name}; the lesion {', '.join(said)}.")
        out.append(options[i % len(options)] if i else f"{name}.")
    return out


def _dermoscopic_captions(item: LabelledImage, names: list[str], kind: str, k: int, rng: random.Random) -> list[str]:
    m = item.metadata
    age = (m.get("age_approximate") or m.get("age") or "").strip()
    age = age.split(".")[0] if age.replace(".", "", 1).isdigit() else ""
    sex = {"male": "man", "female": "woman"}.get((m.get("sex") or m.get("gender") or "").strip().lower(), "")
    out = []
    for i in range(k):
        name = names[0] if i == 0 else rng.choice(names)
        options = [f"a dermoscopic image of {name}, a {kind} skin lesion.", f"dermoscopy of {name}."]
        if age or sex:
            who = " ".join(x for x in (f"{age}-year-old" if age else "", sex or "person") if x)
            options.append(f"a dermoscopic image of {name} in a {who}.")
        out.append(options[i % len(options)] if i else f"{name}.")
    return out
