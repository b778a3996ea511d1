"""A real SMART EHR for the tests, on 127.0.0.1 in a thread: an OAuth 2 authorization server built with
Authlib's Flask AuthorizationServer (authorization code with PKCE S256 required, patient launch context,
client credentials with a private_key_jwt assertion for Backend Services) and a FHIR server that serves
fixture resources only to a valid, unexpired bearer token it issued."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Flask, Response, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from werkzeug.serving import make_server

PATIENT = "p1"


@dataclass
class Client:
    client_id: str
    redirect_uris: tuple[str, ...] = ()
    secret: str | None = None
    auth_method: str = "none"
    grant_types: tuple[str, ...] = ("authorization_code",)
    jwks: dict[str, Any] | None = None

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, secret: str) -> bool:
        return self.secret is not None and secret == self.secret

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    code_challenge: str | None
    code_challenge_method: str | None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class SmartEhr:
    port: int = 0
    clients: dict[str, Client] = field(default_factory=dict)
    codes: dict[str, Code] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> expiry (epoch seconds)
    resources: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # path prefix -> (type, body)
    fhir_requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, bearer)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    discoveries: int = 0
    token_requests: list[dict[str, str]] = field(default_factory=list)
    deny: bool = False
    token_lifetime: int = 300
    app_context: str | None = None
    jtis: set[str] = field(default_factory=set)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def fhir(self) -> str:
        return f"{self.origin}/fhir"

    @property
    def token_url(self) -> str:
        return f"{self.origin}/oauth/token"

    def serve_json(self, path: str, value: dict[str, Any]) -> None:
        self.resources[path] = ("application/fhir+json", json.dumps(value).encode())

    def serve_bytes(self, path: str, body: bytes, content_type: str) -> None:
        self.resources[path] = (content_type, body)


def _grants(ehr: SmartEhr) -> tuple[type, type, type]:
    class CodeGrant(grants.AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "none"]  # noqa: RUF012

        def save_authorization_code(self, code: str, req: Any) -> None:
            args = request.args
            ehr.codes[code] = Code(
                code,
                req.client.client_id,
                args.get("redirect_uri", ""),
                args.get("scope", ""),
                args.get("code_challenge"),
                args.get("code_challenge_method"),
            )

        def query_authorization_code(self, code: str, client: Client) -> Code | None:
            item = ehr.codes.get(code)
            return item if item is not None and item.client_id == client.client_id else None

        def delete_authorization_code(self, authorization_code: Code) -> None:
            ehr.codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code: Code) -> str:
            return "Practitioner/dr1"

    class BackendGrant(grants.ClientCredentialsGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = [JWTBearerClientAssertion.CLIENT_AUTH_METHOD]  # noqa: RUF012

    class Assertion(JWTBearerClientAssertion):
        def get_audiences(self) -> list[str]:
            return [ehr.token_url]

        def validate_jti(self, claims: Any, jti: str) -> bool:
            if jti in ehr.jtis:
                return False
            ehr.jtis.add(jti)
            return True

        def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
            """SMART Backend Services signs RS384 or ES384 (joserfc accepts RS384 only when asked)."""
            try:
                token = jwt.decode(assertion, resolve_key, algorithms=["RS384", "ES384"])
            except JoseError as exc:
                raise InvalidClientError(description=exc.description) from exc
            self.verify_claims(token.claims)
            return token.claims

        def resolve_client_public_key(self, client: Client) -> Any:
            return KeySet.import_key_set(client.jwks or {"keys": []})

    return CodeGrant, BackendGrant, Assertion


def _app(ehr: SmartEhr) -> Flask:
    app = Flask("smart-ehr")

    def save_token(token: dict[str, Any], req: Any) -> None:
        token["expires_in"] = ehr.token_lifetime
        if req.grant_type == "authorization_code":
            token["patient"] = PATIENT
            if ehr.app_context is not None:
                token["appContext"] = ehr.app_context
        ehr.tokens[token["access_token"]] = time.time() + ehr.token_lifetime

    server = AuthorizationServer(app, query_client=ehr.clients.get, save_token=save_token)
    code_grant, backend_grant, assertion = _grants(ehr)
    server.register_grant(code_grant, [CodeChallenge(required=True)])
    server.register_grant(backend_grant)
    server.register_client_auth_method(assertion.CLIENT_AUTH_METHOD, assertion())

    @app.get("/fhir/.well-known/smart-configuration")
    def smart_configuration() -> Any:
        ehr.discoveries += 1
        return {
            "authorization_endpoint": f"{ehr.origin}/oauth/authorize",
            "token_endpoint": ehr.token_url,
            "code_challenge_methods_supported": ["S256"],
            "capabilities": ["launch-ehr", "client-public", "client-confidential-symmetric", "context-ehr-patient"],
        }

    @app.get("/oauth/authorize")
    def authorize() -> Any:
        ehr.authorize_requests.append(dict(request.args))
        if request.args.get("aud") != ehr.fhir or request.args.get("launch") != "launch-123":
            return Response("bad aud or launch", status=400)
        return server.create_authorization_response(grant_user=None if ehr.deny else "Practitioner/dr1")

    @app.post("/oauth/token")
    def token() -> Any:
        ehr.token_requests.append(dict(request.form))
        return server.create_token_response()

    @app.get("/fhir/<path:rest>")
    def fhir(rest: str) -> Any:
        auth = request.headers.get("Authorization", "")
        bearer = auth[7:] if auth.startswith("Bearer ") else None
        full = request.full_path.rstrip("?")
        ehr.fhir_requests.append((full, bearer))
        if bearer is None or ehr.tokens.get(bearer, 0) <= time.time():
            return Response('{"resourceType": "OperationOutcome"}', status=401, content_type="application/fhir+json")
        for prefix, (kind, body) in ehr.resources.items():
            if full.startswith(prefix):
                return Response(body, content_type=kind)
        return Response('{"resourceType": "OperationOutcome"}', status=404, content_type="application/fhir+json")

    return app


@contextmanager
def smart_ehr() -> Iterator[SmartEhr]:
    ehr = SmartEhr()
    server = make_server("127.0.0.1", 0, _app(ehr), threaded=True)
    ehr.port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ehr
    finally:
        server.shutdown()
