"""A local Microsoft Entra ID authority: a token endpoint azure-identity can be pointed at, and verification of
the bearer tokens it issued, so the real credential classes run end to end against the emulator.

    POST /{tenant}/oauth2/v2.0/token                          client credentials grant (a client secret, or a
                                                              client assertion as workload identity sends)
    GET  /{tenant}/v2.0/.well-known/openid-configuration      what MSAL-based (sync) credentials read first
    GET  /_emulator/tokens                                     how many tokens were issued and refused

azure-identity accepts only an https authority, so the emulator is served with TLS for this (`--tls-cert`) and
the client trusts its certificate (``SSL_CERT_FILE``, or ``connection_verify=`` in code). Point it here with
``AZURE_AUTHORITY_HOST=https://127.0.0.1:<port>`` (the async credentials post straight to the token endpoint;
sync ones also need ``disable_instance_discovery=True``).

Tokens are RS256 JWTs for the audience ``https://communication.azure.com`` with a configurable lifetime, so a test
can make them expire every few seconds.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

AUDIENCE = "https://communication.azure.com"
#: what a request for the ACS resource may ask for (the SDKs send the resource URI, a slash, then ".default")
_SCOPES = frozenset({f"{AUDIENCE}/.default", f"{AUDIENCE}//.default"})
_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_TENANT = "00000000-0000-0000-0000-00000000e17a"
REVOKED = "the token was revoked"


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True)
class EntraConfig:
    """Which clients get tokens (client id -> its secret, or the federated token it presents), in which tenant,
    for how long; and the key that signs them (by default each emulator makes its own when first needed)."""

    clients: Mapping[str, str] = field(default_factory=dict, repr=False)
    tenant_id: str = DEFAULT_TENANT
    token_lifetime: int = 3600
    key: rsa.RSAPrivateKey | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.token_lifetime < 1:
            raise ValueError("token_lifetime must be at least one second")

    @property
    def issuer(self) -> str:
        return f"https://sts.windows.net/{self.tenant_id}/"


class EntraIssuer:
    """Issues tokens to known clients and verifies them; counts both for tests."""

    def __init__(self, config: EntraConfig) -> None:
        self.config = config
        #: client id -> secret (or federated token); tests may change it, as when a secret is rotated
        self.clients = dict(config.clients)
        self.key_id = uuid.uuid4().hex
        self.issued = 0
        self.refused = 0
        self._key = config.key
        self._live: set[str] = set()  # ids of the tokens issued and not revoked
        self._revoked: set[str] = set()

    def __repr__(self) -> str:
        return f"EntraIssuer(tenant={self.config.tenant_id!r}, issued={self.issued}, refused={self.refused})"

    @property
    def key(self) -> rsa.RSAPrivateKey:
        # Made on first use: most emulators never see a token, and a 2048-bit key takes a tenth of a second.
        if self._key is None:
            self._key = _new_key()
        return self._key

    def revoke_all(self) -> int:
        """Revoke every token issued so far (as when a credential is disabled): ACS answers 401 with a claims
        challenge, and the client must fetch a new token. Returns how many were revoked."""
        self._revoked |= self._live
        revoked, self._live = len(self._live), set()
        return revoked

    def challenge(self, now: float) -> str:
        """A Continuous Access Evaluation challenge: the claims a new token must satisfy, base64 JSON."""
        claims = json.dumps({"access_token": {"nbf": {"essential": True, "value": str(int(now))}}})
        encoded = base64.b64encode(claims.encode()).decode()
        return f'Bearer error="insufficient_claims", error_description="the token was revoked", claims="{encoded}"'

    def issue(self, client_id: str, now: float) -> str:
        issued = int(now)
        token_id = uuid.uuid4().hex
        self._live.add(token_id)
        claims = {
            "uti": token_id,
            "aud": AUDIENCE,
            "iss": self.config.issuer,
            "tid": self.config.tenant_id,
            "appid": client_id,
            "sub": client_id,
            "iat": issued,
            "nbf": issued,
            "exp": issued + self.config.token_lifetime,
        }
        self.issued += 1
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.key_id})

    def verify(self, token: str, now: float) -> str | None:
        """None when `token` is one this authority issued, for ACS, not expired nor revoked; else why not (never
        the token)."""
        try:
            claims = jwt.decode(
                token,
                self.key.public_key(),
                algorithms=["RS256"],
                audience=[AUDIENCE, f"{AUDIENCE}/"],
                issuer=self.config.issuer,
                options={"require": ["exp", "iat", "nbf", "aud", "iss", "uti"]},
            )
        except jwt.ExpiredSignatureError:
            return "the token has expired"
        except jwt.InvalidAudienceError:
            return f"the token is not for {AUDIENCE}"
        except jwt.InvalidIssuerError:
            return "the token was not issued by this tenant"
        except jwt.InvalidSignatureError:
            return "the token's signature does not match"
        except jwt.InvalidTokenError as error:
            return f"the token is not valid ({type(error).__name__})"
        if claims["uti"] in self._revoked:
            return REVOKED
        return None

    def grant(self, tenant: str, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """The token endpoint's answer (status, JSON body) to a client credentials request, as Entra ID words it."""
        if tenant != self.config.tenant_id:
            return self._refuse(400, "invalid_tenant", f"AADSTS90002: Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return self._refuse(400, "unsupported_grant_type", "AADSTS70003: only client_credentials is supported.")
        if form.get("scope", "") not in _SCOPES:
            return self._refuse(400, "invalid_scope", f"AADSTS70011: the scope must be {AUDIENCE}/.default.")
        client_id = form.get("client_id", "")
        expected = self.clients.get(client_id)
        if expected is None:
            return self._refuse(400, "unauthorized_client", f"AADSTS700016: Application '{client_id}' not found.")
        if form.get("client_assertion_type") == _ASSERTION_TYPE:
            presented, what = form.get("client_assertion", ""), "client assertion"
        else:
            presented, what = form.get("client_secret", ""), "client secret"
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            return self._refuse(401, "invalid_client", f"AADSTS7000215: Invalid {what} provided.")
        lifetime = self.config.token_lifetime
        token = self.issue(client_id, time.time())
        return 200, {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}

    def _refuse(self, status: int, error: str, description: str) -> tuple[int, dict[str, Any]]:
        self.refused += 1
        return status, {"error": error, "error_description": description, "error_codes": []}


ISSUER: web.AppKey[EntraIssuer] = web.AppKey("acs_emulator_entra", EntraIssuer)


def add_routes(app: web.Application, issuer: EntraIssuer) -> None:
    app[ISSUER] = issuer
    app.router.add_post("/{tenant}/oauth2/v2.0/token", _token)
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", _openid_configuration)
    app.router.add_get("/_emulator/tokens", _counts)


async def _token(request: web.Request) -> web.Response:
    form = {name: str(value) for name, value in (await request.post()).items()}
    status, body = request.app[ISSUER].grant(request.match_info["tenant"], form)
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


async def _openid_configuration(request: web.Request) -> web.Response:
    tenant = request.match_info["tenant"]
    base = f"{request.scheme}://{request.host}/{tenant}"
    return web.json_response(
        {
            "issuer": request.app[ISSUER].config.issuer,
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        }
    )


async def _counts(request: web.Request) -> web.Response:
    issuer = request.app[ISSUER]
    return web.json_response({"issued": issuer.issued, "refused": issuer.refused})
