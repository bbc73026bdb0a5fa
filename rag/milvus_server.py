"""Start, stop and health-check the embedded Milvus standalone server (the PyPI package `milvus`).

The `milvus` wrapper only renders a config and unpacks the binary; this module owns the process so
that start and stop are idempotent across processes (a file lock), the ports the wrapper chose are
recorded in a state file, and stop waits for the old process to exit before a new one may start.
The server listens on every interface, so it runs with Milvus authentication on and a generated
root password kept in the data dir with mode 0600. The process gets only the environment it needs
(`milvus_environment`): never the app's API keys, tokens or passwords.
"""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from rag.config import private_dir
from rag.errors import StoreUnavailableError

_COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
_MACHINE_PID_FILE = "/run/milvus/standalone.pid"
_DEFAULT_PASSWORD = "Milvus"  # Milvus's documented initial root password, replaced at first start
_NO_BINARY = (
    "The embedded Milvus server needs Linux on x86-64 and the PyPI package `milvus` (2.3.5). "
    "On this platform run Milvus with `docker compose up -d standalone` and set MILVUS_URI=http://localhost:19530, "
    "or use Milvus Lite with MILVUS_URI=./data/milvus.db."
)


_CHILD_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "GOMAXPROCS",
    "GOMEMLIMIT",
    "GOGC",
    "GODEBUG",
    "GOTRACEBACK",
)
_CHILD_ENV_PREFIXES = ("LC_",)
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def milvus_environment(parent: Mapping[str, str], exe_dir: Path, health_port: int, run_dir: Path) -> dict[str, str]:
    """The environment of the Milvus process: an allowlist of the parent's (search path, home, locale, temp
    dir, library path, Go runtime knobs) plus what the `milvus` wrapper sets for the binary. Nothing whose
    name looks like a credential passes, so OPENAI_API_KEY, MILVUS_TOKEN or APP_PASSWORD never reach it."""
    env = {
        name: value
        for name, value in parent.items()
        if (name in _CHILD_ENV or name.startswith(_CHILD_ENV_PREFIXES)) and not _SECRET_NAME.search(name)
    }
    env.setdefault("PATH", os.defpath)
    env.update(
        DEPLOY_MODE="STANDALONE",
        METRICS_PORT=str(health_port),
        MILVUS_RUN_DIR=str(run_dir),
        LD_LIBRARY_PATH=f"{exe_dir}:{env.get('LD_LIBRARY_PATH', '')}",
    )
    return env


@dataclass(frozen=True)
class ServerState:
    """What a running embedded server looks like from outside: its process and the ports it chose."""

    pid: int
    proxy_port: int
    health_port: int
    started_at: float

    @property
    def uri(self) -> str:
        """The address clients connect to."""
        return f"http://127.0.0.1:{self.proxy_port}"


@dataclass(frozen=True)
class ServerStatus:
    """The answer to `milvus status`."""

    running: bool
    healthy: bool
    state: ServerState | None
    data_dir: Path

    @property
    def uri(self) -> str | None:
        """Client address when running."""
        return self.state.uri if self.state else None


def embedded_available() -> bool:
    """True where the `milvus` package ships a binary for this platform."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        import milvus  # noqa: F401
    except ImportError:
        return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as gone
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _healthy(port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as resp:
            return b"OK" in resp.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _reuse_port_config():  # noqa: ANN202 - a subclass of the optional package's config class
    from milvus import MilvusServerConfig

    class ReusePortConfig(MilvusServerConfig):
        """Probe ports as Milvus binds them (SO_REUSEADDR), so a restart keeps its ports through TIME_WAIT."""

        def try_bind_port(self, port: int):  # noqa: ANN202
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                return sock
            except OSError:
                sock.close()
                return None

    return ReusePortConfig


class EmbeddedMilvus:
    """One embedded Milvus server per data dir; safe to start and stop from several processes."""

    def __init__(self, data_dir: Path, start_timeout: float = 120.0) -> None:
        self.base = Path(data_dir).resolve() / "milvus"
        self.start_timeout = start_timeout
        self._state_file = self.base / "server.json"
        self._secret_file = self.base / "root.secret"
        self._last_ports_file = self.base / "last_ports.json"
        self._lock = FileLock(str(self.base / ".lock"), timeout=start_timeout + 60)

    # -- public -----------------------------------------------------------------------------
    @property
    def token(self) -> str:
        """The root credentials clients must present (user:password)."""
        return f"root:{self._secret()}"

    def status(self) -> ServerStatus:
        """Read the state file and check the process and its health endpoint."""
        state = self._read_state()
        running = state is not None and _pid_alive(state.pid)
        healthy = running and state is not None and _healthy(state.health_port)
        return ServerStatus(running=running, healthy=healthy, state=state if running else None, data_dir=self.base)

    def start(self) -> ServerState:
        """Start the server unless a healthy one already runs for this data dir; return its state."""
        if not embedded_available():
            raise StoreUnavailableError(_NO_BINARY)
        self._make_base()
        with self._lock:
            status = self.status()
            if status.healthy and status.state:
                return status.state
            if status.running and status.state:  # alive but not healthy: give it its start window
                if self._wait_healthy(status.state, self.start_timeout):
                    return status.state
                self._terminate(status.state.pid)
            self._state_file.unlink(missing_ok=True)
            self._refuse_foreign_server()
            pinned = self._last_ports() if self._wait_for_last_ports() else {}
            state = self._spawn(pinned)
            self._secure(state)
            return state

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the server and wait until its process is gone; False when none was running."""
        self._make_base()
        with self._lock:
            state = self._read_state()
            if state is None or not _pid_alive(state.pid):
                self._state_file.unlink(missing_ok=True)
                return False
            self._terminate(state.pid, timeout)
            self._state_file.unlink(missing_ok=True)
            return True

    # -- internals --------------------------------------------------------------------------
    def _make_base(self) -> None:
        """The data dir and the server's folder in it, private to this user (0700)."""
        private_dir(self.base.parent)
        private_dir(self.base)

    def _secret(self) -> str:
        if not self._secret_file.exists():
            self._make_base()
            fd = os.open(self._secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(secrets.token_urlsafe(24))
        return self._secret_file.read_text(encoding="utf-8").strip()

    def _read_state(self) -> ServerState | None:
        try:
            return ServerState(**json.loads(self._state_file.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def _last_ports(self) -> dict[str, int]:
        try:
            ports = json.loads(self._last_ports_file.read_text(encoding="utf-8"))
            return {str(k): int(v) for k, v in ports.items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _wait_for_last_ports(self, timeout: float = 30.0) -> bool:
        """After a stop the old sockets linger a moment; wait so the restart can take the same ports back."""
        ports = self._last_ports()
        if not ports:
            return False
        probe = _reuse_port_config()()
        deadline = time.monotonic() + timeout
        for port in ports.values():
            while True:
                sock = probe.try_bind_port(port)
                if sock is not None:
                    sock.close()
                    break
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.2)
        return True

    def _refuse_foreign_server(self) -> None:
        """Milvus 2.3 keeps a machine-wide pid lock in /run/milvus: only one embedded server per machine."""
        try:
            pid = int(Path(_MACHINE_PID_FILE).read_text(encoding="utf-8").split()[0])
        except (OSError, ValueError, IndexError):
            return
        if not _pid_alive(pid):
            return
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            cwd = Path("?")
        if cwd != self.base:
            raise StoreUnavailableError(
                f"another embedded Milvus (pid {pid}, data in {cwd}) holds {_MACHINE_PID_FILE}",
                user_message=(
                    f"Another embedded Milvus server is running on this machine (pid {pid}, data in {cwd}); "
                    "Milvus 2.3 allows one per machine. Stop it with `python -m rag milvus stop` "
                    "(with its --data-dir), or point MILVUS_URI at it."
                ),
            )

    def _spawn(self, pinned: dict[str, int] | None = None) -> ServerState:
        from milvus import _initialize_data_files

        pinned = dict(pinned or {})
        health_pin = pinned.pop("health_port", None)
        config = _reuse_port_config()(data_dir=str(self.base), **pinned)  # same ports as last time: clients reconnect
        for component in _COMPONENTS:
            config.set(f"{component}.ip", "127.0.0.1")
        config.set("authorization_enabled", True)
        try:
            config.resolve()
        except RuntimeError:  # a pinned port is taken by something else: let the wrapper choose
            config = _reuse_port_config()(data_dir=str(self.base))
            for component in _COMPONENTS:
                config.set(f"{component}.ip", "127.0.0.1")
            config.set("authorization_enabled", True)
            config.resolve()
            health_pin = None
        _initialize_data_files(config.base_data_dir)
        health_port, sock = config.resolve_port(health_pin or 9091)
        sock.close()
        chosen = {k: int(config.get(k)) for k in config.configurable_items if k.endswith("_port")}
        exe = self.base / "bin" / "milvus"
        env = milvus_environment(os.environ, exe.parent, health_port, self.base / "run")
        log = open(self.base / "logs" / "milvus-stdout.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [str(exe), "run", "standalone"],
                cwd=self.base,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        state = ServerState(
            pid=proc.pid, proxy_port=int(config.get("proxy_port")), health_port=health_port, started_at=time.time()
        )
        self._state_file.write_text(json.dumps(asdict(state)), encoding="utf-8")
        self._last_ports_file.write_text(json.dumps({**chosen, "health_port": health_port}), encoding="utf-8")
        if not self._wait_healthy(state, self.start_timeout, proc):
            self._terminate(proc.pid)
            self._state_file.unlink(missing_ok=True)
            raise StoreUnavailableError(
                f"embedded Milvus did not become healthy within {self.start_timeout:.0f} s",
                user_message=(
                    f"The embedded Milvus server did not start; see {self.base / 'logs'} "
                    f"(milvus-stdout.log). Try `python -m rag milvus stop` then start again."
                ),
            )
        return state

    def _wait_healthy(self, state: ServerState, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return False
            if not _pid_alive(state.pid):
                return False
            if _healthy(state.health_port):
                return True
            time.sleep(0.2)
        return False

    def _secure(self, state: ServerState) -> None:
        """Replace the default root password by the generated secret the first time."""
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        secret = self._secret()
        deadline = time.monotonic() + 30
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                MilvusClient(uri=state.uri, token=f"root:{secret}", timeout=5).close()
                return
            except MilvusException as exc:
                last = exc
            try:
                client = MilvusClient(uri=state.uri, token=f"root:{_DEFAULT_PASSWORD}", timeout=5)
                client.update_password("root", _DEFAULT_PASSWORD, secret)
                client.close()
                return
            except MilvusException as exc:
                last = exc
            time.sleep(0.5)
        raise StoreUnavailableError(f"cannot authenticate to the embedded Milvus: {last}")

    def _terminate(self, pid: int, timeout: float = 60.0) -> None:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError:
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:  # reap it when it is our child
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                if not _pid_alive(pid):
                    return
                time.sleep(0.1)
        raise StoreUnavailableError(f"embedded Milvus (pid {pid}) did not exit")
