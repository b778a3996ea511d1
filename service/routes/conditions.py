"""``GET /v1/conditions``: the taxonomy the service ranks."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from pydantic import BaseModel

from models.knowledge.taxonomy import Condition
from service.auth.guard import API_KEY_SECURITY
from service.engine import TriageEngine
from service.openapi import NOT_READY, problem_responses
from service.schemas import ICD10_CM, SNOMED_CT, CodeOut, condition_codes


class ConditionOut(BaseModel):
    id: str
    name: str
    synonyms: list[str]
    codes: list[CodeOut]
    malignant: bool
    premalignant: bool
    category: str
    urgency: str
    look_alikes: list[str]
    validated_models: list[str]
    validated_for_loaded_model: bool


class ConditionList(BaseModel):
    taxonomy_version: str
    count: int
    conditions: list[ConditionOut]


def condition_out(cond: Condition, model_name: str) -> ConditionOut:
    codes = condition_codes(cond)
    return ConditionOut(
        id=cond.id,
        name=cond.name,
        synonyms=cond.synonyms,
        codes=codes,
        malignant=cond.malignant,
        premalignant=cond.premalignant,
        category=cond.category,
        urgency=cond.urgency.value,
        look_alikes=cond.look_alikes,
        validated_models=cond.validated_models,
        validated_for_loaded_model=model_name in cond.validated_models,
    )


_EXAMPLE = {
    "taxonomy_version": "2025.1",
    "count": 1,
    "conditions": [
        {
            "id": "melanoma",
            "name": "melanoma",
            "synonyms": ["malignant melanoma", "cutaneous melanoma"],
            "codes": [
                {"system": SNOMED_CT, "code": "372244006", "display": "Malignant melanoma"},
                {"system": ICD10_CM, "code": "C43.9", "display": "Malignant melanoma of skin, unspecified"},
            ],
            "malignant": True,
            "premalignant": False,
            "category": "malignant_neoplasm",
            "urgency": "urgent",
            "look_alikes": ["atypical_nevus", "melanocytic_nevus", "seborrheic_keratosis"],
            "validated_models": ["embedded-pad-lite0"],
            "validated_for_loaded_model": True,
        }
    ],
}


class ConditionsController(Controller):
    path = "/v1/conditions"
    tags = ("taxonomy",)
    security = API_KEY_SECURITY  # OpenAPI: every /v1 route needs an API key unless auth is off

    @get(
        "/",
        summary="The condition taxonomy: ids, names, codes, malignancy, urgency tier, validated models",
        responses={
            200: ResponseSpec(ConditionList, examples=[Example(summary="one condition shown", value=_EXAMPLE)]),
            **problem_responses(NOT_READY),
        },
        sync_to_thread=False,
    )
    def conditions(self, engine: NamedDependency[TriageEngine]) -> ConditionList:
        name = engine.model_ref.name
        items = [condition_out(c, name) for c in engine.taxonomy.conditions]
        return ConditionList(taxonomy_version=engine.taxonomy.version, count=len(items), conditions=items)
