"""One limiter for every sign-in (account names and APP_PASSWORD), kept in the database, so it holds across
app processes and restarts.

Each attempt is counted under two keys: its client address, and the name it tries (APP_PASSWORD counts as
one name). Every failure doubles the wait before the next attempt under either key: 1 s, 2, 4, ... up to
BACKOFF_CAP (15 minutes); failures are forgotten FORGET_AFTER (an hour) after the last one. A success
clears the waits of the name it signed in to, never those of its client or of another name, so signing in
to one's own account between guesses gains nothing.

A lockout is never permanent: a client that signed in to a name within KNOWN_FOR (30 days) is counted
under the pair (name, client) instead of the bare name, so someone failing one guess a minute on a
victim's name keeps out only clients the victim never used; the victim's own browser keeps signing in.

An attempt is recorded as a failure before its password is checked (and cleared if it succeeds), so
attempts sent in parallel get one guess, not one each; during a wait the password is not checked at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import and_, delete, insert, select, update

from rag import schema
from rag.database import Database
from rag.errors import LoginThrottledError

BACKOFF_BASE = 1.0
"""Seconds to wait after the first failure."""
BACKOFF_CAP = 900.0
"""The longest wait between attempts (15 minutes)."""
FORGET_AFTER = 3600.0
"""Failures this long after the last one no longer count."""
KNOWN_FOR = 30 * 86400.0
"""How long a client that signed in to a name stays exempt from that name's wait (30 days)."""
APP = "app"
"""The subject (and name) APP_PASSWORD's attempts are counted under."""
MAX_NAME = 64


def backoff(failures: int) -> float:
    """Seconds to wait after `failures` consecutive failed sign-ins: 1, 2, 4, ... capped at BACKOFF_CAP."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures - 1, 32))


def _now() -> float:
    return time.time()


def name_key(name: str) -> str:
    """The key a name's failures are counted under (names are case-blind)."""
    return "name:" + name.casefold()[: MAX_NAME + 1]


def client_key(client: str | None) -> str:
    """The key a client address's failures are counted under (None: one unknown client)."""
    return "client:" + (client or "unknown")[:256]


def pair_key(name: str, client: str | None) -> str:
    """The key of a name tried from a client that signed in to it before."""
    return "pair:" + name.casefold()[: MAX_NAME + 1] + "|" + (client or "unknown")[:200]


class SignInLimiter:
    """The waits between sign-in attempts. `clock` gives wall-clock seconds (tests pass their own)."""

    def __init__(self, db: Database, clock: Callable[[], float] | None = None) -> None:
        self.db = db
        self._clock = clock

    def now(self) -> float:
        """The time the waits are measured in."""
        return (self._clock or _now)()

    def keys(self, name: str, client: str | None, subject: str | None) -> tuple[str, str]:
        """The keys an attempt on `name` (whose account id, or APP, is `subject`) from `client` counts under."""
        with self.db.read() as conn:
            known = subject is not None and self._known(conn, subject, client)
        return (pair_key(name, client) if known else name_key(name)), client_key(client)

    def _known(self, conn, subject: str, client: str | None) -> bool:  # noqa: ANN001 - a Connection
        row = conn.execute(
            select(schema.signin_known.c.last_at).where(
                schema.signin_known.c.subject == subject, schema.signin_known.c.client == (client or "unknown")
            )
        ).first()
        return row is not None and self.now() - row[0] <= KNOWN_FOR

    def reserve(self, keys: tuple[str, ...]) -> None:
        """Refuse (LoginThrottledError) while any key waits; otherwise count this attempt as failed until
        `succeeded` says otherwise. One serialised write, so parallel attempts cannot share an open window."""
        table = schema.signin_failures
        now = self.now()
        with self.db.write("signin") as conn:
            # Forgotten failures go, so names made up by a guesser do not pile up.
            conn.execute(delete(table).where(table.c.last_at < now - FORGET_AFTER))
            rows = {r.key: r for r in conn.execute(select(table).where(table.c.key.in_(keys)))}
            wait = max([0.0, *(r.until - now for r in rows.values())])
            if wait > 0:
                throttled = LoginThrottledError(wait)
            else:
                throttled = None
                for key in keys:
                    count = (rows[key].count if key in rows else 0) + 1
                    values = {"count": count, "last_at": now, "until": now + backoff(count)}
                    if key in rows:
                        conn.execute(update(table).where(table.c.key == key).values(**values))
                    else:
                        conn.execute(insert(table).values(key=key, **values))
        if throttled is not None:
            raise throttled

    def failed(self, keys: tuple[str, ...]) -> None:
        """The reserved failure stands; its wait runs from the end of the check, not from its start."""
        table = schema.signin_failures
        now = self.now()
        with self.db.write("signin") as conn:
            for row in conn.execute(select(table).where(table.c.key.in_(keys))).all():
                conn.execute(
                    update(table).where(table.c.key == row.key).values(last_at=now, until=now + backoff(row.count))
                )

    def succeeded(self, name: str, subject: str, client: str | None) -> None:
        """The attempt was right: the name's waits go (its bare key and its pair with this client); the
        client's count loses only this attempt's reservation (its earlier failures stand, so signing in to
        one's own account between guesses resets nothing), and the client is known to `subject` from now on."""
        failures, known = schema.signin_failures, schema.signin_known
        client_id = (client or "unknown")[:256]
        with self.db.write("signin") as conn:
            conn.execute(delete(failures).where(failures.c.key.in_([name_key(name), pair_key(name, client)])))
            own = conn.execute(select(failures).where(failures.c.key == client_key(client))).first()
            if own is not None and own.count <= 1:
                conn.execute(delete(failures).where(failures.c.key == own.key))
            elif own is not None:  # no wait now (this attempt's was the only one running), the count goes on
                conn.execute(
                    update(failures).where(failures.c.key == own.key).values(count=own.count - 1, until=self.now())
                )
            match = and_(known.c.subject == subject, known.c.client == client_id)
            if conn.execute(select(known.c.subject).where(match)).first():
                conn.execute(update(known).where(match).values(last_at=self.now()))
            else:
                conn.execute(insert(known).values(subject=subject, client=client_id, last_at=self.now()))
            conn.execute(delete(known).where(known.c.last_at < self.now() - KNOWN_FOR))

    def wait_seconds(self, name: str, client: str | None, subject: str | None = None) -> float:
        """How long an attempt on this name from this client must still wait (0: it may try now)."""
        keys = self.keys(name, client, subject)
        table = schema.signin_failures
        with self.db.read() as conn:
            untils = conn.execute(select(table.c.until).where(table.c.key.in_(keys))).scalars().all()
        return max([0.0, *(u - self.now() for u in untils)])

    def failures(self, key: str) -> int:
        """Consecutive failures counted under a key (what its wait grows on)."""
        table = schema.signin_failures
        with self.db.read() as conn:
            row = conn.execute(select(table.c.count, table.c.last_at).where(table.c.key == key)).first()
        if row is None or self.now() - row.last_at > FORGET_AFTER:
            return 0
        return row.count

    def forget_subject(self, conn, subject: str) -> None:  # noqa: ANN001 - a Connection in a write
        """An account is gone: its known clients go with it."""
        conn.execute(delete(schema.signin_known).where(schema.signin_known.c.subject == subject))
