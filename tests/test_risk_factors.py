"""RiskFactors validation (units, ranges, forbidden extras) and the PAD-UFES-20 row mapper."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from models.knowledge.risk_factors import (
    BODY_SITE_SNOMED,
    PAD_REQUEST_FIELDS,
    BodySite,
    Immunosuppression,
    RiskFactors,
    risk_factors_from_pad,
)
from models.knowledge.taxonomy import _verhoeff_ok

OUT_OF_RANGE = [
    ("age", -1),
    ("age", 121),
    ("fitzpatrick", 0),
    ("fitzpatrick", 7),
    ("diameter_mm", -0.1),
    ("diameter_mm", 301),
    ("lesion_duration_days", -1),
    ("lesion_duration_days", 200 * 366),
    ("sex", "unknown"),
    ("body_site", "elbow-ish"),
    ("immunosuppression", "sometimes"),
    ("bleeding", "maybe"),
]


@pytest.mark.parametrize(("field", "value"), OUT_OF_RANGE)
def test_out_of_range_values_are_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        RiskFactors(**{field: value})
    assert err.value.errors()[0]["loc"] == (field,)


def test_every_numeric_field_has_bounds_and_units() -> None:
    for name in ("age", "fitzpatrick", "diameter_mm", "lesion_duration_days"):
        info = RiskFactors.model_fields[name]
        assert info.description and any(u in info.description for u in ("years", "mm", "millimetres", "days", "type"))
        with pytest.raises(ValidationError):
            RiskFactors(**{name: 10_000_000})


def test_extra_fields_and_biopsy_are_forbidden() -> None:
    with pytest.raises(ValidationError):
        RiskFactors(biopsed=True)


def test_all_optional_and_valid_values() -> None:
    assert RiskFactors().known() == {}
    r = RiskFactors(age=0, fitzpatrick=6, diameter_mm=0, immunosuppression="transplant", body_site="forearm")
    assert r.immunosuppression is Immunosuppression.TRANSPLANT and r.body_site is BodySite.FOREARM


def test_body_sites_cover_pad_regions_with_valid_snomed_codes() -> None:
    pad = {"FACE", "NOSE", "EAR", "LIP", "SCALP", "NECK", "CHEST", "BACK", "ABDOMEN", "ARM", "FOREARM", "HAND"}
    assert pad | {"THIGH", "FOOT"} <= {s.name for s in BodySite}
    for code in BODY_SITE_SNOMED.values():
        assert code is None or _verhoeff_ok(code.code)


def test_pad_row_mapping_and_unknowns() -> None:
    row = {
        "age": "54", "gender": "MALE", "fitspatrick": "2.0", "region": "CHEST", "diameter_1": "9.0",
        "diameter_2": "5.0", "skin_cancer_history": "True", "smoke": "False", "itch": "True", "grew": "UNK",
        "hurt": "False", "changed": "True", "bleed": "", "elevation": "True", "biopsed": "True", "diagnostic": "ACK",
    }  # fmt: skip
    r = risk_factors_from_pad(row)
    assert (r.age, r.sex, r.fitzpatrick, r.body_site, r.diameter_mm) == (54, "male", 2, BodySite.CHEST, 9.0)
    assert r.personal_history_skin_cancer is True and r.smoker is False
    assert r.itch is True and r.changed_size is None and r.pain is False and r.bleeding is None
    assert r.changed_shape is True and r.changed_colour is None and r.elevation is True
    only = risk_factors_from_pad(row, PAD_REQUEST_FIELDS)
    assert only.fitzpatrick is None and only.diameter_mm is None and only.age == 54
    unchanged = risk_factors_from_pad({"changed": "False"})
    assert unchanged.changed_shape is False and unchanged.changed_colour is False
    assert risk_factors_from_pad({}).known() == {}
