"""Structural checks of the Dockerfile and .dockerignore (no image is built)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

Instruction = tuple[str, str]


# --- parser ---


def parse_dockerfile(text: str) -> list[Instruction]:
    """Return (INSTRUCTION, args) pairs; join continuations, drop comments."""
    instructions: list[Instruction] = []
    buffer: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker also drops comment lines inside continuations
        if line.endswith("\\"):
            buffer.append(line[:-1].strip())
            continue
        buffer.append(line)
        joined = " ".join(part for part in buffer if part)
        buffer = []
        keyword, _, args = joined.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    if buffer:
        raise ValueError("dangling line continuation at end of Dockerfile")
    return instructions


def args_of(instructions: list[Instruction], keyword: str) -> list[str]:
    """Arguments of every instruction with the given keyword."""
    return [args for kw, args in instructions if kw == keyword]


def final_base_image(instructions: list[Instruction]) -> str:
    """Image of the last FROM (the runtime stage), without flags or `AS name`."""
    froms = args_of(instructions, "FROM")
    if not froms:
        raise ValueError("no FROM instruction")
    tokens = [t for t in froms[-1].split() if not t.startswith("--")]
    return tokens[0]


def is_pinned_python_slim(image: str) -> bool:
    """Check for a python:<major>.<minor>[.<patch>]-slim[-<debian>] image."""
    return re.fullmatch(r"(docker\.io/(library/)?)?python:3\.\d+(\.\d+)?-slim(-[a-z]+)?", image) is not None


def runs_as_non_root_before_cmd(instructions: list[Instruction]) -> bool:
    """Check that the last USER before CMD is neither root nor uid 0."""
    keywords = [kw for kw, _ in instructions]
    if "CMD" not in keywords:
        return False
    cmd_at = len(keywords) - 1 - keywords[::-1].index("CMD")
    users = [args for kw, args in instructions[:cmd_at] if kw == "USER"]
    if not users:
        return False
    user = users[-1].split(":", 1)[0].strip()
    return user not in {"root", "0", ""}


def env_vars(instructions: list[Instruction]) -> dict[str, str]:
    """Merge all ENV instructions (both `K=V ...` and legacy `K V` forms)."""
    env: dict[str, str] = {}
    for args in args_of(instructions, "ENV"):
        tokens = shlex.split(args)
        if tokens and "=" not in tokens[0]:
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            key, _, value = token.partition("=")
            env[key] = value
    return env


def exposed_ports(instructions: list[Instruction]) -> set[int]:
    """Ports from all EXPOSE instructions (protocol suffix dropped)."""
    return {int(p.split("/")[0]) for args in args_of(instructions, "EXPOSE") for p in args.split()}


def healthcheck_command(instructions: list[Instruction]) -> str:
    """Return the last HEALTHCHECK's command text ('' if absent or NONE)."""
    checks = args_of(instructions, "HEALTHCHECK")
    if not checks or checks[-1].upper() == "NONE":
        return ""
    _, _, command = checks[-1].partition("CMD")
    return command.strip()


def installs_requirements(instructions: list[Instruction]) -> bool:
    """Check that some RUN does `pip install ... -r requirements.txt`."""
    pattern = re.compile(r"\bpip3? install\b.*(-r|--requirement)[ =]\S*requirements\.txt\b")
    return any(pattern.search(args) for args in args_of(instructions, "RUN"))


def cmd_argv(instructions: list[Instruction]) -> list[str]:
    """Return the last CMD as argv (exec form JSON, or shell form split)."""
    cmds = args_of(instructions, "CMD")
    if not cmds:
        return []
    text = cmds[-1]
    return json.loads(text) if text.startswith("[") else shlex.split(text)


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """Build-context sources of COPY/ADD (skips `--from` stage copies)."""
    sources: list[str] = []
    for kw, args in instructions:
        if kw not in {"COPY", "ADD"} or "--from=" in args:
            continue
        tokens = [t for t in shlex.split(args) if not t.startswith("--")]
        sources.extend(tokens[:-1])
    return sources


def dockerignore_patterns(text: str) -> list[str]:
    """Return a .dockerignore's patterns without comments or edge slashes."""
    lines = (line.strip() for line in text.splitlines())
    return [line.strip("/") for line in lines if line and not line.startswith("#")]


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Approximate .dockerignore matching of a path or its parents (no `!`)."""
    parts = Path(path.strip("/")).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        anywhere = pattern.startswith("**/")
        for prefix in prefixes:
            target = Path(prefix).name if anywhere else prefix
            if fnmatch.fnmatch(target, pattern.removeprefix("**/")):
                return True
    return False


# --- the real files ---


def real() -> list[Instruction]:
    """Parse the repository's Dockerfile."""
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def test_base_image_is_pinned_python_slim() -> None:
    assert is_pinned_python_slim(final_base_image(real()))


def test_non_root_user_before_cmd() -> None:
    instructions = real()
    assert runs_as_non_root_before_cmd(instructions)
    assert "useradd --uid 10001" in " ".join(args_of(instructions, "RUN"))


def test_healthcheck_hits_streamlit_health() -> None:
    command = healthcheck_command(real())
    assert "http://localhost:8501/_stcore/health" in command
    assert "curl" not in command  # not installed in -slim


def test_exposes_8501() -> None:
    assert 8501 in exposed_ports(real())


def test_installs_requirements_with_cpu_torch() -> None:
    instructions = real()
    assert installs_requirements(instructions)
    assert "download.pytorch.org/whl/cpu" in " ".join(args_of(instructions, "RUN"))


def test_env() -> None:
    env = env_vars(real())
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["RAG_DATA_DIR"] == "/data"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_cmd_runs_streamlit_app() -> None:
    argv = cmd_argv(real())
    assert argv[:3] == ["streamlit", "run", "app.py"]
    assert "--server.address=0.0.0.0" in argv
    assert "--server.port=8501" in argv


def test_copy_sources_exist_and_are_not_ignored() -> None:
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text(encoding="utf-8"))
    sources = copy_sources(real())
    assert {
        "requirements.txt",
        "app.py",
        "rag/",
        "pages/",
        "ui/",
        ".streamlit/",
    } <= set(sources)
    missing = [s for s in sources if not (ROOT / s).exists()]
    ignored = [s for s in sources if is_ignored(s, patterns)]
    assert missing == [], f"COPY sources missing from the repo: {missing}"
    assert ignored == [], f"COPY sources excluded by .dockerignore: {ignored}"


def test_dockerignore_excludes_venv_and_git() -> None:
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text(encoding="utf-8"))
    for path in (".venv", ".git", ".venv/lib/x.py", "rag/__pycache__/m.pyc", ".env"):
        assert is_ignored(path, patterns), path
    assert not is_ignored("rag/store.py", patterns)


# --- the checkers can fail ---

BAD_DOCKERFILE = """\
# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
FROM python:latest
ENV HF_HUB_OFFLINE 0
RUN pip install \\
    # comment inside a continuation
    streamlit
EXPOSE 8000/tcp
HEALTHCHECK NONE
USER root
CMD python main.py
USER app
"""


def test_parser_joins_continuations_and_skips_comments() -> None:
    instructions = parse_dockerfile(BAD_DOCKERFILE)
    assert [kw for kw, _ in instructions] == [
        "FROM", "FROM", "ENV", "RUN", "EXPOSE", "HEALTHCHECK", "USER", "CMD", "USER",
    ]  # fmt: skip
    assert args_of(instructions, "RUN") == ["pip install streamlit"]


def test_checkers_flag_bad_dockerfile() -> None:
    instructions = parse_dockerfile(BAD_DOCKERFILE)
    assert final_base_image(instructions) == "python:latest"
    assert not is_pinned_python_slim("python:latest")
    assert not is_pinned_python_slim("python:3.11")
    assert not is_pinned_python_slim("python:slim")
    assert not runs_as_non_root_before_cmd(instructions)  # USER app comes after CMD
    assert not runs_as_non_root_before_cmd(parse_dockerfile("FROM x\nUSER 0:0\nCMD y"))
    assert not runs_as_non_root_before_cmd(parse_dockerfile("FROM x\nCMD y"))
    assert env_vars(instructions) == {"HF_HUB_OFFLINE": "0"}
    assert exposed_ports(instructions) == {8000}
    assert healthcheck_command(instructions) == ""
    assert not installs_requirements(instructions)
    assert cmd_argv(instructions) == ["python", "main.py"]
    assert is_ignored("rag/", ["rag"])
    assert not is_ignored(".venv", ["venv"])
    assert not is_ignored("rag/data/x", ["data"])  # un-prefixed patterns are root-relative
    assert is_ignored("rag/data/x", ["**/data"])


def test_parser_rejects_dangling_continuation() -> None:
    with pytest.raises(ValueError, match="dangling"):
        parse_dockerfile("FROM x\nRUN a \\")
