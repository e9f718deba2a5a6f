"""The README's commands, run as a new user would run them.

Every command in a ```bash block of README.md is run, in order, by one of the tests below:
in a fresh working folder that holds the files the commands name (a small MovieLens-format
folder at ``path/to/ml-100k``, a sequences file, ``events.csv`` with its items and users),
with ``RECSYS_HOME`` in a temporary folder and the project's venv first on ``PATH``. Ports the
README names (3000, 3001, 4200, 8080) are replaced by free ones, and the production block's
database URL by a fresh PostgreSQL database. Servers (``recsys serve``, ``recsys ui``,
``bentoml serve``, ``prefect server start``, ``prefect worker start``, ``recsys schedule``)
are started in the background, waited for and checked, then stopped. Blocks of another
language (``sh`` for the Docker and Kubernetes commands, TOML) are not commands here.
``make test`` and ``make demo`` are what ``.ci/run`` runs.

A command exiting non-zero, or a curl answering anything but 200, fails the test with its
output. The fast test checks that the README parses into commands and that each one has a
way to run here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
PRODUCTION_HEADING = "In production"
# Commands .ci/run runs itself (the test suite cannot run itself or the demo inside it).
RUN_BY_CI = {"make demo", "make test"}
# Make targets that only run a README command the walkthrough runs itself (from the project's
# venv, which the walkthrough's folder has not): `make ui` is `recsys ui`.
SAME_AS = {"make ui": "recsys ui"}
README_PORTS = ("3000", "3001", "4200", "8080")
SERVER_PATTERNS = (
    re.compile(r"(^|\s)recsys serve\b"),
    re.compile(r"(^|\s)recsys ui\b"),
    re.compile(r"(^|\s)bentoml serve\b"),
    re.compile(r"(^|\s)prefect server start\b"),
    re.compile(r"(^|\s)prefect worker start\b"),
    re.compile(r"(^|\s)recsys schedule\b(?!.*--apply-only)"),
)
COMMAND_TIMEOUT_S = 600
READY_TIMEOUT_S = 180


@dataclass(frozen=True)
class Command:
    text: str
    block: int
    section: str

    @property
    def bare(self) -> str:
        """The command without its comment, words single-spaced."""
        return " ".join(shlex.split(self.text, comments=True))

    @property
    def is_server(self) -> bool:
        return any(p.search(self.text) for p in SERVER_PATTERNS)


def readme_commands(text: str) -> list[Command]:
    """Logical commands of the README's ```bash blocks: continuation lines and quoted strings
    that span lines are joined; comment-only lines are dropped."""
    commands: list[Command] = []
    section = ""
    block = -1
    inside = False
    other = False  # inside a block of another language (TOML, JSON): not commands
    pending = ""
    for line in text.splitlines():
        if other:
            other = line.strip() != "```"
            continue
        if not inside:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            elif line.strip() == "```bash":
                inside, block, pending = True, block + 1, ""
            elif line.startswith("```"):
                other = True
            elif line.startswith("**") and PRODUCTION_HEADING in line:
                section = PRODUCTION_HEADING
            continue
        if line.strip() == "```":
            if pending.strip():
                raise ValueError(f"README block {block} ends inside a command: {pending!r}")
            inside = False
            continue
        pending = f"{pending}\n{line}" if pending else line
        if pending.rstrip().endswith("\\"):
            continue
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quoted string continues on the next line
            continue
        if words:
            commands.append(Command(pending.strip(), block, section))
        pending = ""
    return commands


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The files the README's commands name ---------------------------------------------------

ML_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def write_inputs(folder: Path) -> None:
    """Small files in the formats the README's import commands read."""
    rng = np.random.default_rng(11)
    ml = folder / "path" / "to" / "ml-100k"
    ml.mkdir(parents=True)
    users, items = 60, 120
    rows = []
    for user in range(1, users + 1):
        # Each user watches a run of consecutive films from a random start: learnable order.
        start = int(rng.integers(1, items - 30))
        for step, item in enumerate(range(start, start + int(rng.integers(12, 30)))):
            rows.append(f"{user}\t{item}\t{int(rng.integers(1, 6))}\t{880000000 + 3600 * step}")
    (ml / "u.data").write_text("\n".join(rows) + "\n")
    lines = []
    for item in range(1, items + 1):
        flags = ["0"] * len(ML_GENRES)
        flags[1 + item % 8] = "1"  # Action .. Crime .. Drama: Comedy (5) is among them
        lines.append(
            f"{item}|Film {item} (199{item % 10})|01-Jan-199{item % 10}|||" + "|".join(flags)
        )
    (ml / "u.item").write_bytes("\n".join(lines).encode("latin-1"))
    (ml / "u.user").write_text(
        "".join(f"{u}|{20 + u % 40}|{'MF'[u % 2]}|other|{10000 + u}\n" for u in range(1, users + 1))
    )
    (folder / "path" / "to" / "Amazon_Toys.txt").write_text(
        "".join(
            f"t{u} " + " ".join(f"toy{(u + j) % 40}" for j in range(6)) + "\n" for u in range(30)
        )
    )
    (folder / "events.csv").write_text(
        "user,item,ts,stars,kind\n"
        + "".join(
            f"c{u},shop{(u + j) % 25},{1_700_000_000 + 60 * j},{1 + j % 5},"
            + ("view\n" if j % 3 else "purchase\n")
            for u in range(20)
            for j in range(8)
        )
    )
    (folder / "items.csv").write_text(
        "item,title,genres,price\n"
        + "".join(f"shop{i},Thing {i},Gadgets|Home,{5 + i}\n" for i in range(25))
    )
    (folder / "users.csv").write_text(
        "user,age,gender\n" + "".join(f"c{u},{30 + u},F\n" for u in range(20))
    )


# Running them ------------------------------------------------------------------------------


@dataclass
class Walk:
    """Runs README commands one after another, like one terminal session."""

    cwd: Path
    env: dict[str, str]
    logs: Path
    substitutions: dict[str, str] = field(default_factory=dict)
    ports: dict[str, str] = field(default_factory=dict)
    servers: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)
    # Prediction services must answer /readyz (a model loaded); False: /healthz is enough.
    services_need_a_model: bool = True
    ran: list[str] = field(default_factory=list)

    def prepare(self, command: Command) -> str:
        text = command.text
        for readme_port in README_PORTS:
            if re.search(rf"\b{readme_port}\b", text):
                port = self.ports.setdefault(readme_port, str(free_port()))
                text = re.sub(rf"\b{readme_port}\b", port, text)
        for old, new in self.substitutions.items():
            text = text.replace(old, new)
        return text

    def run(self, command: Command) -> str:
        """Run one command; return its output (servers: their log so far)."""
        text = self.prepare(command)
        self.ran.append(command.text)
        if text.startswith("export "):
            name, _, value = text.removeprefix("export ").partition("=")
            if value.startswith("$("):  # a command's output, as the shell would take it
                value = re.sub(r"\s+#[^)]*$", "", value).strip()
                self.env[name] = self.shell(f'printf %s "{value}"').strip()
            else:
                self.env[name] = shlex.split(value, comments=True)[0]
            return ""
        if command.is_server:
            return self.start(text)
        if text.startswith("curl "):
            return self.curl(text)
        return self.shell(text)

    def shell(self, text: str) -> str:
        done = subprocess.run(
            ["bash", "-c", text],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        assert done.returncode == 0, (
            f"README command failed ({done.returncode}): {text}\n"
            f"stdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
        )
        return done.stdout

    def curl(self, text: str) -> str:
        command = re.sub(r"\s+#[^'\"]*$", "", text)  # the README's trailing comment
        done = subprocess.run(
            ["bash", "-c", command + " -w '\\n%{http_code}'"],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        body, _, status = done.stdout.rpartition("\n")
        assert done.returncode == 0 and status == "200", (
            f"README command: {text}\nHTTP {status}, exit {done.returncode}: {body[-2000:]}"
            f"{done.stderr[-1000:]}"
        )
        return body

    def start(self, text: str) -> str:
        log = self.logs / f"server-{len(self.servers)}.log"
        handle = log.open("w")
        process = subprocess.Popen(
            ["bash", "-c", text],
            cwd=self.cwd,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        self.servers.append((text, process, log))
        self.wait_until_up(text, process, log)
        return log.read_text()

    def wait_until_up(self, text: str, process: subprocess.Popen[bytes], log: Path) -> None:
        port = re.search(r"--port (\d+)", text)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"README server exited ({process.returncode}): {text}\n{_tail(log)}")
            if "prefect server start" in text:
                if _answers(f"http://127.0.0.1:{self.env['PREFECT_SERVER_API_PORT']}/api/health"):
                    return
            elif "recsys schedule" in text:
                if "being served" in log.read_text():
                    return
            elif "prefect worker start" in text:
                if re.search(r"Worker '[^']+' started!", log.read_text()):
                    return
            elif port:
                needs_model = self.services_need_a_model and "recsys ui" not in text
                probe = "readyz" if needs_model else "healthz"
                if _answers(f"http://127.0.0.1:{port.group(1)}/{probe}"):
                    return
            time.sleep(0.5)
        pytest.fail(f"README server not up in {READY_TIMEOUT_S} s: {text}\n{_tail(log)}")

    def stop_servers(self) -> None:
        for _, process, _ in self.servers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process, _ in self.servers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.servers.clear()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def walk(tmp_path: Path) -> Iterator[Walk]:
    work = tmp_path / "work"
    work.mkdir()
    write_inputs(work)
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "PREFECT_"))}
    env |= {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        "RECSYS_HOME": str(tmp_path / "home"),
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_API_PORT": str(free_port()),
        "RECSYS_TRAIN_WORKERS": "1",
    }
    walker = Walk(cwd=work, env=env, logs=logs)
    # `prefect server start` listens on PREFECT_SERVER_API_PORT: the README's 4200 is that port.
    walker.ports["4200"] = env["PREFECT_SERVER_API_PORT"]
    try:
        yield walker
    finally:
        walker.stop_servers()


def _blocks(production: bool) -> list[list[Command]]:
    blocks: dict[int, list[Command]] = {}
    for command in readme_commands(README.read_text()):
        skipped = command.bare in RUN_BY_CI or command.bare in SAME_AS
        if skipped or (command.section == PRODUCTION_HEADING) != production:
            continue
        blocks.setdefault(command.block, []).append(command)
    return list(blocks.values())


def _run_blocks(walk: Walk, blocks: list[list[Command]]) -> dict[str, str]:
    outputs: dict[str, str] = {}
    for commands in blocks:
        if any(c.is_server for c in commands):
            walk.stop_servers()  # a block that starts servers replaces the last block's
        for command in commands:
            if "bentoml containerize" in command.text and not _docker_daemon():
                warnings.warn(
                    f"not run: {command.text!r} needs a Docker daemon and none answers here",
                    stacklevel=1,
                )
                walk.ran.append(command.text)
                continue
            outputs[command.text] = walk.run(command)
    return outputs


def _docker_daemon() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode == 0


# Tests --------------------------------------------------------------------------------------


def test_readme_commands_parse_and_each_has_a_runner() -> None:
    commands = readme_commands(README.read_text())
    assert {c.bare for c in commands} >= RUN_BY_CI
    assert sum(c.section == PRODUCTION_HEADING for c in commands) >= 4
    programs = {shlex.split(c.text, comments=True)[0] for c in commands}
    allowed = {"make", "recsys", "bentoml", "prefect", "curl", "export"}
    assert {p.split("=")[0] if "=" in p else p for p in programs} <= allowed | {
        "RECSYS_ADMIN_TOKEN"
    }, programs
    multi = next(c for c in commands if "recommend_session" in c.text)
    assert multi.text.count("\n") == 1 and "item_ids" in multi.text  # a quoted body joined
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert all(c in ci for c in RUN_BY_CI), "CI must run the README commands tests cannot"
    bare = {c.bare for c in commands}
    for make_target, command in SAME_AS.items():
        assert make_target in bare and any(b.startswith(command) for b in bare), make_target
        assert f"{make_target.split()[1]}:" in (REPO_ROOT / "Makefile").read_text()


def _expected(production: bool) -> list[str]:
    return [c.text for block in _blocks(production) for c in block]


@pytest.mark.slow
def test_readme_walkthrough_on_the_embedded_database(walk: Walk) -> None:
    outputs = _run_blocks(walk, _blocks(production=False))
    assert walk.ran == _expected(production=False)
    recommended = json.loads(next(v for k, v in outputs.items() if "/recommend -H" in k))
    assert recommended["items"] and isinstance(recommended["model_version"], int)
    assert "50" not in {item["item_id"] for item in recommended["items"]}  # excluded by filter
    assert all(item["because"] is not None for item in recommended["items"])  # explain: true
    model = json.loads(next(v for k, v in outputs.items() if "/model" in k))
    assert model["ready"] is True


def production_sources_file() -> str:
    """The TOML block of the README's production part: the shop's source file."""
    text = README.read_text()
    start = text.index("```toml", text.index(f"**{PRODUCTION_HEADING}**"))
    return text[start + len("```toml\n") : text.index("\n```", start)]


SHOP_TABLES = """
CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer, ordered_at timestamp);
CREATE TABLE order_items (id integer PRIMARY KEY, order_id integer, sku text, quantity integer);
CREATE TABLE products (sku text PRIMARY KEY, name text, category text, price numeric(10, 2),
                       in_stock boolean);
INSERT INTO products VALUES ('sku-1', 'Runner', 'shoes|sport', 89.90, true),
                            ('sku-2', 'Walker', 'shoes', 59.00, false),
                            ('sku-3', 'Sock', 'socks', 4.50, true);
INSERT INTO orders VALUES (1, 7, '2026-01-05 10:00'), (2, 8, '2026-01-06 11:00');
INSERT INTO order_items VALUES (1, 1, 'sku-1', 1), (2, 1, 'sku-3', 3), (3, 2, 'sku-2', 1);
"""


@pytest.mark.slow
def test_readme_production_block_on_postgresql_with_a_prefect_server(
    walk: Walk, fresh_postgres_url: str, tmp_path: Path
) -> None:
    """The production block against PostgreSQL, its source file reading a shop schema kept
    in the same database (the README's shop host and role become this server's)."""
    import sqlalchemy as sa

    shop = sa.create_engine(fresh_postgres_url)
    with shop.begin() as conn:
        for statement in SHOP_TABLES.split(";"):
            if statement.strip():
                conn.execute(sa.text(statement))
    shop.dispose()
    database = sa.engine.make_url(fresh_postgres_url)
    sources = tmp_path / "sources.toml"
    sources.write_text(
        production_sources_file().replace(
            "recsys_reader:${SHOP_DB_PASSWORD}@shop-db/shop",
            f"{database.username}:${{SHOP_DB_PASSWORD}}@{database.host}:{database.port}"
            f"/{database.database}",
        )
    )
    walk.substitutions["postgresql://recsys@db/recsys"] = fresh_postgres_url
    walk.substitutions["/etc/recsys/sources.toml"] = str(sources)
    walk.services_need_a_model = False  # a new database: no champion to serve yet
    outputs = _run_blocks(walk, _blocks(production=True))
    assert walk.ran == _expected(production=True)
    checked = next(v for k, v in outputs.items() if k.startswith("recsys sources check"))
    assert "purchases" in checked and "products" in checked
    store = sa.create_engine(fresh_postgres_url)
    with store.connect() as conn:
        purchases = conn.execute(
            sa.text("SELECT count(*) FROM interactions WHERE event_type = 'purchase'")
        ).scalar_one()
        unavailable = (
            conn.execute(sa.text("SELECT external_id FROM items WHERE NOT available"))
            .scalars()
            .all()
        )
    store.dispose()
    assert purchases == 3 and unavailable == ["sku-2"]
    api = walk.env["PREFECT_API_URL"]
    deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
    schedules = [s["schedule"].get("cron") for d in deployments for s in d.get("schedules", [])]
    assert "0 3 * * *" in schedules and "*/5 * * * *" in schedules, deployments
