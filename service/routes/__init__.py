"""HTTP controllers, one module per resource."""

from service.routes.cases import CasesController
from service.routes.cds_hooks import CdsHooksController
from service.routes.conditions import ConditionsController
from service.routes.fhir import FhirController
from service.routes.health import HealthController
from service.routes.lesions import LesionsController
from service.routes.metrics import MetricsController
from service.routes.model_cards import ModelsController
from service.routes.monitoring import MonitoringController
from service.routes.smart import SmartLaunchController
from service.routes.triage import TriageController
from service.routes.viewer import VIEWER_HANDLERS

CONTROLLERS = [
    TriageController,
    CasesController,
    LesionsController,
    MonitoringController,
    ConditionsController,
    ModelsController,
    HealthController,
    MetricsController,
    FhirController,
    CdsHooksController,
    SmartLaunchController,
    *VIEWER_HANDLERS,
]

__all__ = ["CONTROLLERS"]
