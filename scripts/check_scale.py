"""What the reconcile pass (`python -m rag docs check`) costs at scale.

Fills a scratch collection with N chunk ids of D committed documents (tiny vectors: the pass reads ids only), a
catalogue of D rows and a keyword index of N rows in a scratch data dir, then times the start-up count check and
the full pass, and drops everything. Point it at a Milvus with MILVUS_URI and MILVUS_TOKEN (e.g. the test suite's
embedded server); figures are in BENCHMARKS.md, "Only committed documents answer".

    .venv/bin/python scripts/check_scale.py --chunks 1000000 --documents 1000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymilvus import DataType, MilvusClient  # noqa: E402

from rag.catalog import Catalog, DocumentRecord  # noqa: E402
from rag.config import load_settings  # noqa: E402
from rag.database import Database  # noqa: E402
from rag.documents import DocumentLibrary  # noqa: E402
from rag.keyword import KeywordIndex, KeywordRow  # noqa: E402
from rag.store import WORKSPACE_FIELD, Connection, DocumentStore, chunk_id  # noqa: E402


def _fill(client: MilvusClient, name: str, data_dir: Path, docs: list[str], per_doc: int) -> None:
    schema = client.create_schema(auto_id=False, enable_dynamic_field=True)
    schema.add_field("id", DataType.VARCHAR, max_length=65535, is_primary=True)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=65535)
    schema.add_field(WORKSPACE_FIELD, DataType.VARCHAR, max_length=65535)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=8)
    index = client.prepare_index_params()
    index.add_index("embedding", index_type="FLAT", metric_type="COSINE")
    client.create_collection(name, schema=schema, index_params=index)
    started, rows = time.perf_counter(), []
    for doc in docs:
        for i in range(per_doc):
            rows.append({"id": chunk_id(doc, i), "doc_id": doc, WORKSPACE_FIELD: "default", "embedding": [0.1] * 8})
            if len(rows) == 20_000:
                client.insert(name, rows)
                rows = []
    if rows:
        client.insert(name, rows)
    client.flush(name)
    print(f"Milvus: {len(docs) * per_doc} chunks inserted in {time.perf_counter() - started:.1f} s", flush=True)

    settings = load_settings(data_dir=data_dir, collection=name)
    with Database.open(settings) as db:
        catalog = Catalog(db, name)
        for doc in docs:
            record = DocumentRecord(
                doc_id=doc,
                file_name=f"{doc[:8]}.txt",
                file_type="txt",
                size=1,
                pages=None,
                chunks=per_doc,
                status="indexing",
                stored_path=f"/nonexistent/{doc}",
                added_at=time.time(),
            )
            catalog.begin(record, time.time())
            catalog.finish(doc, per_doc, None)
    keyword = KeywordIndex(data_dir / "keyword.sqlite3", name)
    started = time.perf_counter()
    for doc in docs:
        keyword.add(
            [KeywordRow(chunk_id=chunk_id(doc, i), doc_id=doc, file_name="x.txt", text="w") for i in range(per_doc)]
        )
    keyword.close()
    print(f"keyword index: {len(docs) * per_doc} rows in {time.perf_counter() - started:.1f} s", flush=True)


async def _measure(name: str, data_dir: Path, uri: str, token: str, rounds: int) -> None:
    settings = load_settings(data_dir=data_dir, collection=name)
    store = await DocumentStore.aopen_for_search(settings, Connection(uri=uri, token=token, kind="external"))
    library = DocumentLibrary(settings, store)
    try:
        started = time.perf_counter()
        agree = await library.acounts_agree()
        print(f"start-up count check: {time.perf_counter() - started:.2f} s (agree: {agree})", flush=True)
        for _ in range(rounds):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            started = time.perf_counter()
            report = await library.acheck()
            grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
            print(
                f"full pass: {time.perf_counter() - started:.1f} s, {report.milvus_chunks} chunks, "
                f"{report.keyword_rows} keyword rows, {len(report.findings)} findings, peak memory +{grew:.0f} MB, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    finally:
        library.close()
        await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--collection", default="check_scale")
    args = parser.parse_args()
    uri, token = os.environ["MILVUS_URI"], os.environ.get("MILVUS_TOKEN", "")
    docs = [hashlib.sha256(str(k).encode()).hexdigest() for k in range(args.documents)]
    client = MilvusClient(uri=uri, token=token)
    client.drop_collection(args.collection)
    try:
        with tempfile.TemporaryDirectory(prefix="check-scale-") as folder:
            _fill(client, args.collection, Path(folder), docs, args.chunks // args.documents)
            asyncio.run(_measure(args.collection, Path(folder), uri, token, args.rounds))
    finally:
        client.drop_collection(args.collection)
        client.close()


if __name__ == "__main__":
    main()
