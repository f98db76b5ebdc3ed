"""What the throughput harness needs around the modes: child processes, their memory, the emulator's control
endpoints, percentiles and py-spy output."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from worker.processes import stop

ROOT = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def spawn(command: Sequence[str], env: Mapping[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    """A child in its own process group, so `stop` reaches everything it forks and Ctrl-C reaches only us."""
    with log_file.open("ab") as output:
        return subprocess.Popen(
            list(command), env=dict(env), cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def python(*arguments: str) -> list[str]:
    return [sys.executable, *arguments]


def group_pids(pgids: Iterable[int]) -> list[int]:
    """Every live process in these process groups (a prefork worker's children included)."""
    wanted = set(pgids)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ")".
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 2 and int(fields[2]) in wanted:
            found.append(int(entry.name))
    return found


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def busy_share(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds`, from /proc/stat: how loaded the machine is before a mode starts."""

    def totals() -> tuple[int, int]:
        values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values[:8]) - idle, sum(values[:8])

    busy_before, all_before = totals()
    time.sleep(seconds)
    busy_after, all_after = totals()
    return (busy_after - busy_before) / max(all_after - all_before, 1)


def high_water_bytes(pid: int) -> int:
    """The process's own peak RSS (VmHWM), which no sampling interval can miss."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class Sampler:
    """Samples the summed RSS of some process groups every `interval` seconds in a daemon thread, and the CPU
    time they used between enter and exit."""

    def __init__(self, pgids: Iterable[int], interval: float = 0.5) -> None:
        self.pgids = list(pgids)
        self.interval = interval
        self.peak_total = 0
        self.peak_process = 0
        self.samples: list[tuple[float, int]] = []
        self.cpu_seconds = 0.0
        self._cpu_start: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._cpu_start = {pid: cpu_seconds(pid) for pid in group_pids(self.pgids)}
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()  # the high-water marks of the processes that are still alive
        pids = group_pids(self.pgids)
        self.cpu_seconds = sum(cpu_seconds(pid) - self._cpu_start.get(pid, 0.0) for pid in pids)

    def sample(self) -> None:
        pids = group_pids(self.pgids)
        total = sum(rss_bytes(pid) for pid in pids)
        self.samples.append((time.time(), total))
        self.peak_total = max(self.peak_total, total)
        self.peak_process = max([self.peak_process, *(high_water_bytes(pid) for pid in pids)])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


def requests_seen(url: str) -> int:
    """How many requests the emulator at `url` has had since its last reset: a cheap poll (no call has an empty
    id, so the log it lists is empty)."""
    with urllib.request.urlopen(f"{url}/_emulator/requests?call=", timeout=10) as response:
        return int(json.load(response)["total"])


class Emulator:
    """The emulator child process and its unauthenticated ``/_emulator/*`` endpoints."""

    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process = process
        self.url = url

    def _call(self, method: str, path: str, payload: object = None, timeout: float = 60.0) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)

    def reset(self, latency_ms: float) -> None:
        """Forget every request, record and effect; a reset clears the fault plan too, so set the latency again."""
        self._call("POST", "/_emulator/reset")
        self._call("PUT", "/_emulator/faults", {"latency_ms": latency_ms})

    def requests(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/_emulator/requests")["requests"])

    def requests_seen(self) -> int:
        return requests_seen(self.url)

    def transfers(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_emulator/transfers"))

    def close(self) -> None:
        stop(self.process)


def first_arrivals(requests: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Per call: when its first request reached the emulator."""
    arrived: dict[str, float] = {}
    for entry in requests:
        arrived.setdefault(entry["callConnectionId"], float(entry["at"]))
    return arrived


def first_accepted(requests: Iterable[Mapping[str, Any]]) -> tuple[dict[str, float], Counter[str], Counter[int]]:
    """Per call: when its first 202 was answered; how many requests each call took; every status seen."""
    answered: dict[str, float] = {}
    per_call: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    for entry in requests:
        call = entry["callConnectionId"]
        per_call[call] += 1
        statuses[entry["status"] or 0] += 1
        if entry["status"] == 202 and call not in answered and entry["answeredAt"] is not None:
            answered[call] = float(entry["answeredAt"])
    return answered, per_call, statuses


_PROBLEMS = ('"level": "error"', '"level": "critical"', '"level":"error"', '"level":"critical"', "ERROR/", "CRITICAL/")


def log_problems(logs: Iterable[Path], keep: int = 3) -> dict[str, Any]:
    """Error and critical lines in worker logs (JSON or Celery's own format): how many, and the first few."""
    found: list[str] = []
    for path in logs:
        if path.exists():
            found += [
                line[:300]
                for line in path.read_text(errors="replace").splitlines()
                if any(p in line for p in _PROBLEMS)
            ]
    return {"count": len(found), "first": found[:keep]}


def percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))
    return ordered[rank]


def wait_until(check: Any, timeout: float, interval: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Profiler:
    """py-spy recording one process until `stop`; its output is collapsed stacks ("a;b;c count" lines), or an
    SVG flame graph."""

    def __init__(self, pid: int, output: Path, rate: int, gil_only: bool = False, flamegraph: bool = False) -> None:
        """`flamegraph`: an SVG flame graph at `output` (with .svg) instead of collapsed stacks."""
        self.output = output.with_suffix(".svg") if flamegraph else output
        fmt = "flamegraph" if flamegraph else "raw"
        command = ["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--format", fmt]
        command += ["--output", str(self.output), "--threads"]
        command.append("--nonblocking")  # never pause the worker being timed
        if gil_only:
            command.append("--gil")
        py_spy = Path(sys.executable).with_name("py-spy")
        command[0] = str(py_spy) if py_spy.exists() else "py-spy"
        self.process = spawn(command, os.environ, output.with_suffix(".log"))

    def stop(self) -> None:
        # py-spy writes its output on SIGINT; anything else loses the profile.
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            stop(self.process, timeout=1)


def summarize_profile(paths: Iterable[Path], top: int = 15) -> dict[str, Any]:
    """Top functions by own samples (the frame on top of the stack) and by total samples (anywhere on it)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [frame for frame in stack.split(";") if not frame.startswith(("process ", "thread "))]
            if not frames:
                continue
            samples += count
            own[frames[-1]] += count
            for frame in set(frames):
                total[frame] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": count, "share": round(count / samples, 4)}
            for name, count in counter.most_common(top)
        ]

    return {"samples": samples, "own": share(own), "total": share(total)}
