"""Structural checks of docker-compose.yml (Docker itself is not run)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = ROOT / "docker-compose.yml"
REQUIRED_SERVICES = ("etcd", "minio", "standalone", "app")

Compose = dict[str, Any]


# --- helpers ---


def load_compose(text: str) -> Compose:
    """Parse compose YAML text into a dict."""
    data = yaml.safe_load(text)
    assert isinstance(data, dict), "compose file must be a mapping"
    return data


def services(compose: Compose) -> dict[str, dict[str, Any]]:
    """Return the `services` mapping (empty if absent)."""
    return compose.get("services") or {}


def image_tag(image: str) -> str | None:
    """Return an image's tag (a digest counts), or None if it has none."""
    if "@sha256:" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def unpinned_images(compose: Compose) -> list[str]:
    """List services with an untagged or `latest` image (build-only ones are exempt)."""
    bad: list[str] = []
    for name, svc in services(compose).items():
        image = svc.get("image")
        if image is None:
            if "build" not in svc:
                bad.append(f"{name}: no image and no build")
            continue
        tag = image_tag(str(image))
        if tag is None or tag == "latest" or "${" in str(image):
            bad.append(f"{name}: {image}")
    return bad


def missing_healthchecks(compose: Compose, names: tuple[str, ...]) -> list[str]:
    """Named services lacking a healthcheck with a non-empty, non-NONE `test`."""
    bad: list[str] = []
    for name in names:
        hc = services(compose).get(name, {}).get("healthcheck") or {}
        test = hc.get("test")
        if hc.get("disable") or not test or (isinstance(test, list) and test[0] == "NONE"):
            bad.append(name)
    return bad


def bad_depends_on(compose: Compose) -> list[str]:
    """depends_on entries that don't wait for a healthy service with a healthcheck."""
    svcs = services(compose)
    bad: list[str] = []
    for name, svc in svcs.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):  # short syntax = service_started
            bad.extend(f"{name} -> {dep}: short syntax" for dep in deps)
            continue
        for dep, spec in deps.items():
            if (spec or {}).get("condition") != "service_healthy":
                bad.append(f"{name} -> {dep}: condition is not service_healthy")
            if dep not in svcs:
                bad.append(f"{name} -> {dep}: no such service")
            elif missing_healthchecks(compose, (dep,)):
                bad.append(f"{name} -> {dep}: target has no healthcheck")
    return bad


def volume_problems(compose: Compose) -> list[str]:
    """List service volumes that are bind mounts or undeclared named volumes."""
    declared = set((compose.get("volumes") or {}).keys())
    bad: list[str] = []
    for name, svc in services(compose).items():
        for vol in svc.get("volumes") or []:
            if isinstance(vol, dict):
                source, kind = str(vol.get("source", "")), vol.get("type", "volume")
            else:
                source = str(vol).split(":", 1)[0]
                kind = "bind" if source.startswith(("/", ".", "~", "$")) else "volume"
            if kind != "volume":
                bad.append(f"{name}: bind mount {source}")
            elif source not in declared:
                bad.append(f"{name}: undeclared volume {source}")
    return bad


def environment(svc: dict[str, Any]) -> dict[str, str]:
    """Normalise list- or dict-style `environment` to a dict."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def published_container_ports(svc: dict[str, Any]) -> set[tuple[str, int]]:
    """(host_port, container_port) pairs from short or long port syntax."""
    out: set[tuple[str, int]] = set()
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            out.add((str(port.get("published", "")), int(port["target"])))
            continue
        parts = str(port).split("/", 1)[0].split(":")
        if len(parts) >= 2:
            out.add((parts[-2], int(parts[-1])))
    return out


_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def with_defaults(value: str) -> str:
    """A compose value as it is when no variable is set: `${X:-d}` is d, `${X}` and `${X:?msg}` are empty."""
    return _VARIABLE.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else "", value)


def host_bindings(svc: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(host_ip, host_port, container_port) of each published port with no variable set; host_ip '' = all."""
    out: list[tuple[str, str, int]] = []
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            out.append(
                (with_defaults(str(port.get("host_ip", ""))), str(port.get("published", "")), int(port["target"]))
            )
            continue
        spec = with_defaults(str(port)).split("/", 1)[0]
        ip, _, rest = spec.rpartition("]:") if spec.startswith("[") else ("", "", spec)
        parts = rest.split(":")
        if ip:
            out.append((ip.lstrip("["), parts[0], int(parts[-1])))
        elif len(parts) == 3:
            out.append((parts[0], parts[1], int(parts[2])))
        elif len(parts) == 2:
            out.append(("", parts[0], int(parts[1])))
        else:
            out.append(("", "", int(parts[0])))  # a random host port on every interface
    return out


def open_to_all(compose: Compose) -> list[str]:
    """Ports published on every interface when no variable is set (an empty, 0.0.0.0 or :: host address)."""
    return [
        f"{name}: {host}:{target}"
        for name, svc in services(compose).items()
        for ip, host, target in host_bindings(svc)
        if ip in ("", "0.0.0.0", "::")
    ]


def default_credentials(compose: Compose, names: tuple[str, ...]) -> list[str]:
    """Credential variables of the named services that get a value without the operator giving one."""
    bad: list[str] = []
    for name in names:
        for var, value in environment(services(compose).get(name, {})).items():
            if re.search("USER|PASSWORD|KEY|SECRET", var) and not re.fullmatch(r"\$\{\w+:\?[^}]+\}", value):
                bad.append(f"{name}: {var}={value}")
    return bad


def milvus_major_minor(image: str) -> tuple[int, int] | None:
    """(major, minor) of a milvusdb/milvus:vX.Y.Z image, else None."""
    m = re.fullmatch(r"milvusdb/milvus:v(\d+)\.(\d+)\.\d+\S*", image)
    return (int(m.group(1)), int(m.group(2))) if m else None


# --- fixtures ---


@pytest.fixture(scope="module")
def compose() -> Compose:
    """Parse the repository's compose file."""
    return load_compose(COMPOSE_PATH.read_text(encoding="utf-8"))


BAD_COMPOSE = """
services:
  db:
    image: milvusdb/milvus:latest
    volumes: ["./volumes/milvus:/var/lib/milvus", "ghost:/x"]
    depends_on: [cache]
  cache:
    image: redis
  web:
    image: example/web:1.0
    healthcheck: {test: ["NONE"]}
    depends_on:
      db: {condition: service_started}
      nowhere: {condition: service_healthy}
"""


@pytest.fixture(scope="module")
def bad() -> Compose:
    """Parse a compose file that violates every rule checked here."""
    return load_compose(BAD_COMPOSE)


# --- the real file ---


def test_required_services_present(compose: Compose) -> None:
    assert set(REQUIRED_SERVICES) <= set(services(compose))


def test_images_pinned(compose: Compose) -> None:
    assert unpinned_images(compose) == []


def test_upstream_images(compose: Compose) -> None:
    svcs = services(compose)
    assert re.fullmatch(r"quay\.io/coreos/etcd:v3\.5\.\d+", svcs["etcd"]["image"])
    assert re.fullmatch(r"minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", svcs["minio"]["image"])
    assert milvus_major_minor(svcs["standalone"]["image"]) == (2, 6)
    assert svcs["app"]["build"]["dockerfile"] == "Dockerfile"
    assert (ROOT / svcs["app"]["build"]["dockerfile"]).is_file()


def test_healthchecks(compose: Compose) -> None:
    assert missing_healthchecks(compose, REQUIRED_SERVICES) == []
    app_test = " ".join(services(compose)["app"]["healthcheck"]["test"])
    assert "http://localhost:8501/_stcore/health" in app_test


def test_depends_on_waits_for_healthy(compose: Compose) -> None:
    assert bad_depends_on(compose) == []
    svcs = services(compose)
    assert set(svcs["standalone"]["depends_on"]) == {"etcd", "minio"}
    assert set(svcs["app"]["depends_on"]) == {"standalone"}


def test_named_volumes(compose: Compose) -> None:
    assert volume_problems(compose) == []
    app_mounts = [str(v).split(":", 1)[1] for v in services(compose)["app"]["volumes"]]
    assert "/data" in app_mounts


def test_app_environment(compose: Compose) -> None:
    env = environment(services(compose)["app"])
    uri = urlsplit(env["MILVUS_URI"])
    assert (uri.hostname, uri.port) == ("standalone", 19530)
    assert env["RAG_DATA_DIR"] == "/data"
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LLM_MODEL", "APP_PASSWORD"):
        assert env[var] == f"${{{var}:-}}"


def test_app_port_published(compose: Compose) -> None:
    assert ("8501", 8501) in published_container_ports(services(compose)["app"])


def test_nothing_is_published_on_all_interfaces_by_default(compose: Compose) -> None:
    assert open_to_all(compose) == []
    assert host_bindings(services(compose)["app"]) == [("127.0.0.1", "8501", 8501)]
    assert services(compose)["app"]["ports"] == ["${APP_BIND:-127.0.0.1}:8501:8501"]  # opened only on purpose


def test_minio_has_no_default_credentials(compose: Compose) -> None:
    svcs = services(compose)
    assert default_credentials(compose, ("minio", "standalone")) == []
    minio, milvus = environment(svcs["minio"]), environment(svcs["standalone"])
    assert {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= set(minio)
    assert milvus["MINIO_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]  # Milvus logs in as the user MinIO was given
    assert milvus["MINIO_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert "minioadmin" not in COMPOSE_PATH.read_text(encoding="utf-8")


def test_api_service_is_off_by_default_and_loopback_only(compose: Compose) -> None:
    """`python -m rag serve` in compose: only with `--profile api`, the app's image, data and settings, published
    on 127.0.0.1 like the app."""
    svcs = services(compose)
    api, app = svcs["api"], svcs["app"]
    assert api["profiles"] == ["api"] and "profiles" not in app
    assert api["build"] == app["build"]
    assert api["command"][:4] == ["python", "-m", "rag", "serve"]
    assert api["command"][api["command"].index("--port") + 1] == "8000"
    assert host_bindings(api) == [("127.0.0.1", "8000", 8000)]
    assert api["ports"] == ["${API_BIND:-127.0.0.1}:8000:8000"]
    assert api["volumes"] == app["volumes"] == ["app-data:/data"]  # the same accounts, tokens and documents
    env, app_env = environment(api), environment(app)
    assert {k: env[k] for k in app_env} == app_env
    assert missing_healthchecks(compose, ("api",)) == []
    assert "http://localhost:8000/health" in " ".join(api["healthcheck"]["test"])
    assert set(api["depends_on"]) == {"standalone"}


def test_api_command_is_a_real_cli_command() -> None:
    from click.testing import CliRunner

    from rag.cli import cli

    compose = load_compose(COMPOSE_PATH.read_text(encoding="utf-8"))
    argv = services(compose)["api"]["command"][3:]
    result = CliRunner().invoke(cli, [*argv, "--help"], obj={})
    assert result.exit_code == 0 and "--host" in result.output and "--port" in result.output


# --- the checkers can fail ---


def test_checkers_flag_bad_compose(bad: Compose) -> None:
    assert unpinned_images(bad) == ["db: milvusdb/milvus:latest", "cache: redis"]
    assert missing_healthchecks(bad, ("db", "web")) == ["db", "web"]
    assert bad_depends_on(bad) == [
        "db -> cache: short syntax",
        "web -> db: condition is not service_healthy",
        "web -> db: target has no healthcheck",
        "web -> nowhere: no such service",
    ]
    assert volume_problems(bad) == [
        "db: bind mount ./volumes/milvus",
        "db: undeclared volume ghost",
    ]
    assert milvus_major_minor("milvusdb/milvus:v2.5.16") == (2, 5)
    assert milvus_major_minor("milvusdb/milvus:latest") is None


def test_exposure_checkers_flag_open_ports_and_default_credentials() -> None:
    compose = load_compose(
        """
services:
  web: {image: w:1, ports: ["8501:8501", "${BIND:-0.0.0.0}:80:80", "${BIND:-127.0.0.1}:81:81", "9000"]}
  db: {image: d:1, ports: [{target: 5432, published: 5432}, {target: 1, published: 2, host_ip: 127.0.0.1}]}
  minio:
    image: m:1
    environment: {MINIO_ROOT_USER: minioadmin, MINIO_ROOT_PASSWORD: "${PW:-minioadmin}", MINIO_REGION: x}
"""
    )
    assert open_to_all(compose) == ["web: 8501:8501", "web: 80:80", "web: :9000", "db: 5432:5432"]
    assert default_credentials(compose, ("minio",)) == [
        "minio: MINIO_ROOT_USER=minioadmin",
        "minio: MINIO_ROOT_PASSWORD=${PW:-minioadmin}",
    ]
    assert with_defaults("${A:-x}-${B}-${C:?must}-${D-y}") == "x---y"
    assert host_bindings({"ports": ["[::1]:80:8080", "127.0.0.1:9000:9000/tcp"]}) == [
        ("::1", "80", 8080),
        ("127.0.0.1", "9000", 9000),
    ]


def test_helpers_parse_variants() -> None:
    assert image_tag("localhost:5000/img") is None
    assert image_tag("localhost:5000/img:1.2") == "1.2"
    assert image_tag("img@sha256:abc") == "sha256:abc"
    assert unpinned_images({"services": {"x": {"image": "img:${TAG}"}}}) == ["x: img:${TAG}"]
    assert environment({"environment": ["A=1", "B"]}) == {"A": "1", "B": ""}
    assert published_container_ports({"ports": ["127.0.0.1:80:8501", {"target": 1, "published": 2}, "9000"]}) == {
        ("80", 8501),
        ("2", 1),
    }
