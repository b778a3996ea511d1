"""Patient risk factors and lesion facts: one validated, all-optional record with units.

Every field is optional because a real request carries whatever the patient or clinician knew:
`None` means *unknown*, never *no*. Downstream code (fusion, urgency) treats an unknown field
as carrying no information; nothing may learn from *which* fields are missing (in PAD-UFES-20
the missing fields are a collection artifact that marks benign lesions, see DATA.md).

`risk_factors_from_pad` maps one PAD-UFES-20 metadata row (the `LabelledImage.metadata` dict)
to a `RiskFactors`; `biopsed` and `diagnostic` are never read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from models.knowledge.taxonomy import Code

__all__ = [
    "BODY_SITE_SNOMED",
    "CHANGE_FIELDS",
    "PAD_ALL_FIELDS",
    "PAD_REQUEST_FIELDS",
    "BodySite",
    "Immunosuppression",
    "RiskFactors",
    "Sex",
    "is_immunosuppressed",
    "risk_factors_from_pad",
]


class Sex(StrEnum):
    FEMALE = "female"
    MALE = "male"
    OTHER = "other"


class Immunosuppression(StrEnum):
    """Kind of immunosuppression; `none` is an explicit *no* (unknown is a missing field)."""

    NONE = "none"
    TRANSPLANT = "transplant"  # solid-organ transplant recipient on anti-rejection drugs
    DRUGS = "drugs"  # other immunosuppressive medication (methotrexate, biologics, long-term steroids, ...)
    OTHER = "other"  # HIV, haematological malignancy, primary immunodeficiency, ...


class BodySite(StrEnum):
    """Where the lesion is: PAD-UFES-20's 14 regions plus a few common others."""

    FACE = "face"
    NOSE = "nose"
    EAR = "ear"
    LIP = "lip"
    SCALP = "scalp"
    NECK = "neck"
    CHEST = "chest"
    BACK = "back"
    ABDOMEN = "abdomen"
    ARM = "arm"  # upper arm (PAD lists FOREARM and HAND separately)
    FOREARM = "forearm"
    HAND = "hand"
    THIGH = "thigh"
    LOWER_LEG = "lower_leg"
    FOOT = "foot"
    EYELID = "eyelid"
    SHOULDER = "shoulder"
    BUTTOCK = "buttock"


# SNOMED CT body structures, as DICOM PS3.16 CID 4031 maps its body parts (the codes checked against
# that table; LIP against published FHIR value sets). None where no code was verified.
BODY_SITE_SNOMED: dict[BodySite, Code | None] = {
    BodySite.FACE: Code(code="89545001", display="Face structure"),
    BodySite.NOSE: Code(code="45206002", display="Nasal structure"),
    BodySite.EAR: Code(code="117590005", display="Ear structure"),
    BodySite.LIP: Code(code="48477009", display="Lip structure"),
    BodySite.SCALP: Code(code="41695006", display="Scalp structure"),
    BodySite.NECK: Code(code="45048000", display="Neck structure"),
    BodySite.CHEST: Code(code="43799004", display="Thoracic structure"),
    BodySite.BACK: Code(code="77568009", display="Back structure, excluding buttocks"),
    BodySite.ABDOMEN: Code(code="818981001", display="Abdomen"),
    BodySite.ARM: Code(code="40983000", display="Upper arm structure"),
    BodySite.FOREARM: Code(code="14975008", display="Forearm structure"),
    BodySite.HAND: Code(code="85562004", display="Hand structure"),
    BodySite.THIGH: Code(code="68367000", display="Thigh structure"),
    BodySite.LOWER_LEG: Code(code="30021000", display="Lower leg structure"),
    BodySite.FOOT: Code(code="56459004", display="Foot structure"),
    BodySite.EYELID: Code(code="80243003", display="Eyelid structure"),
    BodySite.SHOULDER: Code(code="16982005", display="Shoulder region structure"),
    BodySite.BUTTOCK: Code(code="46862004", display="Buttock structure"),
}

CHANGE_FIELDS = ("changed_size", "changed_shape", "changed_colour")


def _flag(description: str) -> Any:
    return Field(default=None, description=f"{description} True = yes, False = no, null = unknown.")


class RiskFactors(BaseModel):
    """What is known about the patient and the lesion; every field optional (null = unknown)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    # the patient
    age: float | None = Field(default=None, ge=0, le=120, description="Age in years (0-120).")
    sex: Sex | None = Field(default=None, description="Sex: female, male or other.")
    fitzpatrick: int | None = Field(default=None, ge=1, le=6, description="Fitzpatrick skin type, 1 (I) to 6 (VI).")
    family_history_melanoma: bool | None = _flag("Melanoma in a first-degree relative.")
    family_history_skin_cancer: bool | None = _flag(
        "A blood relative has had a skin cancer (any kind, melanoma included); recorded, not weighted."
    )
    personal_history_skin_cancer: bool | None = _flag("The patient has had a skin cancer (melanoma, BCC or SCC).")
    history_other_cancer: bool | None = _flag("The patient has had another (non-skin) cancer; recorded, not weighted.")
    immunosuppression: Immunosuppression | None = Field(
        default=None, description="Immunosuppression: none, transplant, drugs or other; null = unknown."
    )
    sunburn_history: bool | None = _flag("Blistering sunburns, especially in childhood.")
    many_moles: bool | None = _flag("More than 50 moles on the body.")
    smoker: bool | None = _flag("Current or former regular smoker.")
    # the lesion
    body_site: BodySite | None = Field(default=None, description="Body site of the lesion (SNOMED CT mapped).")
    lesion_duration_days: float | None = Field(
        default=None, ge=0, le=120 * 365.25, description="How long the lesion has been there, in days (>= 0)."
    )
    diameter_mm: float | None = Field(
        default=None, ge=0, le=300, description="Largest diameter in millimetres (0-300)."
    )
    changed_size: bool | None = _flag("The lesion has grown or changed in size.")
    rapid_growth: bool | None = _flag("The lesion has grown quickly (over weeks).")
    changed_shape: bool | None = _flag("The lesion has changed in shape (or in appearance, unspecified).")
    changed_colour: bool | None = _flag("The lesion has changed in colour.")
    irregular_shape: bool | None = _flag("Irregular shape or border (as examined).")
    irregular_colour: bool | None = _flag("Irregular or several colours (as examined).")
    bleeding: bool | None = _flag("The lesion bleeds, oozes or crusts.")
    itch: bool | None = _flag("The lesion itches.")
    pain: bool | None = _flag("The lesion hurts or is tender.")
    ulceration: bool | None = _flag("The lesion is ulcerated (an open sore).")
    elevation: bool | None = _flag("The lesion is raised above the skin.")
    inflammation: bool | None = _flag("The lesion or the skin around it is red and inflamed.")
    near_eye: bool | None = _flag("The rash or lesion is on or around the eye (eyelid, forehead, tip of the nose).")
    # whole-body and systemic
    fever: bool | None = _flag("Fever (38 C or more) or feeling feverish.")
    spreading_redness: bool | None = _flag("Redness that is spreading.")
    widespread_blistering: bool | None = _flag("Blisters or peeling over large areas of skin.")
    skin_pain: bool | None = _flag("The skin itself is painful over large areas (not only the lesion).")

    # concepts the symptoms text said only possibly ("might be bleeding"): not a field, never sent,
    # shown or dumped; fusion treats them as unknown, urgency escalates them one tier less
    _possible: frozenset[str] = PrivateAttr(default_factory=frozenset)

    def known(self) -> dict[str, Any]:
        """The fields that are set (not unknown)."""
        return self.model_dump(exclude_none=True)

    @property
    def possible_findings(self) -> frozenset[str]:
        """Yes/no fields (and "shingles") the text said with uncertainty; their value stays unknown."""
        return self._possible

    def with_possible(self, concepts: Collection[str]) -> RiskFactors:
        """A copy whose `possible_findings` are `concepts` (the fields themselves unchanged)."""
        out = self.model_copy()
        out._possible = frozenset(concepts)
        return out


def is_immunosuppressed(risk: RiskFactors) -> bool:
    return risk.immunosuppression not in (None, Immunosuppression.NONE)


# ----------------------------------------------------------------------------- PAD-UFES-20 mapping

PAD_REGIONS: dict[str, BodySite] = {
    s.name: s
    for s in BodySite
    if s.name
    in {
        "FACE",
        "NOSE",
        "EAR",
        "LIP",
        "SCALP",
        "NECK",
        "CHEST",
        "BACK",
        "ABDOMEN",
        "ARM",
        "FOREARM",
        "HAND",
        "THIGH",
        "FOOT",
    }
}

# Fields a real request carries and whose missingness in PAD is not an artifact: what fused
# figures on PAD are judged on (DATA.md). The rest of PAD's columns are mapped but, being missing
# only for benign lesions, are left out of evaluation.
PAD_REQUEST_FIELDS = frozenset(
    {"age", "body_site", "itch", "changed_size", "pain", "changed_shape", "changed_colour", "bleeding", "elevation"}
)
PAD_ALL_FIELDS = PAD_REQUEST_FIELDS | {
    "sex",
    "fitzpatrick",
    "diameter_mm",
    "personal_history_skin_cancer",
    "history_other_cancer",
    "smoker",
}


def _pad_bool(value: str | None) -> bool | None:
    v = (value or "").strip().lower()
    return True if v == "true" else False if v == "false" else None


def _pad_float(value: str | None) -> float | None:
    try:
        return float((value or "").strip())
    except ValueError:
        return None


def risk_factors_from_pad(meta: Mapping[str, str], fields: Collection[str] | None = None) -> RiskFactors:
    """One PAD-UFES-20 metadata row -> `RiskFactors`; "UNK" and empty cells become None.

    `fields` keeps only those RiskFactors fields (default: all mapped). PAD's `changed` asks
    whether the lesion changed its pattern: True maps to `changed_shape` (one NG12 major item,
    never two), False to "neither shape nor colour changed".
    """
    out: dict[str, Any] = {}
    age = _pad_float(meta.get("age"))
    if age is not None and 0 <= age <= 120:
        out["age"] = age
    sex = (meta.get("gender") or "").strip().upper()
    if sex in ("MALE", "FEMALE"):
        out["sex"] = Sex(sex.lower())
    fitz = _pad_float(meta.get("fitspatrick") or meta.get("fitzpatrick"))
    if fitz is not None and 1 <= fitz <= 6:
        out["fitzpatrick"] = int(fitz)
    region = (meta.get("region") or "").strip().upper()
    if region in PAD_REGIONS:
        out["body_site"] = PAD_REGIONS[region]
    diameters = [d for d in (_pad_float(meta.get("diameter_1")), _pad_float(meta.get("diameter_2"))) if d is not None]
    if diameters and 0 <= max(diameters) <= 300:
        out["diameter_mm"] = max(diameters)
    for column, name in (
        ("skin_cancer_history", "personal_history_skin_cancer"),
        ("cancer_history", "history_other_cancer"),
        ("smoke", "smoker"),
        ("itch", "itch"),
        ("grew", "changed_size"),
        ("hurt", "pain"),
        ("bleed", "bleeding"),
        ("elevation", "elevation"),
    ):
        value = _pad_bool(meta.get(column))
        if value is not None:
            out[name] = value
    changed = _pad_bool(meta.get("changed"))
    if changed is True:
        out["changed_shape"] = True
    elif changed is False:
        out["changed_shape"] = out["changed_colour"] = False
    if fields is not None:
        out = {k: v for k, v in out.items() if k in fields}
    return RiskFactors(**out)
