"""The HTTP ceiling: one process, one event loop, one aiohttp session, N signed POSTs with C in flight; no broker.

    python -m bench.rawload --jobs 1000 --concurrency 64 --start-at T --out results.tsv

Reads the emulator's address and key from ACS_CONNECTION_STRING. Writes ``<id> <sent> <answered> <status>``
per request (unix times) to --out, and its CPU seconds (measured part) and peak RSS beside it (``.json``). Warms its
connections up before `--start-at`, so the measured part is steady state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import aiohttp

from bench.support import high_water_bytes
from bench.wire import BODY, transfer_request
from worker.config import AcsCredentials


async def _post(session: aiohttp.ClientSession, credentials: AcsCredentials, call_connection_id: str) -> int:
    url, headers = transfer_request(credentials, call_connection_id)
    async with session.post(url, data=BODY, headers=headers) as response:
        await response.read()
        return response.status


async def run(jobs: int, concurrency: int, warmup: int, start_at: float, deadline: float, out: Path) -> None:
    credentials = AcsCredentials.from_connection_string(os.environ["ACS_CONNECTION_STRING"])
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10, connect=5)
    results: list[str] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(_post(session, credentials, f"warmup-{uuid.uuid4()}") for _ in range(warmup)))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu_before = time.process_time()
        remaining = iter(range(jobs))

        async def lane() -> None:
            # Each lane sends one request at a time until the shared count runs out or time is up.
            for _ in remaining:
                if time.time() > deadline:
                    return
                call_connection_id = str(uuid.uuid4())
                sent = time.time()
                try:
                    status = await _post(session, credentials, call_connection_id)
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                results.append(f"{call_connection_id} {sent:.6f} {time.time():.6f} {status}\n")

        await asyncio.gather(*(lane() for _ in range(concurrency)))
        cpu = time.process_time() - cpu_before
    out.write_text("".join(results))
    # The harness cannot read the usage of a process that has exited: report it here.
    # VmHWM, not getrusage: ru_maxrss also counts the forked parent's pages from before exec.
    peak_rss = high_water_bytes(os.getpid())
    out.with_suffix(".json").write_text(json.dumps({"cpu_seconds": cpu, "peak_rss_bytes": peak_rss}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=0, help="requests sent before --start-at, not recorded")
    parser.add_argument("--start-at", type=float, default=0.0, help="unix time to start the measured part")
    parser.add_argument("--time-limit", type=float, default=600.0, help="stop sending after this many seconds")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    deadline = max(time.time(), args.start_at) + args.time_limit
    asyncio.run(run(args.jobs, args.concurrency, args.warmup, args.start_at, deadline, args.out))


if __name__ == "__main__":
    main()
