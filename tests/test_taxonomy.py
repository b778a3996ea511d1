"""Tests for the condition taxonomy (models/knowledge/taxonomy.yaml + models/knowledge/taxonomy.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from models.knowledge.taxonomy import (
    DEFAULT_TAXONOMY_PATH,
    Condition,
    Taxonomy,
    UnknownLabelError,
    UrgencyTier,
    load_taxonomy,
    normalize_label,
)

PAD_MODEL = "embedded-pad-lite0"
PAD_CODES = {
    "ACK": "actinic_keratosis",
    "BCC": "basal_cell_carcinoma",
    "MEL": "melanoma",
    "NEV": "melanocytic_nevus",
    "SCC": "squamous_cell_carcinoma",
    "SEK": "seborrheic_keratosis",
}
REQUIRED_IDS = {
    "melanoma",
    "atypical_nevus",
    "melanocytic_nevus",
    "basal_cell_carcinoma",
    "squamous_cell_carcinoma",
    "bowens_disease",
    "actinic_keratosis",
    "seborrheic_keratosis",
    "dermatofibroma",
    "cherry_angioma",
    "pyogenic_granuloma",
    "kaposi_sarcoma",
    "merkel_cell_carcinoma",
    "psoriasis",
    "atopic_dermatitis",
    "contact_dermatitis",
    "seborrheic_dermatitis",
    "acne_vulgaris",
    "rosacea",
    "urticaria",
    "lichen_planus",
    "pityriasis_rosea",
    "tinea",
    "scabies",
    "impetigo",
    "cellulitis",
    "herpes_zoster",
    "herpes_simplex",
    "molluscum_contagiosum",
    "viral_wart",
    "hidradenitis_suppurativa",
    "drug_eruption",
    "sjs_ten",
    "bullous_pemphigoid",
    "cutaneous_lupus",
    "vitiligo",
    "melasma",
    "ichthyosis_vulgaris",
    "leprosy",
    "solar_lentigo",
    "keloid",
    "necrotizing_fasciitis",
    "erythema_multiforme",
    "pemphigus_vulgaris",
}


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


@pytest.fixture()
def raw() -> dict[str, Any]:
    with DEFAULT_TAXONOMY_PATH.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def write_yaml(tmp_path: Path, data: dict[str, Any], name: str = "taxonomy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def condition(data: dict[str, Any], condition_id: str) -> dict[str, Any]:
    return next(c for c in data["conditions"] if c["id"] == condition_id)


# ---------------------------------------------------------------- packaged file


def test_packaged_file_loads_and_is_cached(taxonomy: Taxonomy) -> None:
    assert isinstance(taxonomy, Taxonomy)
    assert load_taxonomy() is load_taxonomy()
    assert load_taxonomy(DEFAULT_TAXONOMY_PATH) == taxonomy
    assert taxonomy.version
    assert {"snomed_ct", "icd10"} <= taxonomy.code_systems.keys()


def test_has_enough_conditions_and_required_ones(taxonomy: Taxonomy) -> None:
    assert len(taxonomy.conditions) >= 40
    assert len(taxonomy) == len(taxonomy.ids) == len(set(taxonomy.ids))
    missing = REQUIRED_IDS - set(taxonomy.ids)
    assert not missing, f"missing conditions: {sorted(missing)}"


def test_every_look_alike_resolves(taxonomy: Taxonomy) -> None:
    for cond in taxonomy.conditions:
        for other in cond.look_alikes:
            assert other != cond.id
            assert taxonomy.get(other).id == other


def test_every_condition_is_coded_and_tiered(taxonomy: Taxonomy) -> None:
    for cond in taxonomy.conditions:
        assert cond.icd10.code and cond.icd10.display
        assert isinstance(cond.urgency, UrgencyTier)
        if cond.snomed_ct is not None:
            assert cond.snomed_ct.code.isdigit() and cond.snomed_ct.display
    assert taxonomy.get("melanoma").icd10.code == "C43.9"
    assert taxonomy.get("basal_cell_carcinoma").icd10.code == "C44.91"
    assert taxonomy.get("melanoma").snomed_ct is not None
    assert taxonomy.get("melanoma").snomed_ct.code == "372244006"


def test_urgency_defaults(taxonomy: Taxonomy) -> None:
    assert [t.value for t in UrgencyTier] == ["emergency", "urgent", "soon", "routine", "self_care"]
    assert UrgencyTier.EMERGENCY.rank < UrgencyTier.SELF_CARE.rank
    for cid in ("melanoma", "squamous_cell_carcinoma", "merkel_cell_carcinoma"):
        assert taxonomy.get(cid).urgency is UrgencyTier.URGENT
    for cid in ("sjs_ten", "necrotizing_fasciitis"):
        assert taxonomy.get(cid).urgency is UrgencyTier.EMERGENCY
    bcc = taxonomy.get("basal_cell_carcinoma")
    assert bcc.urgency is UrgencyTier.SOON and bcc.notes
    assert taxonomy.get("cellulitis").urgency in (UrgencyTier.SOON, UrgencyTier.URGENT)
    assert taxonomy.get("cellulitis").notes
    assert taxonomy.get("melanocytic_nevus").urgency in (UrgencyTier.SELF_CARE, UrgencyTier.ROUTINE)


def test_malignancy_flags(taxonomy: Taxonomy) -> None:
    malignant = (
        "melanoma",
        "basal_cell_carcinoma",
        "squamous_cell_carcinoma",
        "merkel_cell_carcinoma",
        "kaposi_sarcoma",
    )
    for cid in malignant:
        cond = taxonomy.get(cid)
        assert cond.malignant and cond.is_malignant, cid
        assert cond.category == "malignant_neoplasm"
    for cid in ("melanocytic_nevus", "seborrheic_keratosis", "dermatofibroma"):
        assert not taxonomy.get(cid).is_malignant, cid
    assert taxonomy.get("actinic_keratosis").premalignant
    assert not taxonomy.get("actinic_keratosis").malignant


def test_exactly_the_six_pad_conditions_are_validated(taxonomy: Taxonomy) -> None:
    validated = taxonomy.validated_for(PAD_MODEL)
    assert {c.id for c in validated} == set(PAD_CODES.values())
    assert len(validated) == 6
    for cond in validated:
        assert "pad_ufes_20" in cond.dataset_codes
    assert taxonomy.validated_for("some-other-model") == []


def test_pad_codes_map_to_the_right_conditions(taxonomy: Taxonomy) -> None:
    mapped = {c.dataset_codes["pad_ufes_20"]: c.id for c in taxonomy.conditions if "pad_ufes_20" in c.dataset_codes}
    assert mapped == PAD_CODES


# ---------------------------------------------------------------- resolve / get


@pytest.mark.parametrize("code, expected", sorted(PAD_CODES.items()))
def test_resolve_pad_codes_any_case(taxonomy: Taxonomy, code: str, expected: str) -> None:
    assert taxonomy.resolve(code).id == expected
    assert taxonomy.resolve(code.lower()).id == expected


@pytest.mark.parametrize(
    "label, expected",
    [
        ("melanoma", "melanoma"),
        ("MELANOMA", "melanoma"),
        ("basal_cell_carcinoma", "basal_cell_carcinoma"),
        ("Basal Cell Carcinoma", "basal_cell_carcinoma"),
        ("  basal-cell   carcinoma ", "basal_cell_carcinoma"),
        ("mole", "melanocytic_nevus"),
        ("Mole", "melanocytic_nevus"),
        ("eczema", "atopic_dermatitis"),
        ("hives", "urticaria"),
        ("Shingles", "herpes_zoster"),
        ("ringworm", "tinea"),
        ("cold sore", "herpes_simplex"),
        ("atypical mole", "atypical_nevus"),
        ("Bowen's disease", "bowens_disease"),
        ("bowens disease", "bowens_disease"),
        ("Bowen\u2019s disease", "bowens_disease"),
        ("SJS", "sjs_ten"),
        ("toxic epidermal necrolysis", "sjs_ten"),
        ("akiec", "actinic_keratosis"),
        ("nv", "melanocytic_nevus"),
        ("bkl", "seborrheic_keratosis"),
    ],
)
def test_resolve_ids_names_synonyms(taxonomy: Taxonomy, label: str, expected: str) -> None:
    assert taxonomy.resolve(label).id == expected


def test_resolve_unknown_label_suggests(taxonomy: Taxonomy) -> None:
    with pytest.raises(UnknownLabelError) as info:
        taxonomy.resolve("melanomma")
    assert isinstance(info.value, ValueError)
    assert "melanoma" in info.value.suggestions
    assert "melanoma" in str(info.value)
    with pytest.raises(UnknownLabelError) as info:
        taxonomy.resolve("qwertyuiop")
    assert info.value.suggestions == []


def test_get_is_exact_with_helpful_key_error(taxonomy: Taxonomy) -> None:
    assert taxonomy.get("psoriasis").name == "psoriasis"
    with pytest.raises(KeyError, match="melanoma"):
        taxonomy.get("melanom")
    with pytest.raises(KeyError):
        taxonomy.get("Melanoma")  # ids are exact; resolve() is the lenient lookup
    assert "psoriasis" in taxonomy
    assert "nope" not in taxonomy


def test_normalize_label() -> None:
    assert normalize_label("  Stevens-Johnson_syndrome ") == "stevens johnson syndrome"
    assert normalize_label("Bowen's") == normalize_label("bowens")


# ---------------------------------------------------------------- prompts


def test_prompt_names_dedupe_and_lead_with_name(taxonomy: Taxonomy) -> None:
    for cond in taxonomy.conditions:
        names = cond.prompt_names
        assert names[0] == cond.name
        assert len({n.casefold() for n in names}) == len(names)
        assert not set(cond.abbreviations) & set(names)
    nevus = taxonomy.get("melanocytic_nevus")
    assert "mole" in nevus.prompt_names


def test_prompt_names_dedupe_case_insensitively(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(condition(raw, "psoriasis"))
    data["synonyms"] = ["plaque psoriasis", "Plaque psoriasis "]
    with pytest.raises(ValidationError):
        Condition.model_validate(data)
    data["synonyms"] = ["plaque psoriasis"]
    assert Condition.model_validate(data).prompt_names == ["psoriasis", "plaque psoriasis"]


def test_templates(taxonomy: Taxonomy) -> None:
    for modality in ("clinical", "dermoscopic"):
        templates = taxonomy.templates_for(modality)
        assert len(templates) >= 4
        assert all(t.count("{}") == 1 for t in templates)
        assert "melanoma" in templates[0].format("melanoma")
    assert taxonomy.templates_for("clinical") != taxonomy.templates_for("dermoscopic")
    taxonomy.templates_for("clinical").append("mutated {}")  # a copy: the taxonomy is unchanged
    assert "mutated {}" not in taxonomy.templates_for("clinical")
    assert taxonomy.reference_prompts.clinical == "This is a skin image."
    assert taxonomy.reference_prompts.dermoscopic == "This is a dermoscopic image."
    assert taxonomy.reference_prompt("dermoscopic") == "This is a dermoscopic image."
    with pytest.raises(ValueError):
        taxonomy.templates_for("histology")  # type: ignore[arg-type]
    prompts = taxonomy.prompts_for("urticaria", "clinical")
    assert len(prompts) == len(taxonomy.get("urticaria").prompt_names) * len(taxonomy.templates_for("clinical"))
    assert any("hives" in p for p in prompts)


# ---------------------------------------------------------------- subset / fingerprint


def test_subset_keeps_order_and_prunes_look_alikes(taxonomy: Taxonomy) -> None:
    sub = taxonomy.subset(["melanocytic_nevus", "melanoma", "melanoma"])
    assert sub.ids == ["melanocytic_nevus", "melanoma"]
    assert sub.get("melanoma").look_alikes == ["melanocytic_nevus"]
    assert sub.fingerprint != taxonomy.fingerprint
    assert sub.templates == taxonomy.templates
    with pytest.raises(KeyError):
        taxonomy.subset(["melanoma", "not_a_condition"])
    with pytest.raises(ValueError):
        taxonomy.subset([])


def test_fingerprint_is_stable_across_loads(taxonomy: Taxonomy, raw: dict[str, Any], tmp_path: Path) -> None:
    fp = taxonomy.fingerprint
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert load_taxonomy(DEFAULT_TAXONOMY_PATH).fingerprint == fp
    # Re-serialised YAML (no comments, other key order) has the same content, so the same fingerprint.
    assert load_taxonomy(write_yaml(tmp_path, raw)).fingerprint == fp


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: condition(d, "melanoma").update(notes="changed"),
        lambda d: condition(d, "urticaria")["synonyms"].append("welty rash"),
        lambda d: d["templates"]["clinical"].append("yet another photo of {}."),
        lambda d: d.update(version="0.0.0"),
        lambda d: condition(d, "psoriasis").update(urgency="soon"),
    ],
)
def test_fingerprint_changes_with_content(taxonomy: Taxonomy, raw: dict[str, Any], tmp_path: Path, mutate: Any) -> None:
    mutate(raw)
    assert load_taxonomy(write_yaml(tmp_path, raw)).fingerprint != taxonomy.fingerprint


# ---------------------------------------------------------------- invalid files


def assert_invalid(tmp_path: Path, data: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        load_taxonomy(write_yaml(tmp_path, data))


def test_dangling_look_alike_fails(raw: dict[str, Any], tmp_path: Path) -> None:
    condition(raw, "melanoma")["look_alikes"].append("no_such_condition")
    assert_invalid(tmp_path, raw, "no_such_condition")


def test_self_look_alike_fails(raw: dict[str, Any], tmp_path: Path) -> None:
    condition(raw, "melanoma")["look_alikes"].append("melanoma")
    assert_invalid(tmp_path, raw, "own look-alike")


def test_duplicate_id_fails(raw: dict[str, Any], tmp_path: Path) -> None:
    dup = copy.deepcopy(condition(raw, "psoriasis"))
    dup.update(name="psoriasis again", synonyms=[], dataset_codes={}, abbreviations=[])
    raw["conditions"].append(dup)
    assert_invalid(tmp_path, raw, "duplicate condition id 'psoriasis'")


def test_synonym_shared_by_two_conditions_fails(raw: dict[str, Any], tmp_path: Path) -> None:
    condition(raw, "contact_dermatitis")["synonyms"].append("HIVES")  # urticaria owns "hives"
    assert_invalid(tmp_path, raw, "(?i)synonym 'HIVES' is shared")


def test_label_colliding_with_other_name_fails(raw: dict[str, Any], tmp_path: Path) -> None:
    condition(raw, "rosacea")["synonyms"].append("Psoriasis")
    assert_invalid(tmp_path, raw, "ambiguous")


def test_dataset_code_mapped_twice_fails(raw: dict[str, Any], tmp_path: Path) -> None:
    condition(raw, "bowens_disease")["dataset_codes"] = {"pad_ufes_20": "SCC"}
    assert_invalid(tmp_path, raw, "pad_ufes_20 code 'SCC'")


@pytest.mark.parametrize(
    "template",
    ["a clinical photograph.", "a photo of {} and {}.", "a photo of {0}.", "a photo of {name}."],
)
def test_bad_template_fails(raw: dict[str, Any], tmp_path: Path, template: str) -> None:
    raw["templates"]["dermoscopic"].append(template)
    assert_invalid(tmp_path, raw, "exactly one")


def test_unknown_urgency_and_category_fail(raw: dict[str, Any], tmp_path: Path) -> None:
    condition(raw, "melanoma")["urgency"] = "asap"
    assert_invalid(tmp_path, raw, "urgency")
    raw2 = yaml.safe_load(DEFAULT_TAXONOMY_PATH.read_text(encoding="utf-8"))
    condition(raw2, "melanoma")["category"] = "cancerish"
    assert_invalid(tmp_path, raw2, "category")


def test_bad_codes_fail(raw: dict[str, Any], tmp_path: Path) -> None:
    condition(raw, "melanoma")["snomed_ct"]["code"] = "372244007"  # wrong Verhoeff check digit
    assert_invalid(tmp_path, raw, "SNOMED CT")
    raw2 = yaml.safe_load(DEFAULT_TAXONOMY_PATH.read_text(encoding="utf-8"))
    condition(raw2, "melanoma")["icd10"]["code"] = "melanoma"
    assert_invalid(tmp_path, raw2, "ICD-10")


def test_inconsistent_malignancy_fails(raw: dict[str, Any], tmp_path: Path) -> None:
    condition(raw, "melanocytic_nevus")["malignant"] = True
    assert_invalid(tmp_path, raw, "malignant")


def test_non_mapping_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ValueError, match="mapping"):
        load_taxonomy(path)
