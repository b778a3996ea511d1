"""``dermtriage serve``: validate the configuration, then run uvicorn on ``service.app:create_app``.

CLI flags are exported as ``DERMTRIAGE_*`` variables before uvicorn starts, so every worker process
builds the same :class:`Settings` (flags override the environment, which overrides defaults).
"""

from __future__ import annotations

import logging
import logging.config
import os
import sys
from typing import Any

from pydantic import ValidationError

from service.logs import logging_config
from service.settings import Settings

log = logging.getLogger("dermtriage.service")


def serve(overrides: dict[str, Any]) -> int:
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        print(f"error: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    from models.registry import get_spec

    try:
        get_spec(settings.model)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    for key, value in given.items():
        os.environ[Settings.env_name(key)] = str(value)

    import uvicorn

    config = logging_config(settings.log_level)
    logging.config.dictConfig(config)
    log.info(
        "starting",
        extra={
            "url": f"http://{settings.host}:{settings.port}",
            "model": settings.model,
            "device": settings.device,
            "workers": settings.workers,
        },
    )
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=config,
        log_level=settings.log_level,
        access_log=False,  # the app writes its own access lines (with request ids)
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    return 0
