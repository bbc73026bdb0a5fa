"""The HTTP API and the MCP server as clients meet them: `python -m rag serve` as a real process on loopback,
driven by the official `openai` client, httpx, and the `mcp` client library over HTTP and over stdio (a second
real process, `python -m rag mcp`). Answers are written by the loopback OpenAI-compatible test server.

Accounts alice and bob each have a private workspace; every call carries a token, and a table of every route
and tool checks that one account's tokens never reach the other's workspace.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from click.testing import CliRunner
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from openai import OpenAI
from starlette.testclient import TestClient

from rag.api import create_app
from rag.cli import cli
from rag.config import load_settings
from rag.gateway import Gateway
from rag.mcp_server import create_mcp
from rag.milvus_server import EmbeddedMilvus
from rag.query import RETRIEVAL_ONLY_NOTE
from rag.remote import RemoteAccess
from rag.service import RagService
from tests.browser.conftest import _drop, milvus_app_environment
from tests.fakes.openai_server import FakeOpenAI
from tests.rag.api_server import REPO, serve_api

pytestmark = pytest.mark.milvus

ESSAY = "paul_graham_essay.txt"
LOCAL = "http://localhost:8000"  # calls without a token must be addressed to this machine by name
QUESTION = "What did the author work on before college?"
BOB_TEXT = "The rooftop beehives of the Calder building produced forty kilograms of heather honey this year. " * 3


@dataclass
class Api:
    """The running server, its environment, and the tokens made for it."""

    url: str
    env: dict[str, str]
    data_dir: Path
    tokens: dict[str, str] = field(default_factory=dict)
    workspaces: dict[str, str] = field(default_factory=dict)  # name -> id

    def http(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def openai(self, who: str) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=self.tokens[who], max_retries=0, timeout=120)

    def mcp_http(self, who: str) -> Client:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=120)
        return Client(streamable_http_client(f"{self.url}/mcp", http_client=http))

    def mcp_stdio(self, who: str) -> Client:
        env = {**self.env, "RAG_MCP_TOKEN": self.tokens[who]}
        return Client(StdioServerParameters(command=sys.executable, args=["-m", "rag", "mcp"], env=env, cwd=REPO))


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, milvus_server: EmbeddedMilvus, fake_openai: FakeOpenAI
) -> Iterator[Api]:
    """The API server on a fresh collection, with accounts alice and bob, their private workspaces, and tokens:
    alice (all her workspaces), alice-notes (only alice-notes), reader (alice, read-only), bob, burst (rate)."""
    state = milvus_server.start()
    work = tmp_path_factory.mktemp("api")
    collection = f"t_{uuid.uuid4().hex[:12]}"
    env = milvus_app_environment(
        state.uri,
        milvus_server.token,
        work / "data",
        collection,
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_API_KEY="",
        LLM_MODEL="fake-model",
        RAG_MAX_FILE_MB="1",
        RAG_MAX_FILES="3",
        RAG_API_RATE_LIMIT="300",
    )
    access = RemoteAccess.from_settings(load_settings(data_dir=work / "data", collection=collection))
    api = Api(url="", env=env, data_dir=work / "data")
    try:
        for name in ("alice", "bob"):
            account = access.accounts.add(name, "correct horse battery")
            private = access.workspaces_db.create(f"{name}-notes", owner=account.id, shared=False)
            api.workspaces[private.name] = private.id
        library = access.workspaces_db.create("library", default_role="viewer")  # shared: every account a viewer
        api.workspaces[library.name] = library.id
        for label, (name, workspace, read_only) in {
            "alice": ("alice", None, False),
            "alice-notes": ("alice", "alice-notes", False),
            "reader": ("alice", None, True),
            "bob": ("bob", None, False),
            "burst": ("bob", None, False),
            "doomed": ("alice", None, False),
        }.items():
            api.tokens[label] = access.issue(name, workspace, read_only)[1]
    finally:
        access.close()
    try:
        with serve_api(env, work / "serve.log") as (url, _proc):
            api.url = url
            yield api
    finally:
        _drop(state.uri, milvus_server.token, collection)


def _wait_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.5)


def _upload(client: httpx.Client, path: Path, workspace: str, name: str | None = None) -> dict[str, Any]:
    """Upload one file, wait for its job, return the finished job."""
    with open(path, "rb") as fh:
        response = client.post("/v1/documents", files={"files": (name or path.name, fh)}, data={"workspace": workspace})
    assert response.status_code == 202, response.text
    job = _wait_job(client, response.json()["id"])
    assert job["state"] == "done" and job["report"]["files"][0]["status"] == "indexed", job
    return job


def _cited(text: str) -> list[int]:
    """The source numbers an answer cites, [n] (or Markdown-escaped \\[n\\])."""
    import re

    return [int(n) for n in re.findall(r"\\?\[(\d+)\\?\]", text)]


async def _ask_mcp(client: Client, workspace: str) -> dict[str, Any]:
    result = await client.call_tool("ask", {"question": QUESTION, "workspace": workspace})
    assert not result.is_error, result.content
    return result.structured_content  # type: ignore[return-value]


async def _mcp_files(client: Client, workspace: str) -> list[str]:
    result = await client.call_tool("list_documents", {"workspace": workspace})
    assert not result.is_error, result.content
    return [d["file_name"] for d in result.structured_content["result"]]  # type: ignore[index]


def test_upload_ask_with_every_client_delete_and_find_it_gone(api: Api, corpus: Path) -> None:
    http = api.http("alice")
    job = _upload(http, corpus / ESSAY, "alice-notes")
    doc_id = job["report"]["files"][0]["doc_id"]
    assert job["owner"].startswith("account:") and job["workspace"] == api.workspaces["alice-notes"]
    listed = http.get("/v1/documents", params={"workspace": "alice-notes"}).json()
    assert [d["file_name"] for d in listed["documents"]] == [ESSAY]
    assert "stored_path" not in listed["documents"][0]  # the server's own paths stay on the server

    client = api.openai("alice")
    models = {m.id for m in client.models.list()}
    assert {"workspace:default", "workspace:alice-notes"} <= models and "workspace:bob-notes" not in models

    whole = client.chat.completions.create(
        model="workspace:alice-notes", messages=[{"role": "user", "content": QUESTION}]
    )
    text = whole.choices[0].message.content or ""
    assert whole.mode == "llm" and _cited(text) == [1], text  # type: ignore[attr-defined]
    assert whole.sources[0]["file_name"] == ESSAY and whole.sources[0]["doc_id"] == doc_id  # type: ignore[attr-defined]

    pieces, last = [], None
    for chunk in client.chat.completions.create(
        model="workspace:alice-notes", messages=[{"role": "user", "content": QUESTION}], stream=True
    ):
        pieces.append(chunk.choices[0].delta.content or "")
        last = chunk
    streamed = "".join(pieces)
    assert last is not None and last.choices[0].finish_reason == "stop" and len(pieces) > 2
    assert _cited(streamed) == [1] and last.sources[0]["file_name"] == ESSAY, streamed  # type: ignore[attr-defined]

    search = http.post("/v1/search", json={"query": "programming on the IBM 1401", "workspace": "alice-notes"})
    hit = search.json()["results"][0]
    assert search.status_code == 200 and hit["file_name"] == ESSAY
    passage = http.get(f"/v1/documents/{doc_id}/chunks/{hit['chunk']}", params={"workspace": "alice-notes"}).json()
    assert passage["text"] in passage["context"] and passage["file_name"] == ESSAY
    beyond = http.get(
        f"/v1/documents/{doc_id}/chunks/{listed['documents'][0]['chunks']}", params={"workspace": "alice-notes"}
    )
    assert beyond.status_code == 404 and "has chunks 0 to" in beyond.json()["error"]["message"]

    async def with_mcp() -> None:
        async with api.mcp_http("alice") as over_http, api.mcp_stdio("alice-notes") as over_stdio:
            assert {t.name for t in (await over_stdio.list_tools()).tools} >= {
                "search",
                "ask",
                "list_documents",
                "get_passage",
            }
            for client in (over_http, over_stdio):
                answer = await _ask_mcp(client, "alice-notes")
                assert _cited(answer["answer"]) == [1] and answer["sources"][0]["file_name"] == ESSAY, answer
                assert await _mcp_files(client, "alice-notes") == [ESSAY]
            source = answer["sources"][0]
            got = await over_http.call_tool(
                "get_passage", {"doc_id": source["doc_id"], "chunk": source["chunk"], "workspace": "alice-notes"}
            )
            assert not got.is_error and got.structured_content["file_name"] == ESSAY  # type: ignore[index]
            for only, expected in (([doc_id], {ESSAY}), (["0" * 64], set())):  # a search inside some documents
                found = await over_http.call_tool(
                    "search", {"query": QUESTION, "doc_ids": only, "workspace": "alice-notes"}
                )
                assert {s["file_name"] for s in found.structured_content["result"]} == expected  # type: ignore[index]
            uri = f"rag://workspaces/{api.workspaces['alice-notes']}/documents/{doc_id}"
            text = (await over_stdio.read_resource(uri)).contents[0].text  # type: ignore[union-attr]
            assert text.startswith("What I Worked On") and "IBM 1401" in text

            deleted = http.delete(f"/v1/documents/{doc_id}", params={"workspace": "alice-notes"})
            assert deleted.status_code == 200 and deleted.json()["file_name"] == ESSAY

            for client in (over_http, over_stdio):  # gone for every client at once, the other process too
                assert await _mcp_files(client, "alice-notes") == []
                found = await client.call_tool("search", {"query": QUESTION, "workspace": "alice-notes"})
                assert found.structured_content == {"result": []}, found.structured_content

    anyio.run(with_mcp)
    assert http.get("/v1/documents", params={"workspace": "alice-notes"}).json()["documents"] == []
    assert http.get(f"/v1/documents/{doc_id}", params={"workspace": "alice-notes"}).status_code == 404
    after = client.chat.completions.create(
        model="workspace:alice-notes", messages=[{"role": "user", "content": QUESTION}]
    )
    assert after.sources == []  # type: ignore[attr-defined]


# Every route and tool with bob's workspace (B) or bob's document: (method, path, what it sends).
ASK_B = {"model": "workspace:{B}", "messages": [{"role": "user", "content": "honey?"}]}
EVAL_B = {"workspace": "{B}", "questions": [{"question": "q", "file": "bob.txt", "evidence": "heather honey"}]}
ROUTES = [
    ("GET", "/v1/documents", {"params": {"workspace": "{B}"}}),
    ("GET", "/v1/documents/{doc}", {"params": {"workspace": "{B}"}}),
    ("GET", "/v1/documents/{doc}", {}),
    ("GET", "/v1/documents/{doc}/chunks/0", {"params": {"workspace": "{B}"}}),
    ("GET", "/v1/documents/{doc}/chunks/0", {}),
    ("DELETE", "/v1/documents/{doc}", {"params": {"workspace": "{B}"}}),
    ("DELETE", "/v1/documents/{doc}", {}),
    ("POST", "/v1/documents", {"files": {"files": ("x.txt", b"some words")}, "data": {"workspace": "{B}"}}),
    ("POST", "/v1/search", {"json": {"query": "honey", "workspace": "{B}"}}),
    ("POST", "/v1/chat/completions", {"json": ASK_B}),
    ("POST", "/v1/chat/completions", {"json": {**ASK_B, "stream": True}}),
    ("POST", "/v1/eval", {"json": EVAL_B}),
    ("GET", "/v1/jobs/{job}", {}),
]
TOOLS = [
    ("search", {"query": "honey", "workspace": "{B}"}),
    ("ask", {"question": "honey?", "workspace": "{B}"}),
    ("list_documents", {"workspace": "{B}"}),
    ("get_passage", {"doc_id": "{doc}", "chunk": 0, "workspace": "{B}"}),
    ("get_passage", {"doc_id": "{doc}", "chunk": 0}),
]


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_fill(v, names) for v in value)
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    return value


def test_a_token_never_reaches_another_accounts_workspace(api: Api, tmp_path: Path) -> None:
    bob = api.http("bob")
    note = tmp_path / "bob.txt"
    note.write_text(BOB_TEXT)
    job = _upload(bob, note, "bob-notes")
    doc = job["report"]["files"][0]["doc_id"]
    assert bob.post("/v1/search", json={"query": "heather honey", "workspace": "bob-notes"}).json()["results"]
    pair = {"question": "Which honey?", "file": "bob.txt", "evidence": "forty kilograms of heather honey"}
    evaluated = bob.post("/v1/eval", json={"workspace": "bob-notes", "questions": [pair]})
    assert evaluated.status_code == 200 and evaluated.json()[0]["hit_at"]["1"] == 1.0, evaluated.text

    outsiders = ("alice", "alice-notes", "reader")
    for who in outsiders:
        # B by name and by id; bob's document and job by id, alone or with B.
        for workspace in ("bob-notes", api.workspaces["bob-notes"]):
            names = {"B": workspace, "doc": doc, "job": job["id"]}
            for method, path, sends in ROUTES:
                with api.http(who) as client:
                    response = client.request(method, _fill(path, names), **_fill(sends, names))
                assert response.status_code in (403, 404), (who, method, path, sends, response.text)
                assert response.json()["error"]["message"], response.text

        async def tools(who: str = who) -> None:
            async with api.mcp_http(who) as client:
                listed = (await client.call_tool("list_workspaces", {})).structured_content["result"]  # type: ignore[index]
                assert "bob-notes" not in {w["name"] for w in listed} and listed, listed
                for name, arguments in TOOLS:
                    result = await client.call_tool(name, _fill(arguments, {"B": "bob-notes", "doc": doc}))
                    text = result.content[0].text  # type: ignore[union-attr]
                    assert result.is_error and ("403 Forbidden" in text or "404 Not Found" in text), (who, name, text)
                for uri in (
                    f"rag://workspaces/{api.workspaces['bob-notes']}/documents",
                    f"rag://workspaces/{api.workspaces['bob-notes']}/documents/{doc}",
                ):
                    with pytest.raises(Exception, match="40[34]"):
                        await client.read_resource(uri)

        anyio.run(tools)

    # And bob's own token still reaches all of it: the refusals above were about who asked.
    assert bob.get(f"/v1/documents/{doc}", params={"workspace": "bob-notes"}).status_code == 200
    assert bob.get(f"/v1/jobs/{job['id']}").status_code == 200
    # alice's workspace-bound token: the shared default workspace, which alice's account sees, is refused (403).
    narrow = api.http("alice-notes")
    refused = narrow.get("/v1/documents", params={"workspace": "default"})
    assert refused.status_code == 403 and "only use its own workspace" in refused.json()["error"]["message"]
    assert [m["id"] for m in narrow.get("/v1/models").json()["data"]] == ["workspace:alice-notes"]


def test_a_read_only_token_or_a_viewer_reads_but_cannot_upload_or_delete(api: Api, tmp_path: Path) -> None:
    alice, reader = api.http("alice"), api.http("reader")
    note = tmp_path / "alice.txt"
    note.write_text("The greenhouse thermostat must stay at nineteen degrees during the orchid season. " * 3)
    doc = _upload(alice, note, "alice-notes")["report"]["files"][0]["doc_id"]
    assert reader.get("/v1/documents", params={"workspace": "alice-notes"}).status_code == 200
    assert reader.post("/v1/search", json={"query": "thermostat", "workspace": "alice-notes"}).json()["results"]
    upload = reader.post("/v1/documents", files={"files": ("y.txt", b"words")}, data={"workspace": "alice-notes"})
    delete = reader.delete(f"/v1/documents/{doc}", params={"workspace": "alice-notes"})
    for response in (upload, delete):
        assert response.status_code == 403 and "read-only" in response.json()["error"]["message"]
    assert alice.get(f"/v1/documents/{doc}", params={"workspace": "alice-notes"}).status_code == 200  # still there
    # A read-write token still has only its account's role: a viewer of the shared library cannot upload there.
    viewer = alice.post("/v1/documents", files={"files": ("z.txt", b"words")}, data={"workspace": "library"})
    assert viewer.status_code == 403 and "You are a viewer" in viewer.json()["error"]["message"], viewer.text
    assert alice.get("/v1/documents", params={"workspace": "library"}).status_code == 200
    assert alice.delete(f"/v1/documents/{doc}", params={"workspace": "alice-notes"}).status_code == 200


def test_a_revoked_token_is_refused_at_once(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    doomed = api.http("doomed")
    assert doomed.get("/v1/models").status_code == 200
    token_id = api.tokens["doomed"].removeprefix("rag_").split("_", 1)[0]
    monkeypatch.setenv("RAG_DATA_DIR", str(api.data_dir))
    revoked = CliRunner().invoke(cli, ["tokens", "revoke", token_id], obj={})
    assert revoked.exit_code == 0, revoked.output
    refused = doomed.get("/v1/models")  # the very next call, on a connection the server already trusted
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    assert refused.headers["www-authenticate"] == "Bearer"

    async def mcp() -> None:
        with pytest.raises(ExceptionGroup) as failed:  # the SDK reports the 401 as an error response
            async with api.mcp_http("doomed") as client:
                await client.list_tools()
        assert "error response" in repr(failed.value)

    anyio.run(mcp)
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    raw = doomed.post("/mcp", json=initialize, headers={"accept": "application/json, text/event-stream"})
    assert raw.status_code == 401 and "revoked" in raw.json()["error"]["message"]
    assert api.http(None).get("/v1/models").status_code == 401  # accounts exist: no token, no entry
    assert api.http(None).get("/health").json()["status"] == "ok"


def test_limits_are_the_uis(api: Api) -> None:
    alice = api.http("alice")
    big = alice.post("/v1/documents", files={"files": ("big.txt", b"x" * 1_200_000)}, data={"workspace": "alice-notes"})
    assert big.status_code == 413 and "big.txt is 1.1 MB; the limit is 1 MB" in big.json()["error"]["message"]
    many = alice.post("/v1/documents", files=[("files", (f"f{i}.txt", b"words")) for i in range(4)])
    assert many.status_code == 413 and "more than the 3 allowed" in many.json()["error"]["message"]
    huge = alice.post("/v1/documents", files={"files": ("huge.txt", b"x" * 5_000_000)})  # past files x size
    assert huge.status_code == 413
    flood = alice.post(
        "/v1/search", content=json.dumps({"query": "x" * 2_000_000}), headers={"content-type": "application/json"}
    )
    assert flood.status_code == 413
    assert alice.get("/v1/documents", params={"workspace": "alice-notes"}).json()["documents"] == []

    burst = api.http("burst")
    started, served = time.monotonic(), 0
    while (limited := burst.get("/v1/models")).status_code == 200 and served < 1000:
        served += 1
    refilled = (time.monotonic() - started) * 300 / 60  # RAG_API_RATE_LIMIT=300 a minute, a burst of as many
    assert limited.status_code == 429 and 300 <= served <= 300 + refilled + 1, (served, refilled)
    assert int(limited.headers["retry-after"]) >= 1 and "300 a minute" in limited.json()["error"]["message"]
    assert alice.get("/v1/models").status_code == 200  # another token's allowance is its own


def test_the_schema_is_the_engines_models(api: Api) -> None:
    schema = httpx.get(f"{api.url}/openapi.json").json()
    assert {"DocumentRecord", "JobSnapshot", "Source", "EvalReport", "Passage", "Workspace"} <= set(
        schema["components"]["schemas"]
    )
    assert {
        "/v1/chat/completions",
        "/v1/models",
        "/v1/search",
        "/v1/documents",
        "/v1/jobs/{job_id}",
        "/v1/eval",
    } <= set(schema["paths"])
    assert httpx.get(f"{api.url}/docs").status_code == 200


def test_retrieval_only_answers_are_labelled_as_such(service: RagService, tmp_path: Path) -> None:
    """No LLM configured: the chat route (whole and streamed) and the MCP `ask` tool say the answer is quoted."""
    note = tmp_path / "bees.txt"
    note.write_text(BOB_TEXT)
    service.ingest([note])
    access = RemoteAccess.from_settings(service.settings)
    gateway = Gateway(service, access)
    ask = {
        "model": "workspace:default",
        "messages": [{"role": "user", "content": "How much honey did the hives make?"}],
    }
    try:
        # In this process, open: no account, no token.
        with TestClient(create_app(gateway, mcp=False), base_url=LOCAL) as client:
            whole = client.post("/v1/chat/completions", json=ask).json()
            text = whole["choices"][0]["message"]["content"]
            assert whole["mode"] == "retrieval-only" and text.startswith(f"({RETRIEVAL_ONLY_NOTE})")
            assert _cited(text) and whole["sources"][_cited(text)[0] - 1]["file_name"] == "bees.txt"
            with client.stream("POST", "/v1/chat/completions", json={**ask, "stream": True}) as response:
                events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            assert chunks[0]["choices"][0]["delta"]["content"].startswith("(Retrieval-only mode")
            assert chunks[-1]["mode"] == "retrieval-only" and chunks[-1]["sources"][0]["file_name"] == "bees.txt"

        # `python -m rag mcp --http`: MCP alone.
        with TestClient(create_app(gateway, rest=False), base_url=LOCAL) as client:
            assert client.get("/health").json()["mode"] == "retrieval-only"
            rebound = client.get("/v1/models", headers={"host": "docs.evil.example:8000"})  # DNS rebinding
            assert rebound.status_code == 403 and "127.0.0.1 or localhost" in rebound.json()["error"]["message"]
            assert client.get("/v1/models").status_code == client.get("/docs").status_code == 404

        async def over_mcp() -> None:
            async with Client(create_mcp(gateway, local=access.local())) as client:
                result = await client.call_tool("ask", {"question": "How much honey?"})
                assert result.structured_content["mode"] == "retrieval-only"  # type: ignore[index]

        anyio.run(over_mcp)
    finally:
        access.close()
