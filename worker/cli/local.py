"""Commands that run things on this machine: the ACS emulator and the demo."""

from __future__ import annotations

import json
import secrets
import sys
from typing import Any

import click

from worker.cli.common import LISTEN_ERRORS, listen_failure, settings
from worker.config import AcsCredentials


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8089, show_default=True, type=int)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Serve https with this certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Private key of --tls-cert.")
@click.option("--faults", "faults_file", type=click.File(), help="Initial fault plan (JSON, as PUT /_emulator/faults).")
@click.option(
    "--entra-client",
    "entra_clients",
    multiple=True,
    metavar="CLIENT_ID=SECRET",
    help="Issue Microsoft Entra ID tokens to this client (repeatable); azure-identity needs --tls-cert for it.",
)
@click.option("--token-lifetime", default=3600, show_default=True, type=click.IntRange(min=1), help="Seconds.")
@click.option(
    "--max-logged-requests",
    default=100_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many requests GET /_emulator/requests keeps (the oldest go first).",
)
def emulator(
    host: str,
    port: int,
    tls_cert: str | None,
    tls_key: str | None,
    faults_file: Any,
    entra_clients: tuple[str, ...],
    token_lifetime: int,
    max_logged_requests: int,
) -> None:
    """Run the local ACS emulator, verifying signatures with the key in ACS_CONNECTION_STRING (without it, with a
    key made for this run, printed as the connection string to use) and the Microsoft Entra ID tokens it issues
    to --entra-client clients."""
    import ssl  # noqa: PLC0415

    from worker.emulator import EmulatorConfig, FaultPlan, run_emulator  # noqa: PLC0415
    from worker.emulator.config import DEFAULT_RESOURCE_ID  # noqa: PLC0415
    from worker.emulator.entra import EntraConfig  # noqa: PLC0415

    clients = dict(client.partition("=")[::2] for client in entra_clients)
    if not all(clients) or not all(clients.values()):
        raise click.BadParameter("each must be CLIENT_ID=SECRET", param_hint="--entra-client")
    config = settings()
    scheme = "https" if tls_cert else "http"
    reachable = f"{scheme}://{'127.0.0.1' if host in {'0.0.0.0', '::', ''} else host}:{port}"  # noqa: S104
    if config.acs_connection_string:
        key = config.acs.access_key
    else:
        key = secrets.token_bytes(32)
        if not clients:
            click.echo("ACS_CONNECTION_STRING is not set: this emulator made a key for this run.", err=True)
            click.echo(f"export ACS_CONNECTION_STRING='{AcsCredentials(reachable, key).connection_string()}'")
    # What `acs-transfer serve` needs to verify this emulator's signed outcome events.
    click.echo(f"export ACS_RESOURCE_ID={DEFAULT_RESOURCE_ID} CALLBACK_JWKS_URL={reachable}/calling/keys")
    click.echo(
        "Workers, producers and `acs-transfer serve` use the export lines above (paste them into their shells).",
        err=True,
    )
    faults = FaultPlan.from_json(json.load(faults_file)) if faults_file else FaultPlan()
    context = None
    if tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    entra = EntraConfig(clients=clients, token_lifetime=token_lifetime)
    if clients:
        click.echo(f"Microsoft Entra ID authority {reachable}, tenant {entra.tenant_id}", err=True)
    emulation = EmulatorConfig(access_key=key, faults=faults, entra=entra, max_logged_requests=max_logged_requests)
    try:
        run_emulator(emulation, host, port, ssl_context=context)
    except OSError as error:
        if error.errno not in LISTEN_ERRORS:
            raise
        raise click.ClickException(listen_failure(host, port, error)) from None


@click.command()
@click.option("--jobs", default=300, show_default=True, help="How many transfers to enqueue.")
@click.option("--fault-rate", default=0.3, show_default=True, help="Share of requests that meet a fault.")
@click.option("--latency-ms", default=20, show_default=True, help="Emulated ACS processing time.")
@click.option("--seed", default=None, type=int, help="Seed for the emulator's faults (printed when random).")
@click.option("--timeout", default=120.0, show_default=True, help="Give up waiting after this many seconds.")
@click.option("--keep", is_flag=True, help="Keep the demo's folder (ledger, logs) even when all went well.")
def demo(jobs: int, fault_rate: float, latency_ms: int, seed: int | None, timeout: float, keep: bool) -> None:
    """Emulator + worker + embedded broker and ledger: enqueue transfers under faults, check every outcome."""
    from worker.cli.demo import run_demo  # noqa: PLC0415

    sys.exit(run_demo(jobs=jobs, fault_rate=fault_rate, latency_ms=latency_ms, seed=seed, timeout=timeout, keep=keep))
