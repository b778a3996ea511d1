"""HTTP controllers, one module per resource."""

from service.routes.conditions import ConditionsController
from service.routes.health import HealthController
from service.routes.metrics import MetricsController
from service.routes.model_cards import ModelsController
from service.routes.triage import TriageController

CONTROLLERS = [TriageController, ConditionsController, ModelsController, HealthController, MetricsController]

__all__ = ["CONTROLLERS"]
