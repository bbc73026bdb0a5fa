"""`python -m rag`: the same engine as the web UI, from a terminal.

Every command converts RagError to a one-line message and a non-zero exit at this edge.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from rag import RagError, Settings, load_settings, redact_url

F = TypeVar("F", bound=Callable[..., Any])


def _edge(func: F) -> F:
    """Show RagErrors as messages people can act on; anything else is a bug and keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RagError as exc:
            raise click.ClickException(exc.user_message) from exc

    return wrapper  # type: ignore[return-value]


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    given = {k: ctx.obj[k] for k in ("data_dir", "collection", "workspace") if ctx.obj.get(k) is not None}
    return load_settings(**given, **overrides)


def _workspace(service: Any) -> str:
    """The id of the workspace this command works in (RAG_WORKSPACE / --workspace); a clear error if unknown."""
    return service.workspace(service.settings.workspace).id


@contextlib.contextmanager
def _service(settings: Settings, worker: str = "own", concurrency: int | None = None) -> Iterator[Any]:
    """The whole engine (a RagService, imported lazily for a fast --help), closed when the command ends. A command
    runs only the jobs it queued itself, and only when no worker would (`RagService(worker=...)`)."""
    from rag import RagService

    service = RagService(settings, worker=worker, concurrency=concurrency)
    try:
        yield service
    finally:
        service.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="RAG_DATA_DIR",
    help="Where documents, the catalog and the embedded Milvus live (RAG_DATA_DIR; default ./data).",
)
@click.option("--collection", envvar="RAG_COLLECTION", help="Milvus collection (RAG_COLLECTION; default documents).")
@click.option(
    "--workspace",
    envvar="RAG_WORKSPACE",
    help="Workspace for ingest, ask, docs and eval (RAG_WORKSPACE; default: default).",
)
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None, collection: str | None, workspace: str | None) -> None:
    """Ask questions of your own documents, with Milvus's async API underneath.

    \b
    Example:
      python -m rag ingest ../shared/corpus/*.pdf
      python -m rag ask "What does zoo do with irregular time series?"
    """
    ctx.ensure_object(dict)
    ctx.obj.update(data_dir=data_dir, collection=collection, workspace=workspace)


@cli.group()
def milvus() -> None:
    """Run the embedded Milvus server (used when MILVUS_URI is not set)."""


def _embedded(ctx: click.Context):  # noqa: ANN202
    from rag import EmbeddedMilvus

    settings = _settings(ctx)
    return EmbeddedMilvus(settings.data_dir, settings.milvus_start_timeout)


@milvus.command("start")
@click.pass_context
@_edge
def milvus_start(ctx: click.Context) -> None:
    """Start the embedded server, or report the one already running.

    Example: python -m rag milvus start
    """
    state = _embedded(ctx).start()
    click.echo(f"Milvus running at {redact_url(state.uri)} (pid {state.pid}, health port {state.health_port})")


@milvus.command("stop")
@click.pass_context
@_edge
def milvus_stop(ctx: click.Context) -> None:
    """Stop the embedded server and wait until it has exited.

    Example: python -m rag milvus stop
    """
    stopped = _embedded(ctx).stop()
    click.echo("Milvus stopped" if stopped else "Milvus was not running")


@milvus.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
@_edge
def milvus_status(ctx: click.Context, as_json: bool) -> None:
    """Say whether the embedded server runs, where, and whether it is healthy; and what embeds, and why.

    Example: python -m rag milvus status --json
    """
    from rag import describe_embedding

    status = _embedded(ctx).status()
    payload = {
        "running": status.running,
        "healthy": status.healthy,
        "uri": redact_url(status.uri) if status.uri else None,
        "pid": status.state.pid if status.state else None,
        "data_dir": str(status.data_dir),
        "embedding": describe_embedding(_settings(ctx)),
    }
    if as_json:
        click.echo(json.dumps(payload))
    elif status.running:
        health = "healthy" if status.healthy else "NOT healthy"
        click.echo(f"running at {payload['uri']} (pid {payload['pid']}), {health}")
    else:
        click.echo("not running")
    if not as_json:
        click.echo(f"embedding: {payload['embedding']}")
    if not status.healthy:
        sys.exit(3)


@cli.group()
def models() -> None:
    """Prepare the embedding model's backend ahead of the first start."""


@models.command("build")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print {backend, description, folder, built, calibrated, already_built, seconds, fallback}.",
)
@click.pass_context
@_edge
def models_build(ctx: click.Context, as_json: bool) -> None:
    """Build the embedding backend into the model cache now, so the app's first start does not wait for it.

    \b
    With RAG_EMBED_BACKEND=auto (the default) or onnx/onnx-int8, this exports the model to ONNX (and its
    int8 copy) into RAG_EMBED_CACHE_DIR (default <data dir>/models), and auto also times the backends on this
    machine and keeps its choice there: one to two minutes, once. A second run finds everything built and
    says so. With RAG_EMBED_BACKEND=torch there is nothing to build. Exit code 1 when the configured backend
    could not be built (the engine would fall back to torch; the reason is printed).

    Example: python -m rag models build
    """
    from rag import prepare_backend

    done = prepare_backend(_settings(ctx))
    payload = {
        "backend": done.backend,
        "description": done.description,
        "folder": str(done.folder) if done.folder else None,
        "built": done.built,
        "calibrated": done.calibrated,
        "already_built": done.already_built,
        "seconds": done.seconds,
        "fallback": done.fallback or None,
    }
    if as_json:
        click.echo(json.dumps(payload))
    elif done.fallback:
        click.echo(f"could not build: {done.fallback}")
    elif done.folder is None:
        click.echo(f"nothing to build: {done.description}")
    else:
        steps = (("built the ONNX models", done.built), ("measured the backends", done.calibrated))
        made = [what for what, now in steps if now]
        click.echo(f"{' and '.join(made).capitalize()} in {done.seconds:.1f} s" if made else "already built")
        click.echo(f"models: {done.folder}")
        click.echo(f"backend: {done.description}")
    if done.fallback:
        sys.exit(1)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object per file (file, status, doc_id, chunks, error)."
)
@click.pass_context
@_edge
def ingest(ctx: click.Context, paths: tuple[str, ...], as_json: bool) -> None:
    """Index files (folders are walked). Same bytes again are skipped; a changed file replaces its old version.

    \b
    The files are stored, then queued as one job (taking its turn with everyone's uploads) and followed here until
    it ends; Ctrl-C cancels it. With the embedded database this process runs it (or a running app's worker, if
    that claims it first); with PostgreSQL the `python -m rag worker` processes do, or this one when none runs.

    Example: python -m rag ingest ../shared/corpus
    """
    from rag import SUPPORTED_EXTENSIONS, FileProgress, FileStatus, Stage

    files: list[Path] = []
    given: list[str] = []  # each file as written on the command line; a folder's files as the folder joined with them
    for typed in paths:
        path = Path(typed)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)
            files += found
            given += [os.path.join(typed, str(p.relative_to(path))) for p in found]
        else:
            files.append(path)
            given.append(typed)
    if not files:
        raise click.ClickException("No supported files found.")
    report = None
    show_bar = not as_json and sys.stderr.isatty()
    with (
        _service(_settings(ctx)) as service,
        click.progressbar(length=len(files), label="Indexing", file=sys.stderr, show_pos=True)
        if show_bar
        else _NullBar() as bar,
    ):
        finished: set[str] = set()
        for item in service.iter_ingest(files, _workspace(service)):
            if isinstance(item, FileProgress):
                ocr = f"{item.file}: ocr {item.pages_done}/{item.pages_total} pages"
                if show_bar and bar.label != (label := ocr if item.stage == Stage.OCR else "Indexing"):
                    bar.label = label
                    bar.render_progress()
                if item.status is not None and item.file not in finished:
                    finished.add(item.file)
                    bar.update(1)
            else:
                report = item
    assert report is not None
    # The report lists files in the order they were given; its `file` is the display name (no folders, long
    # names shortened), so each row takes back the path the user wrote.
    named = zip(given, report.files) if len(given) == len(report.files) else ((r.file, r) for r in report.files)
    for typed, result in named:
        if as_json:
            row = result.model_dump(mode="json", exclude={"seconds", "notes"})
            click.echo(json.dumps({**row, "file": typed, **({"notes": result.notes} if result.notes else {})}))
        else:
            detail = result.error if result.status == FileStatus.FAILED else f"{result.chunks} chunks"
            click.echo(f"{result.status.value:10} {typed}  {detail}" + "".join(f"; {n}" for n in result.notes))
    if not as_json:
        click.echo(f"{report.chunks} chunks written in {report.seconds:.1f} s", err=True)
    if report.count(FileStatus.FAILED):
        sys.exit(2)


class _NullBar:
    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, _n: int) -> None:
        return None


@cli.command()
@click.argument("question")
@click.option("--top-k", type=click.IntRange(1, 50), help="How many passages to retrieve (RAG_TOP_K; default 5).")
@click.option(
    "--retrieval",
    type=click.Choice(["dense", "keyword", "hybrid"]),
    help="dense vectors, BM25 keywords or both (RAG_RETRIEVAL; default hybrid).",
)
@click.option("--json", "as_json", is_flag=True, help="Print {answer, mode, sources:[{file_name, page, score, text}]}.")
@click.pass_context
@_edge
def ask(ctx: click.Context, question: str, top_k: int | None, retrieval: str | None, as_json: bool) -> None:
    """Answer a question from the indexed documents, with sources.

    Example: python -m rag ask "What was the author's first program written on?" --top-k 3
    """
    from rag import RETRIEVAL_ONLY_NOTE, AskOptions, QuestionService

    service = QuestionService(_settings(ctx))  # answers without starting the rest of the engine
    try:
        options = AskOptions(top_k=top_k, retrieval=retrieval, workspace=_workspace(service))  # type: ignore[arg-type]
        if as_json:
            answer = service.ask(question, options=options)
            click.echo(
                json.dumps(
                    {
                        "answer": answer.answer,
                        "mode": answer.mode,
                        "sources": [
                            s.model_dump(include={"file_name", "page", "score", "text"}) for s in answer.sources
                        ],
                    }
                )
            )
            return
        stream = service.stream_answer(question, options=options)
        if service.mode == "retrieval-only":
            click.echo(f"({RETRIEVAL_ONLY_NOTE})\n")
        for piece in stream:
            click.echo(piece, nl=False)
        click.echo()
        answer = stream.answer
    finally:
        service.close()
    assert answer is not None
    click.echo("\nSources:")
    for i, src in enumerate(answer.sources, start=1):
        click.echo(f"  [{i}] {src.label}  (score {src.score:.3f})")


@cli.command("eval")
@click.argument("qa_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--top-k", type=click.IntRange(1, 50), help="Passages retrieved per question (RAG_TOP_K; default 5).")
@click.option(
    "--retrieval",
    type=click.Choice(["dense", "keyword", "hybrid", "all"]),
    help="Which retrieval to measure; all compares the three side by side (default: RAG_RETRIEVAL).",
)
@click.option(
    "--answers",
    is_flag=True,
    help="Measure the answers instead: how often the answer text holds the evidence, and in its first two lines.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"hit_at": {"1","3","5"}, "mrr", "n", "rows"} (one per mode); with --answers '
    '{"mode", "held", "held_half", "first_lines", "hit_at_k", "n", "rows"}.',
)
@click.pass_context
@_edge
def eval_(
    ctx: click.Context, qa_file: Path, top_k: int | None, retrieval: str | None, answers: bool, as_json: bool
) -> None:
    """Measure retrieval (hit@1/3/5 and MRR) or answers on labelled questions. Reads only; indexes nothing.

    QA_FILE holds one JSON object per line: {"question", "file", "evidence"}, the evidence a verbatim
    quote from that (indexed) file. A question hits at rank r when the r-th passage is from that file
    and holds at least 80% of the evidence's word 3-grams. With --answers, each question is answered as
    a user would see it (retrieval-only without an LLM) and the answer's text is checked by the same
    rule: the share of answers holding the evidence (80% and 50% of its 3-grams), the share holding it
    in their first two lines, and the passages' hit@k.

    Examples: python -m rag eval tests/data/qa.jsonl --retrieval all;
    python -m rag eval tests/data/qa.jsonl --answers
    """
    from rag import parse_pairs

    try:
        text = qa_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{qa_file}: cannot be read ({exc})") from exc
    pairs = parse_pairs(text, str(qa_file))
    settings = _settings(ctx, top_k=top_k)
    if answers:
        if retrieval == "all":
            raise click.UsageError("--answers measures one retrieval mode at a time, not all")
        with _service(settings) as service:
            report = service.evaluate_answers(pairs, retrieval, top_k, _workspace(service))  # type: ignore[arg-type]
        if as_json:
            click.echo(json.dumps(report.model_dump(mode="json")))
            return
        click.echo(f"{report.n} questions, {report.mode} answers, {report.retrieval} retrieval, top {report.top_k}")
        click.echo(f"evidence in the answer (80% of its 3-grams): {report.held:.1%}")
        click.echo(f"evidence in the answer (50% of its 3-grams): {report.held_half:.1%}")
        click.echo(f"evidence in the first two lines (80%):       {report.first_lines:.1%}")
        click.echo(f"passage hit@{report.top_k}:                               {report.hit_at_k:.1%}")
        click.echo(f"p50 seconds per answer:                      {report.p50_ms / 1000:.2f}")
        for row in report.misses:
            click.echo(f"miss ({row.share:.0%} of the evidence): {row.question}  [{row.file}]")
        return
    modes = ["dense", "keyword", "hybrid"] if retrieval == "all" else [retrieval or settings.retrieval_mode]
    with _service(settings) as service:
        reports = service.evaluate(pairs, modes, top_k, _workspace(service))
    if as_json:
        for report in reports:
            click.echo(json.dumps(report.model_dump(mode="json")))
        return
    click.echo(f"{len(pairs)} questions, top {reports[0].top_k}")
    click.echo(f"{'mode':8} {'hit@1':>6} {'hit@3':>6} {'hit@5':>6} {'MRR':>6} {'p50 ms':>7}")
    for r in reports:
        hits = " ".join(f"{r.hit_at[k]:>6.3f}" for k in ("1", "3", "5"))
        click.echo(f"{r.mode:8} {hits} {r.mrr:>6.3f} {r.p50_ms:>7.1f}")
    for r in reports:
        for row in r.misses:
            click.echo(f"miss ({r.mode}): {row.question}  [{row.file}]")


@cli.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Jobs this worker runs at once (RAG_MAX_RUNNING_JOBS still caps all workers together).",
)
@click.option(
    "--heartbeat-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Touch this file after every heartbeat written to the database (for a container health check).",
)
@click.pass_context
@_edge
def worker(ctx: click.Context, concurrency: int, heartbeat_file: Path | None) -> None:
    """Run queued ingestion jobs until stopped (SIGTERM or Ctrl-C): start as many as you like, on any machine that
    reaches the database (RAG_DATABASE_URL), the file store (RAG_STORAGE_URL) and Milvus.

    \b
    Jobs a stopping worker was running go back to the queue and start again from their first unfinished file;
    a worker that dies is noticed when its lease (RAG_JOB_LEASE) runs out, and its jobs run elsewhere.

    Example: python -m rag worker --concurrency 2
    """
    import signal
    import threading

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_args: stop.set())
    settings = _settings(ctx)
    with _service(settings, worker="worker", concurrency=concurrency) as service:
        me = service.worker
        click.echo(
            f"worker {me.id.split('|')[0]} (pid {os.getpid()}) runs up to {concurrency} job(s) of collection "
            f"{settings.collection}; database {redact_url(service.jobs.db.url)}, files in "
            f"{service.library.storage.describe()}",
            err=True,
        )
        touched = None
        while not stop.wait(1.0):
            if heartbeat_file is not None and me.beat_at is not None and me.beat_at != touched:
                heartbeat_file.touch()
                touched = me.beat_at
        click.echo("stopping: running jobs go back to the queue", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print {queue: {queued, running}, workers: [...]}.")
@click.pass_context
@_edge
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the job queue and its workers: where each runs, what it runs, when it last said it was alive.

    A worker that stopped heart-beating for longer than its lease (RAG_JOB_LEASE) is shown as lost. Reads the
    database only (no Milvus, no model).

    Example: python -m rag status --json
    """
    from rag import queue_status

    found = queue_status(_settings(ctx))
    workers = [
        {
            "id": w.id,
            "host": w.host,
            "pid": w.pid,
            "kind": w.kind,
            "state": w.state,
            "concurrency": w.concurrency,
            "jobs": w.jobs,
            "started_at": w.started_at,
            "heartbeat_at": w.heartbeat_at,
            "heartbeat_age": round(max(0.0, found.checked_at - w.heartbeat_at), 1),
        }
        for w in found.workers
    ]
    if as_json:
        click.echo(json.dumps({"queue": {"queued": found.queued, "running": found.running}, "workers": workers}))
        return
    click.echo(f"jobs: {found.queued} queued, {found.running} running")
    if not workers:
        click.echo("no worker has run here in the last day")
    for w in workers:
        doing = ", ".join(w["jobs"]) or "idle"
        click.echo(
            f"{w['state']:8} {w['host']} pid {w['pid']} ({w['kind']}, {w['concurrency']} at once): {doing}; "
            f"last heartbeat {w['heartbeat_age']:.0f} s ago"
        )


@cli.group()
def docs() -> None:
    """List, delete and check indexed documents."""


@docs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of documents.")
@click.option(
    "--limit",
    default=100,  # rag.DOCUMENTS_PAGE; not imported here, so `--help` stays instant
    show_default=True,
    type=click.IntRange(0),
    help="List only the newest N documents (0: all); how many there are in all goes to stderr.",
)
@click.pass_context
@_edge
def docs_list(ctx: click.Context, as_json: bool, limit: int) -> None:
    """List indexed documents, newest first: id, type, pages, chunks, when added, then the file's whole name.

    Example: python -m rag docs list --json --limit 0
    """
    from rag import list_documents

    records, total = list_documents(_settings(ctx), limit or None)
    if len(records) < total:
        click.echo(f"Showing the {len(records)} newest of {total} documents; --limit 0 lists all.", err=True)
    if as_json:
        click.echo(
            json.dumps(
                [{**r.model_dump(exclude={"stored_path", "added_at", "status"}), "added": r.added} for r in records]
            )
        )
        return
    if not records:
        click.echo("No documents indexed yet.")
    for r in records:
        pages = f"{r.pages} pages" if r.pages else "-"
        click.echo(f"{r.doc_id[:12]}  {r.file_type:5} {pages:>10} {r.chunks:6} chunks  {r.added}  {r.file_name}")


@docs.command("delete")
@click.argument("doc_id")
@click.pass_context
@_edge
def docs_delete(ctx: click.Context, doc_id: str) -> None:
    """Delete a document and every chunk of it (a unique id prefix of 8+ characters is enough).

    Example: python -m rag docs delete fd63de7b0dc3
    """
    with _service(_settings(ctx)) as service:
        record = service.delete_document(doc_id, _workspace(service))
    click.echo(f"Deleted {record.file_name} ({record.chunks} chunks)")


@docs.command("check")
@click.option("--repair", is_flag=True, help="Remove what belongs to no committed document (see above).")
@click.option("--json", "as_json", is_flag=True, help="Print {documents, milvus_chunks, keyword_rows, findings, ...}.")
@click.pass_context
@_edge
def docs_check(ctx: click.Context, repair: bool, as_json: bool) -> None:
    """Compare Milvus, the keyword index and the catalogue, chunk by chunk, in every workspace of the collection.

    \b
    Finds chunks of unknown documents, of writes whose writer is gone, of a
    document's other generations; keyword rows without their chunk (or chunks
    without their keyword row); listed documents with chunks missing.
    Documents being written by a live process are skipped. --repair removes
    what belongs to no committed document, copies missing keyword rows from
    Milvus and removes listed documents that have no chunk at all; chunks
    missing from Milvus need a re-index. It reads every chunk id once (15-90 s
    per million chunks on 2 cores). Exit code 1 when something is left unrepaired.

    Example: python -m rag docs check --repair
    """
    from rag import check_documents

    report = check_documents(_settings(ctx), repair=repair)
    if as_json:
        click.echo(json.dumps({**report.model_dump(mode="json"), "clean": report.clean}))
    else:
        keyword = "" if report.keyword_rows is None else f", {report.keyword_rows} keyword rows"
        click.echo(
            f"{report.documents} documents, {report.milvus_chunks} chunks in Milvus{keyword}; "
            f"checked in {report.seconds:.1f} s"
        )
        if report.in_progress:
            click.echo(f"{len(report.in_progress)} document(s) being written now, not checked")
        for finding in report.findings:
            click.echo(finding.describe())
        if not report.findings:
            click.echo("Milvus, the keyword index and the catalogue agree.")
        elif not report.clean and not repair:
            click.echo("Run again with --repair to fix what can be fixed.")
    if not report.clean:
        sys.exit(1)


@cli.group()
def workspaces() -> None:
    """Named sets of documents: each search, list and delete stays inside one workspace."""


def _workspace_json(workspace: Any, documents: int | None = None) -> dict[str, Any]:
    payload = {"id": workspace.id, "name": workspace.name, "owner": workspace.owner, "shared": workspace.shared}
    return payload if documents is None else {**payload, "documents": documents}


@workspaces.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of {id, name, owner, shared, documents}.")
@click.pass_context
@_edge
def workspaces_list(ctx: click.Context, as_json: bool) -> None:
    """List every workspace with its number of documents (private ones with their owner's name).

    Example: python -m rag workspaces list --json
    """
    with _service(_settings(ctx)) as service:
        rows = [(w, service.document_count(w.id)) for w in service.list_workspaces()]
        names = service.accounts.names({w.owner for w, _n in rows if w.owner})
    if as_json:
        click.echo(json.dumps([{**_workspace_json(w, n), "owner": names.get(w.owner or "")} for w, n in rows]))
        return
    for w, n in rows:
        who = "shared" if w.shared else f"private to {names.get(w.owner or '', 'a removed account')}"
        click.echo(f"{w.name:30.30} {n:6} documents  {who}  (id {w.id})")


@workspaces.command("members")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print {workspace, default_role, members: [{name, role}]}.")
@click.pass_context
@_edge
def workspaces_members(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show who may do what in a shared workspace: everyone's default role, and each member's role.

    Example: python -m rag workspaces members "HR policies"
    """
    with _service(_settings(ctx)) as service:
        workspace, members = service.members(name)
    if as_json:
        payload = {
            "workspace": workspace.name,
            "default_role": workspace.default_role if workspace.shared else None,
            "members": [{"name": m.name, "role": m.role} for m in members],
        }
        click.echo(json.dumps(payload))
        return
    if not workspace.shared:
        click.echo(f"{workspace.name} is private: its owner alone may use it.")
        return
    click.echo(f"everyone signed in: {workspace.default_role or 'nothing (members only)'}")
    for m in members:
        click.echo(f"{m.name:30.30} {m.role}")


@workspaces.command("grant")
@click.argument("name")
@click.argument("user")
@click.argument("role", type=click.Choice(["viewer", "editor", "owner", "none"]))
@click.pass_context
@_edge
def workspaces_grant(ctx: click.Context, name: str, user: str, role: str) -> None:
    """Give an account a role in a shared workspace (none: take it away; the default role still applies).

    \b
    viewer: ask and read sources; editor: also upload, re-index and delete their own documents;
    owner: also re-index and delete anyone's documents there, and rename it.
    Example: python -m rag workspaces grant "HR policies" bob viewer
    """
    with _service(_settings(ctx)) as service:
        if role == "none":
            service.revoke(name, user)
            click.echo(f"{user} has no role of their own in {name} now")
            return
        member = service.grant(name, user, role)  # type: ignore[arg-type]
    click.echo(f"{member.name} is {member.role} in {name}")


@workspaces.command("revoke")
@click.argument("name")
@click.argument("user")
@click.pass_context
@_edge
def workspaces_revoke(ctx: click.Context, name: str, user: str) -> None:
    """Take an account's role in a shared workspace away (the workspace's default role still applies).

    Example: python -m rag workspaces revoke "HR policies" bob
    """
    with _service(_settings(ctx)) as service:
        had = service.revoke(name, user)
    click.echo(
        f"{user} has no role of their own in {name} now" if had else f"{user} had no role of their own in {name}"
    )


@workspaces.command("default-role")
@click.argument("name")
@click.argument("role", type=click.Choice(["viewer", "editor", "owner", "none"]))
@click.pass_context
@_edge
def workspaces_default_role(ctx: click.Context, name: str, role: str) -> None:
    """What every signed-in account that is not a member may do in a shared workspace (none: members only).

    Example: python -m rag workspaces default-role "HR policies" viewer
    """
    with _service(_settings(ctx)) as service:
        workspace = service.set_default_role(name, None if role == "none" else role)  # type: ignore[arg-type]
    click.echo(f"everyone signed in: {workspace.default_role or 'nothing (members only)'} in {workspace.name}")


@workspaces.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print {id, name, owner, shared}.")
@click.pass_context
@_edge
def workspaces_create(ctx: click.Context, name: str, as_json: bool) -> None:
    """Create an empty workspace.

    Example: python -m rag workspaces create "HR policies"
    """
    with _service(_settings(ctx)) as service:
        workspace = service.create_workspace(name)
    click.echo(json.dumps(_workspace_json(workspace)) if as_json else f"Created workspace {workspace.name}")


@workspaces.command("rename")
@click.argument("old")
@click.argument("new")
@click.option("--json", "as_json", is_flag=True, help="Print {id, name, owner, shared}.")
@click.pass_context
@_edge
def workspaces_rename(ctx: click.Context, old: str, new: str, as_json: bool) -> None:
    """Rename a workspace; its documents and chats stay.

    Example: python -m rag workspaces rename "HR policies" HR
    """
    with _service(_settings(ctx)) as service:
        workspace = service.rename_workspace(old, new)
    click.echo(json.dumps(_workspace_json(workspace)) if as_json else f"Renamed {old} to {workspace.name}")


@workspaces.command("delete")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print {name, documents} of what was deleted.")
@click.pass_context
@_edge
def workspaces_delete(ctx: click.Context, name: str, as_json: bool) -> None:
    """Delete a workspace with its documents (chunks, keyword entries, stored files) and chats.

    Example: python -m rag workspaces delete HR
    """
    with _service(_settings(ctx)) as service:
        removed = service.delete_workspace(name)
    if as_json:
        click.echo(json.dumps({"name": name, "documents": len(removed)}))
    else:
        click.echo(f"Deleted workspace {name} and its {len(removed)} documents")


@cli.command()
@click.option("--counts", default="10,100,1000", show_default=True, help="Comma-separated N values.")
@click.option(
    "--dim",
    type=click.IntRange(2, 32768),
    help="Vector dimension [default: 768, the seed's; 384 with the scale experiment, the bundled model's].",
)
@click.option(
    "--consistency",
    default="Strong",
    show_default=True,
    type=click.Choice(["Strong", "Session", "Bounded", "Eventually"]),
    help="Milvus consistency level.",
)
@click.option(
    "--concurrency",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Requests in flight for the project's async path.",
)
@click.option(
    "--experiments", default="add,search,ingest", show_default=True, help="Which of add,search,ingest,embed,scale."
)
@click.option(
    "--sizes",
    default="10000,100000,1000000",
    show_default=True,
    help="Scale: chunks per synthetic collection, comma-separated (each built, measured and dropped in turn).",
)
@click.option("--quick", is_flag=True, help="Scale: one collection of 10,000 chunks and fewer timed queries.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Scale: save the rows to this JSON file after each size; sizes it holds are skipped, a stopped build resumes.",
)
@click.option("--keep", is_flag=True, help="Scale: keep each size's collection instead of dropping it.")
@click.option(
    "--index-sweep",
    default="",
    help="Scale: also rebuild and measure these indexes, ';'-separated, e.g. 'HNSW:M=16,efConstruction=200,ef=64'.",
)
@click.option("--corpus", type=click.Path(exists=True, file_okay=False), help="Folder of documents for ingest/embed.")
@click.option("--max-files", type=click.IntRange(1), help="Use only the first N corpus files for ingest/embed.")
@click.option(
    "--insert-batch",
    default=250,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Rows per insert request on the project's async path.",
)
@click.option(
    "--repeat",
    default=3,
    show_default=True,
    type=click.IntRange(1, 50),
    help="Timed rounds of every measurement, the modes taking turns; rows show the median and the spread.",
)
@click.option(
    "--min-round",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 10),
    help="Add and search: a run quicker than this many seconds is repeated back to back within its round and the "
    "time of one run reported; Strong searches start 4 runs per round at evenly spaced phases of the time tick "
    "(0: one run per round).",
)
@click.option(
    "--modes",
    default="",
    help="Only these modes of add, search and ingest, comma-separated (e.g. seed-async,project-async). Default: all.",
)
@click.option(
    "--chunks",
    default=512,
    show_default=True,
    type=click.IntRange(0),
    help="Corpus chunks to embed in the embed experiment, spread over the corpus (0: all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (rows, Milvus version, machine).")
@click.pass_context
@_edge
def bench(
    ctx: click.Context,
    counts: str,
    dim: int | None,
    consistency: str,
    concurrency: int,
    experiments: str,
    corpus: str | None,
    max_files: int | None,
    insert_batch: int,
    repeat: int,
    min_round: float,
    modes: str,
    chunks: int,
    sizes: str,
    quick: bool,
    out: str | None,
    keep: bool,
    index_sweep: str,
    as_json: bool,
) -> None:
    """Time sync against async Milvus calls (the seed's experiment and the project's path) in scratch collections,
    and the embedding backends on the corpus chunks (`embed`, no Milvus needed).

    \b
    Examples:
      python -m rag bench --counts 10,100 --experiments add,search
      python -m rag bench --experiments embed --repeat 3 --json
      python -m rag bench --experiments scale --sizes 10000,100000 --dim 384 --out scale.json
    """
    from rag import MILVUS_EXPERIMENTS, BenchConfig, BenchRow, aiter_bench

    try:
        config = BenchConfig(
            counts=[int(c) for c in counts.split(",") if c.strip()],
            dim=dim or (384 if "scale" in experiments else 768),
            consistency_level=consistency,
            concurrency=concurrency,
            experiments=[e.strip() for e in experiments.split(",") if e.strip()],
            corpus_dir=corpus,
            max_files=max_files,
            insert_batch=insert_batch,
            repeat=repeat,
            min_round=min_round,
            modes=[m.strip() for m in modes.split(",") if m.strip()] or None,
            embed_chunks=chunks or None,
            results_file=out,
            keep_collections=keep,
            index_sweep=[spec for spec in index_sweep.split(";") if spec.strip()],
            **(
                {"sizes": [10_000], "queries": 48, "recall_queries": 32, "page_loads": 3}
                if quick
                else {"sizes": [int(n) for n in sizes.replace("_", "").split(",") if n.strip()]}
            ),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    settings = _settings(ctx)
    stack = contextlib.ExitStack()
    if any(e in MILVUS_EXPERIMENTS for e in config.experiments):
        service = stack.enter_context(_service(settings))
        items, close = service.bench(config), stack.close
    else:  # embedding alone needs no Milvus: a bare runtime
        from rag import Runtime

        runtime = Runtime()
        items, close = runtime.iterate(aiter_bench(settings, None, None, config)), runtime.close
    header = ""
    try:
        for item in items:
            if not isinstance(item, BenchRow):
                if as_json:
                    click.echo(item.model_dump_json(indent=2))
                continue
            if as_json:
                continue
            if item.experiment == "scale":
                if header != "scale":
                    click.echo(
                        f"{'size':>9} {'measure':11} {'clients':>7} {'seconds':>9} {'p50 ms':>8} {'p95 ms':>8} "
                        f"{'per s':>8} {'recall':>6} {'MB':>8}  note"
                    )
                    header = "scale"
                figure = item.chunks_per_s or item.per_s
                megabytes = item.disk_mb if item.disk_mb is not None else item.rss_milvus_mb
                click.echo(
                    f"{item.n:>9} {item.mode:11} {item.clients or '':>7} {item.seconds:>9.3f} "
                    f"{_num(item.p50_ms, 1):>8} {_num(item.p95_ms, 1):>8} {_num(figure, 1):>8} "
                    f"{_num(item.recall, 3):>6} {_num(megabytes, 0):>8}  {item.note}"
                )
                continue
            if item.experiment == "embed":
                if header != "embed":
                    click.echo(
                        f"{'experiment':10} {'mode':11} {'chunks':>6} {'seconds':>8} {'chunks/s':>9} {'spread':>13} "
                        f"{'speedup':>8} {'cos mean':>9} {'cos min':>8}  chosen"
                    )
                    header = "embed"
                spread = f"{item.n / item.seconds_max:.1f}-{item.n / item.seconds_min:.1f}"
                speed = f"{item.speedup:.2f}x" if item.speedup else "-"
                click.echo(
                    f"{item.experiment:10} {item.mode:11} {item.n:>6} {item.seconds:>8.2f} {item.chunks_per_s:>9.1f} "
                    f"{spread:>13} {speed:>8} {item.cosine_mean:>9.5f} {item.cosine_min:>8.5f}  "
                    f"{'*' if item.chosen else ''}"
                )
                continue
            if header != "milvus":
                click.echo(
                    f"{'experiment':10} {'mode':14} {'N':>6} {'seconds':>9} {'min-max':>15} {'ms/item':>9} "
                    f"{'speedup':>8}  note"
                )
                header = "milvus"
            speed = f"{item.speedup:.1f}x" if item.speedup else "-"
            spread = f"{item.seconds_min:.3f}-{item.seconds_max:.3f}" if item.seconds_min is not None else "-"
            click.echo(
                f"{item.experiment:10} {item.mode:14} {item.n:>6} {item.seconds:>9.3f} {spread:>15} "
                f"{item.ms_per_item:>9.3f} {speed:>8}  {item.note}"
            )
    finally:
        close()


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@cli.group()
def users() -> None:
    """Accounts for the web app: once one exists, every page asks for a name and password."""


def _accounts(ctx: click.Context):  # noqa: ANN202 - rag.Accounts
    from rag import Accounts

    return Accounts.from_settings(_settings(ctx))


def _read_password(from_stdin: bool) -> str:
    """The new password: from stdin (one line, its newline dropped), or typed twice, hidden, on a terminal."""
    if from_stdin:
        text = sys.stdin.read()
        password = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
        if not password:
            raise click.ClickException("No password on stdin.")
        if "\n" in password or "\r" in password:
            raise click.ClickException("The password on stdin must be one line.")
        return password
    if not sys.stdin.isatty():
        raise click.ClickException("Pass the password on stdin with --password-stdin (never as an argument).")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@users.command("add")
@click.argument("name")
@click.option("--password-stdin", "from_stdin", is_flag=True, help="Read the password from stdin (one line).")
@click.option("--admin", is_flag=True, help="May manage accounts and shared workspaces in the app.")
@click.pass_context
@_edge
def users_add(ctx: click.Context, name: str, from_stdin: bool, admin: bool) -> None:
    """Create an account: a name of 1-64 letters, digits, dots, underscores or hyphens; a password of 8+ characters.

    Example: printf '%s\\n' "$PASSWORD" | python -m rag users add alice --admin --password-stdin
    """
    accounts = _accounts(ctx)
    try:
        accounts.check_name(name)  # before asking for a password that would be thrown away
        account = accounts.add(name, _read_password(from_stdin), admin=admin)
        admins = any(a.admin for a in accounts.list())
    finally:
        accounts.close()
    click.echo(f"Added {'admin ' if account.admin else ''}{account.name}")
    if not admins:
        click.echo("Note: no account is an admin; add one with --admin to manage accounts in the app.", err=True)


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of {name, admin, created}.")
@click.pass_context
@_edge
def users_list(ctx: click.Context, as_json: bool) -> None:
    """List accounts.

    Example: python -m rag users list --json
    """
    accounts = _accounts(ctx)
    try:
        rows = accounts.list()
    finally:
        accounts.close()
    if as_json:
        click.echo(json.dumps([{"name": a.name, "admin": a.admin, "created": a.created} for a in rows]))
        return
    if not rows:
        click.echo("No accounts: the app runs without logins (APP_PASSWORD applies if set).")
    for a in rows:
        click.echo(f"{a.name:30.30} {'admin' if a.admin else 'user':5}  {a.created}")


@users.command("remove")
@click.argument("name")
@click.option(
    "--documents",
    type=click.Choice(["delete", "hand-over"]),
    help="What becomes of the account's private documents: delete them (needs Milvus), or hand them to an admin.",
)
@click.option("--to", "heir", help="The admin who receives them with --documents hand-over (default: the first).")
@click.pass_context
@_edge
def users_remove(ctx: click.Context, name: str, documents: str | None, heir: str | None) -> None:
    """Delete an account (the last admin stays while other accounts exist). A later account with the same name
    gets nothing of it. Its private documents must be deleted or handed to an admin.

    Example: python -m rag users remove alice --documents hand-over --to carol
    """
    settings = _settings(ctx)
    if documents == "delete":
        with _service(settings) as service:
            account = service.remove_account(name, documents="delete")
            left = service.accounts.any()
    else:
        accounts = _accounts(ctx)
        try:
            if documents == "hand-over" and heir is None:
                admins = [a.name for a in accounts.list() if a.admin and a.name.lower() != name.lower()]
                heir = admins[0] if admins else None
                if heir is None:
                    raise click.ClickException("No other admin to hand the documents to: use --documents delete.")
            try:
                account = accounts.remove(name, hand_to=heir if documents == "hand-over" else None)
            except RagError as exc:
                if "private workspaces" in exc.user_message:
                    raise click.ClickException(
                        exc.user_message + " Pass --documents delete, or --documents hand-over [--to ADMIN]."
                    ) from exc
                raise
            left = accounts.any()
        finally:
            accounts.close()
    click.echo(f"Removed {account.name}" + (f"; their private documents went to {heir}" if heir else ""))
    if not left:
        click.echo("No accounts left: the app runs without logins again.", err=True)


@users.command("passwd")
@click.argument("name")
@click.option("--password-stdin", "from_stdin", is_flag=True, help="Read the new password from stdin (one line).")
@click.pass_context
@_edge
def users_passwd(ctx: click.Context, name: str, from_stdin: bool) -> None:
    """Set an account's password (its failed sign-ins are forgotten, its live sessions end at their next page run).

    Example: printf '%s\\n' "$PASSWORD" | python -m rag users passwd alice --password-stdin
    """
    accounts = _accounts(ctx)
    try:
        accounts.require(name)  # before asking for a password that would be thrown away
        account = accounts.set_password(name, _read_password(from_stdin))
    finally:
        accounts.close()
    click.echo(f"Password changed for {account.name}")


@contextlib.contextmanager
def _access(settings: Settings) -> Iterator[Any]:
    """Who may call the API (rag.RemoteAccess over the data dir's accounts, tokens and workspaces), closed after."""
    from rag import RemoteAccess

    access = RemoteAccess.from_settings(settings)
    try:
        yield access
    finally:
        access.close()


@contextlib.contextmanager
def _gateway(settings: Settings, host: str | None = None) -> Iterator[Any]:
    """The engine as remote callers see it; refuses a non-loopback `host` before loading anything, when calls
    without a token would be served."""
    from rag import Gateway, RagService

    with _access(settings) as access:
        if host is not None:
            access.check_bind(host)
        service = RagService(settings)
        try:
            yield Gateway(service, access)
        finally:
            service.close()


@cli.command()
@click.option(
    "--host", help="Address to listen on (RAG_API_HOST; default 127.0.0.1); another only once a token exists."
)
@click.option("--port", type=click.IntRange(1, 65535), help="Port (RAG_API_PORT; default 8000).")
@click.pass_context
@_edge
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the HTTP API: OpenAI-compatible chat, search, documents, jobs and evaluation, the MCP server at /mcp,
    and the schema at /docs. Once an account or a token exists (or APP_PASSWORD is set), every call needs
    'Authorization: Bearer TOKEN' (python -m rag tokens create NAME).

    Example: python -m rag serve --port 8000
    """
    from rag import serve_http

    settings = _settings(ctx, api_host=host, api_port=port)
    with _gateway(settings, settings.api_host) as gateway:
        serve_http(gateway, settings.api_host, settings.api_port)


@cli.command("mcp")
@click.option("--http", "http", is_flag=True, help="Serve streamable HTTP at /mcp instead of stdio.")
@click.option("--host", help="--http: address to listen on (RAG_API_HOST; default 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="--http: port (RAG_API_PORT; default 8000).")
@click.pass_context
@_edge
def mcp(ctx: click.Context, http: bool, host: str | None, port: int | None) -> None:
    """Serve the MCP server (tools search, ask, list_workspaces, list_documents, get_passage; documents as
    resources) over stdio, for a client that starts it, or over streamable HTTP with --http.

    \b
    Over stdio it acts for the user running it, as the CLI does; with RAG_MCP_TOKEN set, as that API token's
    caller (its account, workspace and read-only limits). Over HTTP the token rules of `serve` apply.
    Example: python -m rag mcp
    """
    from rag import run_stdio, serve_http

    settings = _settings(ctx, api_host=host, api_port=port)
    if http:
        with _gateway(settings, settings.api_host) as gateway:
            serve_http(gateway, settings.api_host, settings.api_port, rest=False)
        return
    with contextlib.ExitStack() as stack:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the protocol: starting must not write to it
            gateway = stack.enter_context(_gateway(settings))
            token = settings.mcp_token.get_secret_value() if settings.mcp_token else None
            caller = gateway.access.authenticate(f"Bearer {token}") if token else gateway.access.local()
        run_stdio(gateway, caller)


@cli.group()
def tokens() -> None:
    """API tokens for `serve` and `mcp`: stored hashed, shown once, revocable."""


@tokens.command("create")
@click.argument("name")
@click.option("--workspace", "workspace", help="Only this workspace (a name the account sees); default: all of them.")
@click.option("--read-only", is_flag=True, help="May search, ask and read documents, but not upload or delete.")
@click.option("--json", "as_json", is_flag=True, help="Print the token's fields and its secret as `token`.")
@click.pass_context
@_edge
def tokens_create(ctx: click.Context, name: str, workspace: str | None, read_only: bool, as_json: bool) -> None:
    """Make an API token for the account NAME (with no accounts, NAME is a label and the token acts for everyone
    until accounts exist). The token is printed once: store it now.

    Example: python -m rag tokens create alice --workspace "HR policies" --read-only
    """
    with _access(_settings(ctx)) as access:
        token, secret = access.issue(name, workspace, read_only)
    if as_json:
        click.echo(json.dumps({**_token_json(token), "token": secret}))
        return
    click.echo(secret)
    limits = ", ".join(
        x for x in ("read-only" if read_only else "", f"workspace {workspace}" if workspace else "") if x
    )
    click.echo(f"Token {token.id} for {name}{f' ({limits})' if limits else ''}: shown once, keep it secret.", err=True)


def _token_json(token: Any) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "account_id": token.account_id,
        "workspace": token.workspace,
        "read_only": token.read_only,
        "created": token.created,
        "last_used": token.last_used,
        "revoked": token.revoked_at is not None,
    }


@tokens.command("list")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print [{id, name, account_id, workspace, read_only, created, last_used, revoked}].",
)
@click.pass_context
@_edge
def tokens_list(ctx: click.Context, as_json: bool) -> None:
    """List API tokens (never their secrets).

    Example: python -m rag tokens list
    """
    with _access(_settings(ctx)) as access:
        rows = access.tokens.list()
    if as_json:
        click.echo(json.dumps([_token_json(t) for t in rows]))
        return
    if not rows:
        click.echo("No API tokens.")
    for t in rows:
        state = "revoked" if t.revoked_at else "read-only" if t.read_only else "read-write"
        click.echo(
            f"{t.id}  {t.name:24.24} {state:10} {t.workspace or 'all workspaces':16} {t.last_used or 'never used'}"
        )


@tokens.command("revoke")
@click.argument("token_id")
@click.pass_context
@_edge
def tokens_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke an API token by its id (tokens list): every later call with it is refused, in every process.

    Example: python -m rag tokens revoke 3f2a9c1b7d4e
    """
    with _access(_settings(ctx)) as access:
        token = access.tokens.revoke(token_id)
    if token is None:
        raise click.ClickException(f"No API token has the id {token_id}.")
    click.echo(f"Revoked token {token.id} of {token.name}")


def main() -> None:
    """Entry point for `python -m rag`."""
    cli(obj={})
