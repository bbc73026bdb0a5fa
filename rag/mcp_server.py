"""`python -m rag mcp`: the engine as an MCP server (the official `mcp` SDK), over stdio or streamable HTTP.

Tools: `search`, `ask`, `list_workspaces`, `list_documents`, `get_passage`. Resources: a workspace's documents
(`rag://workspaces/{workspace}/documents`, JSON) and a document's indexed text
(`rag://workspaces/{workspace}/documents/{doc_id}`).

Over HTTP (`/mcp` of `python -m rag serve`, or alone with `python -m rag mcp --http`) every request carries a token
and is checked before the SDK sees it, as the REST routes are (`rag/api.py`); the tools read that caller from the
request. Over stdio the server acts for the user who started it, as the CLI does, or for `--token`'s caller.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from http import HTTPStatus
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from rag import (
    DOCUMENT_PRIVATE,
    Answer,
    AskOptions,
    Gateway,
    Passage,
    RagError,
    RemoteCaller,
    Retrieval,
    Source,
    Workspace,
    status_of,
)

INSTRUCTIONS = (
    "Search and question the user's indexed documents. Each workspace is a separate set of documents: "
    "list_workspaces names them; leave `workspace` out to use the default one. `search` returns passages with "
    "file, page, document id and chunk; `get_passage` reads the text around a chunk; `ask` answers with [n] "
    "citations to the sources it returns."
)
_READ = ToolAnnotations(readOnlyHint=True, openWorldHint=False)

TopK = Annotated[int | None, Field(ge=1, le=50, description="How many passages (default: RAG_TOP_K).")]
WorkspaceName = Annotated[
    str | None, Field(description="A workspace name or id (default: the token's, else RAG_WORKSPACE).")
]


def document_uri(workspace: str, doc_id: str | None = None) -> str:
    """The resource URI of a workspace's document list, or of one document's text."""
    return f"rag://workspaces/{workspace}/documents" + (f"/{doc_id}" if doc_id else "")


def _message(error: RagError) -> str:
    status = status_of(error)
    return f"{status} {HTTPStatus(status).phrase}: {error.user_message}"


@contextlib.contextmanager
def _tool_errors() -> Iterator[None]:
    """An engine error becomes the tool's error result, with its HTTP-equivalent status and its message."""
    try:
        yield
    except RagError as exc:
        raise ToolError(_message(exc)) from exc


@contextlib.contextmanager
def _resource_errors() -> Iterator[None]:
    try:
        yield
    except RagError as exc:
        kind = ResourceNotFoundError if status_of(exc) in (403, 404) else ResourceError
        raise kind(_message(exc)) from exc


def create_mcp(gateway: Gateway, local: RemoteCaller | None = None) -> MCPServer:
    """The MCP server over `gateway`. `local` is the caller of a stdio session; over HTTP each request's own
    (authenticated by the app in front) is used, and a request without one is refused."""
    server = MCPServer("ask-your-documents", instructions=INSTRUCTIONS)

    def caller(ctx: Context) -> RemoteCaller:
        request = ctx.request_context.request
        if request is None and local is not None:
            return local
        found = getattr(getattr(request, "state", None), "caller", None)
        if not isinstance(found, RemoteCaller):
            raise ToolError("401 Unauthorized: this MCP endpoint needs an API token.")
        return found

    def documents(who: RemoteCaller, workspace: str | None) -> list[dict[str, object]]:
        target = gateway.workspace(who, workspace)
        return [
            {**r.model_dump(exclude=DOCUMENT_PRIVATE), "uri": document_uri(target.id, r.doc_id)}
            for r in gateway.documents(who, target.id)
        ]

    @server.tool(annotations=_READ)
    def search(
        query: str,
        ctx: Context,
        doc_ids: Annotated[
            list[str] | None, Field(description="Only these documents (ids from list_documents).")
        ] = None,
        workspace: WorkspaceName = None,
        top_k: TopK = None,
        retrieval: Retrieval | None = None,
    ) -> list[Source]:
        """The passages of a workspace's documents (or of some of them) that best match `query`: file name, page,
        score, text, document id and chunk (read around one with get_passage)."""
        options = AskOptions(top_k=top_k, retrieval=retrieval, doc_ids=tuple(doc_ids) if doc_ids else None)
        with _tool_errors():
            return gateway.search(caller(ctx), workspace, query, options)

    @server.tool(annotations=_READ)
    def ask(
        question: str,
        ctx: Context,
        workspace: WorkspaceName = None,
        top_k: TopK = None,
        retrieval: Retrieval | None = None,
    ) -> Answer:
        """Answer a question from a workspace's documents. The answer cites sources as [n]: sources[n-1]. `mode` is
        `retrieval-only` when no language model is configured: the answer then quotes the best-matching
        sentences instead of writing one."""
        with _tool_errors():
            return gateway.ask(caller(ctx), workspace, question, options=AskOptions(top_k=top_k, retrieval=retrieval))

    @server.tool(annotations=_READ)
    def list_workspaces(ctx: Context) -> list[Workspace]:
        """The workspaces this caller may use: id, name, owner (none: shared) and whether it is shared."""
        with _tool_errors():
            return gateway.workspaces(caller(ctx))

    @server.tool(annotations=_READ)
    def list_documents(ctx: Context, workspace: WorkspaceName = None) -> list[dict[str, object]]:
        """A workspace's indexed documents, newest first: id, file name, type, pages, chunks, size, when added, and
        the resource URI of its text."""
        with _tool_errors():
            return documents(caller(ctx), workspace)

    @server.tool(annotations=_READ)
    def get_passage(
        doc_id: str,
        chunk: Annotated[int, Field(ge=0, description="The chunk number, as search and ask sources give it.")],
        ctx: Context,
        workspace: WorkspaceName = None,
        around: Annotated[int, Field(ge=0, le=10, description="Chunks to add on each side.")] = 1,
    ) -> Passage:
        """The text around a chunk of a document: the chunk, its page, and `context` (the chunk with `around`
        neighbours on each side, overlaps merged)."""
        with _tool_errors():
            return gateway.passage(caller(ctx), workspace, doc_id, chunk, around)

    @server.resource(document_uri("{workspace}"), name="documents", mime_type="application/json")
    def documents_resource(workspace: str, ctx: Context) -> str:
        """A workspace's indexed documents (JSON)."""
        with _resource_errors():
            return json.dumps(documents(caller(ctx), workspace))

    @server.resource(document_uri("{workspace}", "{doc_id}"), name="document", mime_type="text/plain")
    def document_resource(workspace: str, doc_id: str, ctx: Context) -> str:
        """A document's indexed text, in order, with a [page N] line where each page starts."""
        with _resource_errors():
            return gateway.document_text(caller(ctx), workspace, doc_id)

    return server


def run_stdio(gateway: Gateway, caller: RemoteCaller) -> None:
    """Serve MCP over this process's stdin and stdout until the client closes them."""
    create_mcp(gateway, local=caller).run("stdio")
