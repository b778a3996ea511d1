"""Who may call: API keys (hashed in configuration, per-key token-bucket rate limits) for ``/v1`` and
``/fhir``, signed JWTs for CDS Hooks service calls, and the app-wide guard that enforces them."""
