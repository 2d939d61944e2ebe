"""A tracking server for a team: MLflow's server on PostgreSQL, artifacts proxied through it (`gm server`).

    gm server                          # PostgreSQL + MLflow on http://127.0.0.1:5000, state in tracking-server/
    gm server --auth                   # the same behind MLflow's basic-auth app
    gm server --backend-store-uri postgresql://user:pw@db:5432/mlflow --artifacts-destination s3://bucket/gm
    export MLFLOW_TRACKING_URI=http://127.0.0.1:5000   # then every stage logs and registers there

With no --backend-store-uri, the command runs a PostgreSQL of its own: a database cluster in
<dir>/postgres (created by `initdb` on first use, from the PostgreSQL server binaries on PATH or under
/usr/lib/postgresql/*/bin), listening on 127.0.0.1 only, with a generated password in <dir>/pg.password.
Proxied artifacts (`--artifacts-destination`, default <dir>/artifacts) mean clients never need the
artifact store's credentials or paths: they upload and download through the server.

Both bind 127.0.0.1 unless told otherwise (--host); a server reachable from other machines should run
with --auth. The Python side (Postgres, MlflowServer) is what the tests and `make chaos` start too.
"""

from __future__ import annotations

import argparse
import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gm.tracking import OFFLINE_ENV

LOOPBACK = "127.0.0.1"


def write_text_private(path: Path, text: str) -> None:
    """Write a secret (a password, a config naming one) readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class ServerError(RuntimeError):
    """The server could not start or stop (the message is one line, naming what to do)."""


# ------------------------------------------------------------------------------ PostgreSQL


def pg_tool(name: str) -> str:
    """A PostgreSQL server binary (initdb, pg_ctl): from PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    for bin_dir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                          if Path(p).parent.name.isdigit() else 0, reverse=True):
        if (Path(bin_dir) / name).is_file():
            return str(Path(bin_dir) / name)
    raise ServerError(f"PostgreSQL's {name} not found on PATH or in /usr/lib/postgresql/*/bin: install the "
                      "PostgreSQL server (Debian: apt install postgresql) or pass --backend-store-uri")


@dataclass
class Postgres:
    """A PostgreSQL database cluster in `data_dir`, run as `os_user` when this process is root (PostgreSQL
    refuses to run as root), listening on 127.0.0.1:`port` only, with password authentication."""

    data_dir: Path
    port: int
    user: str = "gm"
    os_user: str = "postgres"

    @property
    def password_file(self) -> Path:
        return self.data_dir.parent / "pg.password"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", self.os_user, "--"] + cmd if os.geteuid() == 0 else cmd

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, self.os_user, self.os_user)

    def _run(self, cmd: list[str], what: str, timeout: float = 120) -> None:
        r = subprocess.run(self._as_owner(cmd), capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise ServerError(f"{what} failed in {self.data_dir}: {tail[0]}")

    def ensure(self) -> "Postgres":
        """Create the database cluster on first use (initdb), with a generated password for `user`."""
        if (self.data_dir / "PG_VERSION").is_file():
            return self
        parent = self.data_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and subprocess.run(["runuser", "-u", self.os_user, "--", "test", "-x", str(parent.parent)],
                                                capture_output=True).returncode != 0:
            raise ServerError(f"PostgreSQL runs as user {self.os_user} (this process is root), who cannot enter "
                              f"{parent.parent}: put the server's folder where that user can (e.g. under /srv)")
        write_text_private(self.password_file, secrets.token_urlsafe(24))
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        for p in (parent, self.data_dir, self.password_file):
            self._chown(p)
        self._run([pg_tool("initdb"), "-D", str(self.data_dir), "-U", self.user, f"--pwfile={self.password_file}",
                   "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions"], "initdb")
        return self

    def start(self, timeout: float = 60) -> "Postgres":
        self.ensure()
        if not self.log_file.exists():
            self.log_file.touch()
            self._chown(self.log_file)
        opts = f"-p {self.port} -c listen_addresses={LOOPBACK} -c unix_socket_directories=''"
        self._run([pg_tool("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t",
                   str(int(timeout)), "-o", opts, "start"], f"PostgreSQL start on port {self.port} "
                  f"(log: {self.log_file})", timeout + 10)
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (`fast`: roll back open transactions, then shut down cleanly; `immediate`: as a
        crash would, recovered from the write-ahead log at the next start)."""
        if (self.data_dir / "postmaster.pid").exists():
            self._run([pg_tool("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"], "PostgreSQL stop")

    def url(self, database: str) -> str:
        password = self.password_file.read_text().strip()
        return f"postgresql://{self.user}:{password}@{LOOPBACK}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(self.url(database), connect_timeout=10, autocommit=True)

    def create_database(self, name: str) -> str:
        """Create database `name` unless it exists; returns its URL."""
        conn = self.connect()
        try:
            # (autocommit: CREATE DATABASE cannot run inside a transaction)
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def query(self, database: str, sql: str, args: tuple = ()) -> list[tuple]:
        """Rows of one read-only query (the tests read MLflow's tables with it)."""
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall()
        finally:
            conn.close()


# ------------------------------------------------------------------------------ the MLflow server


AUTH_INI = """[mlflow]
default_permission = {permission}
database_uri = {database_uri}
admin_username = {admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# a password is checked (PBKDF2, ~0.1 s) once a minute per worker instead of on every request: a model's
# upload is a request per file
auth_cache_ttl_seconds = 60
"""


@dataclass
class Auth:
    """MLflow's basic-auth app: every request needs a user's password; `permission` is what a user holds on
    experiments and models others created (EDIT: a team's members log into each other's experiments)."""

    database_uri: str  # where the app keeps users and permissions
    admin: str = "admin"
    password: str = ""  # the admin's; set on the first start only (the app keeps it from then on)
    permission: str = "EDIT"


WORKER_HEALTHCHECK_S = 60


@dataclass
class MlflowServer:
    """`mlflow server` on `backend_uri` with proxied artifacts in `artifacts`, as a process group of its own."""

    backend_uri: str
    artifacts: str
    state_dir: Path  # the log, and the auth app's config
    host: str = LOOPBACK
    port: int = 5000
    workers: int = 2
    auth: Auth | None = None
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        host = LOOPBACK if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"mlflow-server-{self.port}.log"

    def start(self, timeout: float = 120) -> "MlflowServer":
        if answers(self.uri):
            raise ServerError(f"something already answers at {self.uri}: stop it or choose another --port")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--artifacts-destination", self.artifacts,
               "--host", self.host, "--port", str(self.port), "--workers", str(self.workers),
               # uvicorn kills a worker that takes over 5 s to answer its health check: on a loaded machine
               # every freshly started worker (importing MLflow) did, and the server never answered
               "--uvicorn-opts", f"--timeout-worker-healthcheck {WORKER_HEALTHCHECK_S}"]
        # the store's URL carries its password: through the environment, not the command line `ps` shows
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": self.backend_uri, **dict(OFFLINE_ENV)}
        if self.auth is not None:
            cmd += ["--app-name", "basic-auth"]
            ini = self.state_dir / "basic_auth.ini"
            write_text_private(ini, AUTH_INI.format(permission=self.auth.permission,
                                                    database_uri=self.auth.database_uri, admin=self.auth.admin))
            # the auth app's CSRF protection signs with a key every worker must share (kept across restarts)
            secret = self.state_dir / "flask.secret"
            if not secret.exists():
                write_text_private(secret, secrets.token_urlsafe(32))
            env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secret.read_text().strip())
            env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=self.auth.password)
        self.process = spawn_server(cmd, env, self.log_file, self.uri, timeout, "mlflow server")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Stop the server's whole process group (its gunicorn/uvicorn workers too): SIGTERM, then SIGKILL."""
        stop_group(self.process, sig, timeout)

    def kill(self) -> None:
        """The server dies at once, as a crashed host's would (requests in flight get no answer)."""
        self.stop(signal.SIGKILL)


def spawn_server(cmd: list[str], env: dict, log_file: Path, url: str, timeout: float, what: str,
                 cwd: Path | None = None) -> subprocess.Popen:
    """Start `cmd` as a process group of its own (output appended to `log_file`) and wait until `url`
    answers; a server that exits or stays silent past `timeout` is stopped and a ServerError names its log."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not answers(url):
        if process.poll() is not None:
            raise ServerError(f"{what} exited with {process.returncode}: {log_tail(log_file)} (log: {log_file})")
        if time.monotonic() > deadline:
            stop_group(process)
            raise ServerError(f"{what} did not answer at {url} within {timeout:.0f} s (log: {log_file})")
        time.sleep(0.5)
    return process


def stop_group(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Stop a process started as a group of its own (a server and its workers): `sig`, then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)
    except ProcessLookupError:
        pass


def answers(uri: str, timeout: float = 2.0) -> bool:
    """True when the MLflow server at `uri` answers its health check."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def log_tail(path: Path, lines: int = 1) -> str:
    try:
        text = [t for t in path.read_text(errors="replace").splitlines() if t.strip()]
    except OSError:
        return "no log"
    return " / ".join(text[-lines:]) or "no output"


# ------------------------------------------------------------------------------ gm server


@dataclass
class Team:
    """What `gm server` runs: its own PostgreSQL (unless given a store) and the MLflow server on it."""

    server: MlflowServer
    postgres: Postgres | None
    scratch: Path | None = None  # a throwaway PostgreSQL's folder, removed by stop()

    def stop(self) -> None:
        self.server.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def start_team(state_dir: Path, *, host: str = LOOPBACK, port: int = 5000, pg_port: int = 5433,
               backend_uri: str | None = None, artifacts: str | None = None, auth: bool = False,
               admin_password: str | None = None, workers: int = 2, throwaway: bool = False) -> Team:
    """Start PostgreSQL (when no `backend_uri`) and the MLflow server on it; see the module's docstring.
    `throwaway` (tests, `make chaos`): PostgreSQL's cluster goes in a fresh folder under the system's
    temporary directory, which its own user can enter wherever `state_dir` is, and is removed by stop()."""
    import tempfile

    state_dir = Path(state_dir).resolve()
    postgres = None
    auth_uri = None
    scratch = Path(tempfile.mkdtemp(prefix="gm-postgres-")) if throwaway and backend_uri is None else None
    if scratch is not None:
        scratch.chmod(0o755)
    if backend_uri is None:
        postgres = Postgres((scratch or state_dir) / "postgres", pg_port).start()
        backend_uri = postgres.create_database("mlflow")
        if auth:
            auth_uri = postgres.create_database("mlflow_auth")
    elif auth:
        auth_uri = f"sqlite:///{state_dir / 'basic_auth.db'}"
    settings = None
    if auth:
        password_file = state_dir / "admin.password"
        if admin_password is None and not password_file.exists():
            write_text_private(password_file, secrets.token_urlsafe(18))
        if admin_password is None:
            admin_password = password_file.read_text().strip()
        settings = Auth(database_uri=auth_uri, password=admin_password)
    server = MlflowServer(backend_uri, artifacts or str(state_dir / "artifacts"), state_dir, host, port,
                          workers, settings)
    team = Team(server, postgres, scratch)
    try:
        server.start()
    except BaseException:
        team.stop()
        raise
    return team


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="gm server", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--dir", default="tracking-server", help="PostgreSQL's data, the artifacts, logs (default: %(default)s)")
    p.add_argument("--host", default=LOOPBACK, help="interface the MLflow server binds (default: %(default)s)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--pg-port", type=int, default=5433, help="port of the PostgreSQL this command runs (127.0.0.1)")
    p.add_argument("--backend-store-uri", help="an existing database (postgresql://...) instead of our own PostgreSQL")
    p.add_argument("--artifacts-destination", help="where proxied artifacts go (default: <dir>/artifacts)")
    p.add_argument("--auth", action="store_true", help="require a user and password (MLflow's basic-auth app)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    try:
        team = start_team(Path(args.dir), host=args.host, port=args.port, pg_port=args.pg_port,
                          backend_uri=args.backend_store_uri, artifacts=args.artifacts_destination, auth=args.auth,
                          admin_password=os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"), workers=args.workers)
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    store = (f"PostgreSQL 127.0.0.1:{args.pg_port} (data in {team.postgres.data_dir})" if team.postgres
             else "the given backend store")
    print(f"MLflow tracking server: {team.server.uri} on {store}; artifacts in {team.server.artifacts}")
    if args.auth:
        print(f"basic auth: user admin, password in {Path(args.dir).resolve() / 'admin.password'} unless "
              "MLFLOW_AUTH_ADMIN_PASSWORD set it; clients set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if args.host not in (LOOPBACK, "localhost") and not args.auth:
        print(f"warning: bound to {args.host} without --auth: anyone who reaches it can write and delete",
              file=sys.stderr)
    print(f"use it: export MLFLOW_TRACKING_URI={team.server.uri}   (Ctrl-C stops the server"
          f"{' and PostgreSQL' if team.postgres else ''})", flush=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    try:
        while not stopping and team.server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        code = team.server.process.poll()
        team.stop()
    if code is not None and not stopping:
        print(f"error: mlflow server exited with {code}: {log_tail(team.server.log_file)}", file=sys.stderr)
        sys.exit(1)
