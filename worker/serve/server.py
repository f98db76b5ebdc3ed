"""`acs-transfer serve`: one aiohttp server for the outcome-event receiver and the HTTP intake."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
from aiohttp import web

from worker.config import Settings
from worker.errors import ConfigError
from worker.health import probes
from worker.ledger import Ledger
from worker.logs import get_logger, register_secret
from worker.processes import stop_signal
from worker.queue.app import create_app as create_celery_app
from worker.queue.publisher import Publisher
from worker.serve import callbacks, intake
from worker.serve.tokens import TokenVerifier

log = get_logger(__name__)


async def create_server_app(settings: Settings) -> web.Application:
    """The application with its resources opened (ledger pool, HTTP session); they close with the app."""
    settings.check()
    if settings.callback_verify and not settings.acs_resource_id:
        raise ConfigError(
            "ACS_RESOURCE_ID must be set to verify callback tokens (or CALLBACK_VERIFY=false for local development)"
        )
    for token in settings.intake_tokens:
        register_secret(token)
    ledger = await Ledger.open(settings.ledger_url)
    session = aiohttp.ClientSession()
    verifier = None
    if settings.callback_verify:
        assert settings.acs_resource_id is not None
        verifier = TokenVerifier(
            settings.callback_jwks_url, settings.callback_issuer, settings.acs_resource_id, session
        )
    else:
        log.warning(
            "callback.verification_disabled",
            detail="CALLBACK_VERIFY=false: anyone who can reach this server can settle jobs; local development only",
        )
    publisher = Publisher(create_celery_app(settings), settings)
    app = web.Application(client_max_size=settings.intake_max_body, middlewares=[intake.json_errors])
    app.add_routes(callbacks.routes(ledger, verifier))
    app.add_routes(intake.routes(settings, ledger, publisher))
    app.add_routes(probes.routes(settings, ledger, publisher.queue_depths))
    if not settings.intake_tokens:
        log.warning("intake.disabled", detail="INTAKE_TOKENS is not set: every intake request is refused")

    async def close(_: web.Application) -> None:
        await session.close()
        await ledger.close()

    app.on_cleanup.append(close)
    return app


def run_server(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly; after SIGINT (Ctrl-C) raise KeyboardInterrupt, as
    any Python program does, so that the command can say it was interrupted. (aiohttp's `run_app` ends both the
    same way, which is why it is not used.)"""
    if asyncio.run(_serve(settings)) == signal.SIGINT:
        raise KeyboardInterrupt


async def _serve(settings: Settings) -> int:
    host, port = settings.serve_host, settings.serve_port
    shown = f"[{host}]" if ":" in host else host
    runner = web.AppRunner(await create_server_app(settings), handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("server.listening", url=f"http://{shown}:{port}", host=host, port=port)
        return await stop_signal()
    finally:
        await runner.cleanup()
