"""The one place the CLI starts other processes.

The library never imports Prefect or BentoML, so flows run as ``python -m flows NAME JSON``
(the parameters as one JSON object, the result as one JSON line on stdout), a bento is built
by ``python -m serving.bento``, the service is ``bentoml serve`` and the dashboard is
``python -m ui``. Options are declared
once, in the CLI; the flows' entry points take the parameters their functions declare.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from recsys.errors import RecsysError

SERVICE = "serving.service:RecsysService"
SERVICE_NAME = "recsys"  # the name RecsysService (and the bento) is served under
# BentoML's JSON config override: merged over the service's own @bentoml.service arguments.
CONFIG_OVERRIDES = "BENTOML_CONFIG_OVERRIDES"


def _command(name: str, parameters: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "flows", name, json.dumps(parameters)]


def run_flow(
    name: str, parameters: dict[str, Any], *, on_log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run flow entry point ``name`` in a child process and return its JSON result.

    ``on_log`` receives each line the child logs (Prefect's console lines) as it comes. A
    failure is a :class:`RecsysError` with the child's one-line reason.
    """
    command = _command(name, parameters)
    if on_log is None:
        return _result(name, subprocess.run(command, capture_output=True, text=True))
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    ) as child:
        streams = {"out": child.stdout, "err": child.stderr}
        seen: dict[str, list[str]] = {"out": [], "err": []}

        def follow(which: str) -> None:
            for line in streams[which] or ():
                seen[which].append(line)
                on_log(line.rstrip("\n"))

        readers = [
            threading.Thread(target=follow, args=(w,), name=f"{name}-{w}", daemon=True)
            for w in streams
        ]
        for reader in readers:
            reader.start()
        child.wait()
        for reader in readers:
            reader.join()
    done = subprocess.CompletedProcess(
        command, child.returncode, "".join(seen["out"]), "".join(seen["err"])
    )
    return _result(name, done)


def exec_flow(name: str, parameters: dict[str, Any]) -> NoReturn:
    """Replace this process with flow entry point ``name`` (long-running: a schedule)."""
    command = _command(name, parameters)
    os.execv(command[0], command)


def build_bento(version: str) -> dict[str, Any]:
    """Package ``version`` (a number or an alias) as a bento; the build's JSON result."""
    done = subprocess.run(
        [sys.executable, "-m", "serving.bento", "--version", version],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise RecsysError(f"bento build failed: {lines[-1] if lines else done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bentoml_executable() -> str:
    return str(Path(sys.executable).with_name("bentoml"))


def serve_command(target: str, host: str, port: int) -> list[str]:
    """``bentoml serve`` of ``target`` (the service, or a built bento) on ``host:port``."""
    return [bentoml_executable(), "serve", target, "--host", host, "--port", str(port)]


def serve_env(workers: int | None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of ``bentoml serve`` with ``workers`` processes of the service.

    The count goes through BentoML's own override (``BENTOML_CONFIG_OVERRIDES``, merged with
    what the caller's environment already overrides), so it applies to the service and to a
    built bento alike; ``None`` keeps the service's own count (one).
    """
    env = dict(os.environ if environ is None else environ)
    if workers is None:
        return env
    if workers < 1:
        raise RecsysError(f"--workers must be at least 1, got {workers}")
    try:
        overrides = json.loads(env.get(CONFIG_OVERRIDES) or "{}")
    except json.JSONDecodeError as exc:
        raise RecsysError(f"{CONFIG_OVERRIDES} is not JSON: {exc}") from None
    if not isinstance(overrides, dict):
        raise RecsysError(f"{CONFIG_OVERRIDES} must be a JSON object")
    services = overrides.setdefault("services", {})
    services.setdefault(SERVICE_NAME, {})["workers"] = workers
    env[CONFIG_OVERRIDES] = json.dumps(overrides)
    return env


def exec_serve(target: str, host: str, port: int, workers: int | None = None) -> NoReturn:
    command = serve_command(target, host, port)
    os.execve(command[0], command, serve_env(workers))


def ui_command(host: str, port: int) -> list[str]:
    """The dashboard (``python -m ui``) on ``host:port``."""
    return [sys.executable, "-m", "ui", "--host", host, "--port", str(port)]


def exec_ui(host: str, port: int) -> NoReturn:
    command = ui_command(host, port)
    os.execv(command[0], command)


def _result(name: str, done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if done.returncode != 0 or not result:
        errors = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = result.get("error") or (errors[-1] if errors else f"exit {done.returncode}")
        raise RecsysError(f"{name} failed: {reason}")
    return result
