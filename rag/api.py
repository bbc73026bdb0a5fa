"""`python -m rag serve`: the engine over HTTP, for tools that are not a browser (FastAPI on uvicorn).

    GET    /v1/models                              the workspaces the caller may ask, as models `workspace:NAME`
    POST   /v1/chat/completions                    OpenAI-compatible chat (streamed as server-sent events, or
                                                   whole); cites [n] in the text, the sources in `sources`
    POST   /v1/search                              passages with file, page and score
    GET    /v1/documents                           a workspace's documents
    POST   /v1/documents                           upload files (multipart) → a job (202)
    GET    /v1/documents/{doc_id}                  one document
    DELETE /v1/documents/{doc_id}                  delete it: chunks, keyword entries, row, stored bytes
    GET    /v1/documents/{doc_id}/chunks/{chunk}   a chunk with the text around it, and its page
    GET    /v1/jobs/{job_id}                       an upload's progress
    POST   /v1/eval                                hit@k and MRR of labelled questions
    *      /mcp                                    the MCP server over streamable HTTP (rag/mcp_server.py)
    GET    /health                                 liveness, without a token
    GET    /docs, /openapi.json                    the schema, generated from the engine's own pydantic models

Every route translates JSON into one Gateway call (rag/gateway.py) and the engine's models back. A middleware
authenticates each /v1 and /mcp request before its body is read (rag/remote.py decides who it is) and caps the
body at the web UI's limits. Routes are plain `def`s: FastAPI runs them in its thread pool, where they wait on
the engine's runtime loop as pages do; only the chat route is a coroutine, so an answer streams from the engine's
loop to the server's with no thread in between (a thread hop per piece costs latency on a busy machine).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Query, Request, Security, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag import (
    DOCUMENT_PRIVATE,
    RETRIEVAL_ONLY_NOTE,
    Answer,
    AskOptions,
    ChatTurn,
    DocumentRecord,
    EvalReport,
    Gateway,
    JobSnapshot,
    Passage,
    QAPair,
    RagError,
    RateLimitedError,
    RemoteCaller,
    Retrieval,
    Source,
    Workspace,
    create_mcp,
    status_of,
)

MODEL_PREFIX = "workspace:"
MAX_JSON_BYTES = 1024 * 1024
"""Largest body of a JSON request (a question, a search, a set of labelled questions)."""
_GUARDED = ("/v1/", "/mcp")
_DOCUMENTS_OUT = {"documents": {"__all__": set(DOCUMENT_PRIVATE)}}

Mode = Literal["llm", "retrieval-only"]


# -- the OpenAI-compatible shapes --------------------------------------------------------------------------
class ModelCard(BaseModel):
    """A workspace as an OpenAI model: ask it with `model: "workspace:NAME"`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = Field(description="The owning account of a private workspace, else `shared`.")
    workspace: Workspace


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ChatMessage(BaseModel):
    """One message of the conversation; `content` may be text or OpenAI's list of parts (text parts are read)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat request. The last message is the question; earlier user and assistant messages are the
    history (a follow-up is rewritten into a standalone question); system messages are ignored: the engine
    keeps its own instructions. Unknown OpenAI parameters (max_tokens, n, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="`workspace:NAME` (as GET /v1/models lists), or a workspace's name or id.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_k: int | None = Field(None, ge=1, le=50, description="Extra: passages retrieved (default RAG_TOP_K).")
    retrieval: Retrieval | None = Field(None, description="Extra: dense, keyword or hybrid (default RAG_RETRIEVAL).")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"


class ChatCompletion(BaseModel):
    """OpenAI's chat completion, with two extra fields: `sources` and `mode`."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    sources: list[Source] = Field(
        description="The passages the answer was written from: [n] in the text is sources[n-1]."
    )
    mode: Mode = Field(description="`retrieval-only` when no language model is configured: quoted, not written.")


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop"] | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed answer; the last one (finish_reason `stop`) carries `sources` and `mode`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    sources: list[Source] | None = None
    mode: Mode | None = None


# -- the other routes' shapes ------------------------------------------------------------------------------
class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=10_000)
    workspace: str | None = Field(
        None, description="A workspace name or id (default: the token's, else RAG_WORKSPACE)."
    )
    top_k: int | None = Field(None, ge=1, le=50)
    retrieval: Retrieval | None = None
    doc_ids: list[str] | None = Field(None, description="Only these documents of the workspace.")


class SearchResponse(BaseModel):
    workspace: Workspace
    results: list[Source]


class DocumentList(BaseModel):
    workspace: Workspace
    documents: list[DocumentRecord]


class EvalRequest(BaseModel):
    workspace: str | None = None
    questions: list[QAPair] = Field(min_length=1, max_length=1000)
    retrieval: list[Retrieval] | None = Field(None, description="Modes to compare (default: RAG_RETRIEVAL).")
    top_k: int | None = Field(None, ge=1, le=50)


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    mode: Mode


# -- who calls -----------------------------------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="An API token: python -m rag tokens create NAME")


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _caller(request: Request, _token: HTTPAuthorizationCredentials | None = Security(_bearer)) -> RemoteCaller:  # noqa: B008
    """The caller the middleware authenticated (the Security parameter only documents the scheme)."""
    return request.state.caller


router = APIRouter(prefix="/v1")
CallerDep = Annotated[RemoteCaller, Depends(_caller)]
GatewayDep = Annotated[Gateway, Depends(_gateway)]


@router.get("/models", response_model=ModelList, tags=["chat"])
def list_models(caller: CallerDep, gateway: GatewayDep) -> ModelList:
    """The workspaces this caller may ask, each as a model `workspace:NAME`."""
    return ModelList(
        data=[
            ModelCard(id=MODEL_PREFIX + w.name, created=int(w.created_at), owned_by=w.owner or "shared", workspace=w)
            for w in gateway.workspaces(caller)
        ]
    )


@router.post("/chat/completions", response_model=ChatCompletion, tags=["chat"])
async def chat_completions(
    body: ChatCompletionRequest, caller: CallerDep, gateway: GatewayDep
) -> ChatCompletion | StreamingResponse:
    """An answer from a workspace's documents, citing them as [n]; `stream: true` sends OpenAI's server-sent
    events (`data: {chunk}` lines, then `data: [DONE]`)."""
    turns = [m for m in body.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user" or not turns[-1].text.strip():
        raise HTTPException(400, "The last message must be the user's question.")
    history = [ChatTurn(role=m.role, content=m.text) for m in turns[:-1]]  # type: ignore[arg-type]
    options = AskOptions(top_k=body.top_k, retrieval=body.retrieval, temperature=body.temperature)
    workspace = body.model.removeprefix(MODEL_PREFIX)
    # Rights are checked in a worker thread (database reads); the answer then streams from the engine's loop to
    # this one without a thread per piece.
    events = await run_in_threadpool(gateway.answer_events, caller, workspace, turns[-1].text, history, options)
    if body.stream:
        return StreamingResponse(_events(events, body.model, gateway.mode), media_type="text/event-stream")
    pieces: list[str] = []
    answer: Answer | None = None
    async for item in events:
        if isinstance(item, Answer):
            answer = item
        else:
            pieces.append(item)
    assert answer is not None
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=body.model,
        choices=[Choice(message=AssistantMessage(content=_label(answer.mode) + "".join(pieces)))],
        sources=answer.sources,
        mode=answer.mode,
    )


def _label(mode: str) -> str:
    """What a chat client shows first when nothing writes the answer: it is quoted, not generated."""
    return f"({RETRIEVAL_ONLY_NOTE})\n\n" if mode == "retrieval-only" else ""


async def _events(events: AsyncIterator[str | Answer], model: str, mode: str) -> AsyncIterator[str]:
    """The answer as OpenAI's chunks; an engine error mid-answer becomes an `error` event, as OpenAI sends."""
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def event(delta: Delta, **extra: Any) -> str:
        finish = extra.pop("finish_reason", None)
        chunk = ChatCompletionChunk(
            id=ident, created=created, model=model, choices=[ChunkChoice(delta=delta, finish_reason=finish)], **extra
        )
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    yield event(Delta(role="assistant", content=_label(mode)))
    try:
        async for item in events:
            if isinstance(item, Answer):
                yield event(Delta(), finish_reason="stop", sources=item.sources, mode=item.mode)
            else:
                yield event(Delta(content=item))
    except RagError as exc:
        yield f"data: {json.dumps({'error': _error_body(exc)})}\n\n"
        return
    yield "data: [DONE]\n\n"


@router.post("/search", response_model=SearchResponse, tags=["search"])
def search(body: SearchRequest, caller: CallerDep, gateway: GatewayDep) -> SearchResponse:
    """The passages of a workspace that best match the query: file, page, score, text, document id and chunk."""
    workspace = gateway.workspace(caller, body.workspace)
    doc_ids = tuple(body.doc_ids) if body.doc_ids else None
    options = AskOptions(top_k=body.top_k, retrieval=body.retrieval, doc_ids=doc_ids)
    results = gateway.search(caller, workspace.id, body.query, options)
    return SearchResponse(workspace=workspace, results=results)


@router.get("/documents", response_model=DocumentList, response_model_exclude=_DOCUMENTS_OUT, tags=["documents"])
def list_documents(caller: CallerDep, gateway: GatewayDep, workspace: str | None = None) -> DocumentList:
    """A workspace's indexed documents, newest first."""
    target = gateway.workspace(caller, workspace)
    return DocumentList(workspace=target, documents=gateway.documents(caller, target.id))


@router.post("/documents", status_code=202, response_model=JobSnapshot, tags=["documents"])
def upload_documents(
    files: Annotated[list[UploadFile], File(description="The files to index: RAG_MAX_FILES, RAG_MAX_FILE_MB each.")],
    caller: CallerDep,
    gateway: GatewayDep,
    workspace: Annotated[str | None, Form()] = None,
) -> JobSnapshot:
    """Index files in the background; poll GET /v1/jobs/{id}. Same bytes again are `unchanged`; a changed file under
    the same name replaces its old version."""
    named = [(f.filename or "upload", f) for f in files]
    gateway.check_upload([(name, f.size or 0) for name, f in named])
    return gateway.upload(caller, workspace, [(name, f.file) for name, f in named])


@router.get(
    "/documents/{doc_id}",
    response_model=DocumentRecord,
    response_model_exclude=set(DOCUMENT_PRIVATE),
    tags=["documents"],
)
def get_document(doc_id: str, caller: CallerDep, gateway: GatewayDep, workspace: str | None = None) -> DocumentRecord:
    """One document, by id or a unique id prefix of 8+ characters."""
    return gateway.document(caller, workspace, doc_id)


@router.delete(
    "/documents/{doc_id}",
    response_model=DocumentRecord,
    response_model_exclude=set(DOCUMENT_PRIVATE),
    tags=["documents"],
)
def delete_document(
    doc_id: str, caller: CallerDep, gateway: GatewayDep, workspace: str | None = None
) -> DocumentRecord:
    """Delete a document and everything of it: chunks, keyword entries, catalogue row, stored bytes."""
    return gateway.delete(caller, workspace, doc_id)


@router.get("/documents/{doc_id}/chunks/{chunk}", response_model=Passage, tags=["documents"])
def get_passage(
    doc_id: str,
    chunk: int,
    caller: CallerDep,
    gateway: GatewayDep,
    workspace: str | None = None,
    around: Annotated[int, Query(ge=0, le=10)] = 1,
) -> Passage:
    """A chunk (as a source's `chunk` names it) with `around` chunks on each side, and its page."""
    return gateway.passage(caller, workspace, doc_id, chunk, around)


@router.get("/jobs/{job_id}", response_model=JobSnapshot, tags=["documents"])
def get_job(job_id: str, caller: CallerDep, gateway: GatewayDep) -> JobSnapshot:
    """An upload job's state and each file's progress; `report` once it has ended."""
    return gateway.job(caller, job_id)


@router.post("/eval", response_model=list[EvalReport], tags=["search"])
def evaluate(body: EvalRequest, caller: CallerDep, gateway: GatewayDep) -> list[EvalReport]:
    """hit@1/3/5 and MRR of retrieval on labelled questions about a workspace's documents; reads only."""
    modes = body.retrieval or [gateway.settings.retrieval_mode]
    return gateway.evaluate(caller, body.workspace, body.questions, modes, body.top_k)


# -- errors ----------------------------------------------------------------------------------------------------
def _error_body(exc: RagError) -> dict[str, object]:
    return {"message": exc.user_message, "type": type(exc).__name__, "code": status_of(exc)}


def _error_response(exc: RagError) -> JSONResponse:
    status = status_of(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse({"error": _error_body(exc)}, status_code=status, headers=headers)


async def _on_rag_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RagError)
    return _error_response(exc)


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body = {"message": str(exc.detail), "type": "invalid_request_error", "code": exc.status_code}
    return JSONResponse({"error": body}, status_code=exc.status_code, headers=exc.headers)


# -- middleware ------------------------------------------------------------------------------------------------
class _Authenticate:
    """Authenticate /v1 and /mcp requests before anything reads their body, and count them against the token's
    rate; the caller is left in the request's state for the routes and the MCP tools."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_GUARDED):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        host = headers.get(b"host", b"").decode("latin-1")
        try:
            caller = await anyio.to_thread.run_sync(self.gateway.authenticate, authorization, host)
        except RagError as exc:
            return await _error_response(exc)(scope, receive, send)
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class _LimitBody:
    """Refuse request bodies past the UI's limits: uploads up to RAG_MAX_FILES × RAG_MAX_FILE_MB (each file is
    checked by the route), anything else MAX_JSON_BYTES; counted as they arrive, not only as declared."""

    def __init__(self, app: ASGIApp, upload_limit: int) -> None:
        self.app = app
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/documents"
        limit = self.upload_limit if upload else MAX_JSON_BYTES
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(limit)(scope, receive, send)
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _BodyTooLarge:
            if not started:
                await self._refuse(limit)(scope, receive, send)

    @staticmethod
    def _refuse(limit: int) -> JSONResponse:
        body = {"message": f"The request is larger than {limit / 1048576:g} MB.", "type": "UploadTooLargeError"}
        return JSONResponse({"error": {**body, "code": 413}}, status_code=413)


class _McpEndpoint:
    """The MCP SDK's streamable HTTP handler as a plain ASGI route (Starlette mounts a function as a view)."""

    def __init__(self, handle: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handle(scope, receive, send)


# -- the app ---------------------------------------------------------------------------------------------------
def create_app(gateway: Gateway, host: str = "127.0.0.1", rest: bool = True, mcp: bool = True) -> FastAPI:
    """The ASGI app: the REST routes (`rest`) and the MCP server at /mcp (`mcp`) over one gateway. `host` is the
    address it will listen on (the MCP SDK guards loopback servers against DNS rebinding)."""
    server = create_mcp(gateway) if mcp else None
    if server is not None:
        # Builds the session manager. The SDK's own Host check is off: rag/remote.py refuses calls without a token
        # addressed to another name (DNS rebinding) on every route, and calls with one may come through a proxy.
        off = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        server.streamable_http_app(streamable_http_path="/mcp", host=host, transport_security=off)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        if server is None:
            yield
            return
        async with server.session_manager.run():
            yield

    app = FastAPI(
        title="Ask your documents",
        summary="Questions, search and documents of your workspaces, OpenAI-compatible, and an MCP server at /mcp.",
        version="1",
        lifespan=lifespan,
        docs_url="/docs" if rest else None,
        redoc_url=None,
        openapi_url="/openapi.json" if rest else None,
    )
    app.state.gateway = gateway
    if rest:
        app.include_router(router)

    @app.get("/health", response_model=Health, tags=["server"])
    def health() -> Health:
        """The server is up; `mode` says whether answers are written (`llm`) or quoted (`retrieval-only`)."""
        return Health(mode=gateway.mode)  # type: ignore[arg-type]

    if server is not None:
        app.router.routes.append(Route("/mcp", endpoint=_McpEndpoint(server.session_manager.handle_request)))
    app.add_exception_handler(RagError, _on_rag_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    limits = gateway.settings
    app.add_middleware(_LimitBody, upload_limit=int((limits.max_files * limits.max_file_mb + 1) * 1024 * 1024))
    app.add_middleware(_Authenticate, gateway=gateway)
    return app


def serve_http(gateway: Gateway, host: str, port: int, rest: bool = True) -> None:
    """Listen until interrupted (uvicorn, one process: the engine and its jobs live in it)."""
    import uvicorn

    uvicorn.run(
        create_app(gateway, host, rest=rest), host=host, port=port, log_level="info", timeout_graceful_shutdown=5
    )
