"""``GET /v1/models`` and ``GET /v1/models/{name}``: the loaded model, the registry, model cards."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Parameter
from pydantic import BaseModel, Field

from models.backends.base import ModelCard
from models.backends.registry import ModelSpec
from service.auth.guard import API_KEY_SECURITY
from service.engine import TriageEngine
from service.openapi import NOT_READY, problem_example, problem_responses
from service.problems import Problem
from service.runtime import ServiceState
from service.schemas import ModelRef


class LoadedModel(BaseModel):
    ref: ModelRef
    device: str
    card: ModelCard


class SpecOut(BaseModel):
    name: str
    backend: str
    source: str
    loaded: bool
    card: ModelCard | None = None


class ModelList(BaseModel):
    loaded: LoadedModel = Field(description="the default model: every photo kind not routed elsewhere")
    routed: dict[str, LoadedModel] = Field(
        default_factory=dict, description="photo kind (modality) -> the model that answers it instead"
    )
    available: list[SpecOut]


_CARD_EXAMPLE = {
    "name": "embedded-pad-lite0",
    "version": "1.1.0",
    "family": "open_clip CustomTextCLIP: timm tf_efficientnet_lite0 + HF all-MiniLM-L6-v2 (mean pooled)",
    "source": "models/embedded",
    "license": "Apache-2.0",
    "modality": ["clinical"],
    "card_url": "/v1/models/embedded-pad-lite0",
    "validated_conditions": ["melanoma", "basal_cell_carcinoma"],
    "limitations": ["Decision support, not a diagnosis."],
}
_REF_EXAMPLE = {"name": "embedded-pad-lite0", "version": "1.1.0", "card_url": "/v1/models/embedded-pad-lite0"}
_LIST_EXAMPLE = {
    "loaded": {"ref": _REF_EXAMPLE, "device": "cpu", "card": _CARD_EXAMPLE},
    "available": [
        {
            "name": "embedded-pad-lite0",
            "backend": "embedded",
            "source": "models/embedded",
            "loaded": True,
            "card": _CARD_EXAMPLE,
        },
        {"name": "openai-vit-b32", "backend": "open_clip", "source": "ViT-B-32", "loaded": False, "card": None},
    ],
}


def _spec_out(spec: ModelSpec, cards: dict[str, ModelCard], loaded_names: set[str]) -> SpecOut:
    return SpecOut(
        name=spec.name,
        backend=spec.backend,
        source=spec.source,
        loaded=spec.name in loaded_names,
        card=cards.get(spec.name),
    )


def _loaded(engine: TriageEngine) -> LoadedModel:
    return LoadedModel(ref=engine.model_ref, device=str(engine.model.device), card=engine.model.card)


class ModelsController(Controller):
    path = "/v1/models"
    tags = ("models",)
    security = API_KEY_SECURITY  # OpenAPI: every /v1 route needs an API key unless auth is off

    @get(
        "/",
        summary="The loaded model with its card, and every model the registry knows",
        responses={
            200: ResponseSpec(ModelList, examples=[Example(summary="embedded default", value=_LIST_EXAMPLE)]),
            **problem_responses(NOT_READY),
        },
        sync_to_thread=False,
    )
    def list_models(self, engine: NamedDependency[TriageEngine], service: NamedDependency[ServiceState]) -> ModelList:
        names = {e.model.card.name for e in service.engines()}
        return ModelList(
            loaded=_loaded(engine),
            routed={m: _loaded(e) for m, e in service.modality_engines.items()},
            available=[_spec_out(s, service.cards, names) for s in service.specs],
        )

    @get(
        "/{name:str}",
        summary="One model's card (the loaded model's, or a registry spec's)",
        responses={
            200: ResponseSpec(ModelCard, examples=[Example(summary="embedded default", value=_CARD_EXAMPLE)]),
            **problem_responses(
                (
                    404,
                    problem_example(
                        "unknown-model",
                        404,
                        "Unknown model",
                        "No model named 'x'; known: biomedclip, embedded-pad-lite0, openai-vit-b32.",
                    ),
                ),
                NOT_READY,
            ),
        },
        sync_to_thread=False,
    )
    def model_card(
        self,
        engine: NamedDependency[TriageEngine],
        service: NamedDependency[ServiceState],
        name: str = Parameter(description="model name", examples=[Example(value="embedded-pad-lite0")]),
    ) -> ModelCard:
        for e in service.engines():
            if name == e.model.card.name:
                return e.model.card
        if name in service.cards:
            return service.cards[name]
        known = sorted({engine.model.card.name, *service.cards})
        raise Problem(
            "unknown-model", 404, f"No model card for {name!r}; known: {', '.join(known)}.", title="Unknown model"
        )
