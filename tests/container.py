"""Reading the Dockerfile and compose.yaml as a container engine would, for tests on a machine without one.

Also runs the image's commands here: the console scripts of this environment stand in for the image's, which
are installed from the same package.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
BIN = Path(sys.executable).parent
#: names that say "this holds a secret"
SECRET_NAME = re.compile(r"KEY|TOKEN|PASS|SECRET|CREDENTIAL|CONNECTION_STRING", re.IGNORECASE)


@dataclass
class Instruction:
    keyword: str
    text: str  # everything after the keyword, continuation lines joined
    flags: dict[str, str] = field(default_factory=dict)

    @property
    def body(self) -> str:
        """The text without leading ``--flag=value`` options."""
        return _strip_flags(self.text)[1]

    def argv(self) -> list[str]:
        """CMD/ENTRYPOINT/HEALTHCHECK CMD as argv; the shell form runs through ``/bin/sh -c``."""
        body = self.body
        if self.keyword == "HEALTHCHECK":
            assert body.startswith("CMD "), f"HEALTHCHECK without CMD: {body}"
            body = body.removeprefix("CMD ").strip()
        if body.startswith("["):
            parsed = json.loads(body)
            assert isinstance(parsed, list)
            return [str(item) for item in parsed]
        return ["/bin/sh", "-c", body]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]

    def index(self, keyword: str) -> int:
        """Position of the last `keyword` instruction, -1 when there is none."""
        positions = [i for i, item in enumerate(self.instructions) if item.keyword == keyword]
        return positions[-1] if positions else -1


def _strip_flags(text: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    rest = text.strip()
    while rest.startswith("--"):
        token, _, rest = rest.partition(" ")
        name, _, value = token[2:].partition("=")
        flags[name] = value
        rest = rest.strip()
    return flags, rest


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages in order, each with its instructions; comments and parser directives dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags, _ = _strip_flags(rest)
        instruction = Instruction(keyword, rest.strip(), flags)
        if keyword == "FROM":
            words = instruction.body.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, []))
        elif keyword == "ARG" and not stages:
            continue  # a global ARG before the first FROM
        else:
            assert stages, f"{keyword} before any FROM"
            stages[-1].instructions.append(instruction)
    return stages


def dockerfile() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def env_pairs(instruction: Instruction) -> dict[str, str]:
    """ENV/ARG ``a=b c=d`` (or the legacy ``ENV a b``) as a dict."""
    words = shlex.split(instruction.body)
    if instruction.keyword == "ENV" and words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return {word.partition("=")[0]: word.partition("=")[2] for word in words}


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, environ: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR-default}``, from `environ` (default: none set)."""
    env = environ or {}

    def replace(match: re.Match[str]) -> str:
        name, operator, default = match.group(1), match.group(2), match.group(3) or ""
        if operator == ":-":
            return env.get(name) or default
        if operator == "-":
            return env.get(name, default)
        return env.get(name, "")

    return _INTERPOLATION.sub(replace, value)


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, interpolated with compose's defaults."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.partition("=")[::2] for item in raw)
    return {str(name): interpolate(str(value)) for name, value in raw.items() if value is not None}


def run_command(
    argv: list[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run an image command with this environment's console scripts first on PATH."""
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)


def spawn_command(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """An image command (its own argv, not a stand-in) in its own process group, output to `log`."""
    full_env = {**os.environ, **env}
    full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"
    with log.open("ab") as output:
        return subprocess.Popen(argv, env=full_env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
