"""SMART on FHIR clients: the viewer's EHR launch (authorization code + PKCE) and Backend Services
(client credentials with a signed JWT) for server-side reads.

- :mod:`service.smart.config`: per-EHR client configuration (``DERMTRIAGE_SMART_CLIENTS``).
"""
