"""Conversations kept server-side, in the engine's database, keyed by whose they are: a browser session id,
or `account:<account id>` when signed in (`Caller.conversation_key`).

The web UI stores every question and answer (with its sources) here, so a conversation survives a
browser refresh; one key never reads another's turns, and a removed account's turns go with it (a later
account of the same name has another id). Safe to share between threads and processes.

    store = ConversationStore.from_settings(settings)
    store.append("sid", StoredTurn(role="user", content="What is a zoo?"))
    store.history("sid")       # [StoredTurn(...)]
    store.to_markdown("sid")   # the conversation as a Markdown document
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import delete, insert, select, update

from rag import schema
from rag.config import Settings
from rag.database import Database
from rag.markdown import escape_markdown, escape_math, neutralize_markdown
from rag.query import ChatTurn, Source, cited_documents

_turns = schema.turns


class StoredTurn(BaseModel, frozen=True):
    """One message of a stored conversation; assistant turns carry their sources and mode."""

    role: Literal["user", "assistant"]
    content: str
    mode: str | None = None
    sources: list[Source] = Field(default_factory=list)
    created_at: float = Field(default_factory=time.time)
    id: int | None = None
    feedback: Literal[-1, 1] | None = None

    def as_chat_turn(self) -> ChatTurn:
        """The turn as the engine's follow-up history wants it."""
        return ChatTurn(role=self.role, content=self.content, doc_ids=cited_documents(self.content, self.sources))

    @property
    def safe_markdown(self) -> str:
        """The content as Markdown that renders as text: engine-escaped retrieval output as is."""
        if self.role == "assistant" and self.mode == "retrieval-only":
            return escape_math(self.content)  # the engine already escaped the document text it quotes
        if self.role == "assistant":
            return neutralize_markdown(self.content)
        return escape_markdown(self.content)  # escapes `$` too, so no math


class ConversationStore:
    """Conversations in the engine's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    def from_settings(cls, settings: Settings) -> ConversationStore:
        """The conversations of the settings' database."""
        return cls(Database.open(settings))

    def append(self, sid: str, turn: StoredTurn | ChatTurn, workspace: str = "default") -> None:
        """Add a turn at the end of a session's conversation in a workspace."""
        if isinstance(turn, ChatTurn):
            turn = StoredTurn(role=turn.role, content=turn.content)
        sources = json.dumps([s.model_dump() for s in turn.sources])
        with self.db.write() as conn:
            conn.execute(
                insert(_turns).values(
                    sid=sid,
                    role=turn.role,
                    content=turn.content,
                    mode=turn.mode,
                    sources=sources,
                    created_at=turn.created_at,
                    workspace=workspace,
                )
            )

    def history(self, sid: str, workspace: str = "default") -> list[StoredTurn]:
        """A session's turns in a workspace, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(_turns).where(_turns.c.sid == sid, _turns.c.workspace == workspace).order_by(_turns.c.id)
            ).all()
        return [
            StoredTurn(
                role=row.role,
                content=row.content,
                mode=row.mode,
                sources=[Source(**s) for s in json.loads(row.sources or "[]")],
                created_at=row.created_at,
                id=row.id,
                feedback=row.feedback,
            )
            for row in rows
        ]

    def set_feedback(self, sid: str, turn_id: int, value: Literal[-1, 1] | None) -> bool:
        """Thumbs up (1), down (-1) or neither (None) on one of a session's answers; False if it is not theirs."""
        with self.db.write() as conn:
            result = conn.execute(
                update(_turns)
                .where(_turns.c.id == turn_id, _turns.c.sid == sid, _turns.c.role == "assistant")
                .values(feedback=value)
            )
        return result.rowcount == 1

    def pop_answer(self, sid: str, workspace: str = "default") -> StoredTurn | None:
        """Remove a session's last question and its answer (to ask it again: regenerate); returns the question."""
        turns = self.history(sid, workspace)
        if len(turns) < 2 or turns[-1].role != "assistant" or turns[-2].role != "user":
            return None
        with self.db.write() as conn:
            conn.execute(delete(_turns).where(_turns.c.id.in_([turns[-2].id, turns[-1].id]), _turns.c.sid == sid))
        return turns[-2]

    def feedback_pairs(self, workspace: str = "default", sid: str | None = None) -> list[dict[str, str]]:
        """Answers marked helpful, as labelled pairs for `python -m rag eval`: the question, the file of the
        answer's first source and a verbatim quote from it (its first 30 words)."""
        query = select(_turns).where(_turns.c.workspace == workspace)
        if sid:
            query = query.where(_turns.c.sid == sid)
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(_turns.c.sid, _turns.c.id)).all()
        pairs, question = [], None
        for row in rows:
            if row.role == "user":
                question = row.content
                continue
            sources = json.loads(row.sources or "[]")
            if row.feedback == 1 and question and sources:
                evidence = " ".join(sources[0]["text"].split()[:30])
                pairs.append({"question": question, "file": sources[0]["file_name"], "evidence": evidence})
            question = None
        return pairs

    def chat_history(self, sid: str, workspace: str = "default") -> list[ChatTurn]:
        """A session's turns as the engine's follow-up history."""
        return [t.as_chat_turn() for t in self.history(sid, workspace)]

    def clear(self, sid: str, workspace: str = "default") -> int:
        """Forget a session's conversation in a workspace; returns how many turns were removed."""
        with self.db.write() as conn:
            return conn.execute(delete(_turns).where(_turns.c.sid == sid, _turns.c.workspace == workspace)).rowcount

    def delete_workspace(self, workspace: str) -> int:
        """Forget every conversation held in a workspace (it is being deleted)."""
        with self.db.write() as conn:
            return conn.execute(delete(_turns).where(_turns.c.workspace == workspace)).rowcount

    def to_markdown(self, sid: str, title: str = "Conversation", workspace: str = "default") -> str:
        """The conversation as a Markdown document; document passages are quoted as escaped text."""
        turns = self.history(sid, workspace)
        lines = [f"# {title}", ""]
        if turns:
            started = datetime.fromtimestamp(turns[0].created_at, tz=UTC).isoformat(timespec="seconds")
            lines += [f"_Started {started}_", ""]
        for turn in turns:
            if turn.role == "user":
                lines += ["## Question", "", turn.safe_markdown, ""]
                continue
            label = "Answer (retrieval-only)" if turn.mode == "retrieval-only" else "Answer"
            lines += [f"### {label}", "", turn.safe_markdown, ""]
            if turn.sources:
                lines += ["**Sources**", ""]
                for i, src in enumerate(turn.sources, start=1):
                    passage = " ".join(src.text.split())
                    excerpt = passage[:400] + ("…" if len(passage) > 400 else "")
                    lines.append(f"{i}. {escape_markdown(src.label)} (score {src.score:.3f})")
                    lines.append(f"   > {escape_markdown(excerpt)}")
                lines.append("")
        return "\n".join(lines).rstrip() + "\n"

    def close(self) -> None:
        """Give back the database handle."""
        self.db.close()
