"""The review database: users, queued items, leases and the append-only decision trail (the only module that
touches SQLAlchemy and Alembic).

One schema for the embedded SQLite file (default) and PostgreSQL (the platform), created and upgraded by the
Alembic migrations in `migrations/`. Concurrency without database locks:
- an item carries a `version`; every change is `UPDATE ... WHERE id = ? AND version = ?`, so of two reviewers
  acting on one item at once exactly one wins and the other gets StaleItem (never a lost or doubled decision);
- a reviewer holds an item through a lease (`lease_user`, `lease_until`), taken by the same guarded update, so
  two reviewers never get the same item while the lease runs;
- decisions are only ever inserted: a database trigger refuses UPDATE and DELETE on them, and undo is a new
  decision that points at the one it takes back.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from werkzeug.security import check_password_hash, generate_password_hash

from components.config import Params

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ROLES = ("reviewer", "admin")
QUEUES = ("audit", "categorize", "upload")
# What a reviewer can do with an item: take the model's first suggestion, pick another path, keep the
# current label, or pass it on. `undo` takes back one's own last decision.
ACTIONS = ("accept", "pick", "confirm", "skip")
LABEL_CHANGES = ("accept", "pick")


class ReviewError(ValueError):
    """A request the store refuses; the message says why and what to do."""


class StaleItem(ReviewError):
    """The item changed since the reviewer loaded it (someone else decided or holds it)."""


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("queue", "source", "product_id", name="uq_items_queue_source_product"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    queue: Mapped[str] = mapped_column(String(32), index=True)
    source: Mapped[str] = mapped_column(String(200))  # the audit run, the categorize batch, the uploaded list
    product_id: Mapped[str] = mapped_column(String(128), index=True)
    rank: Mapped[float] = mapped_column(Float)  # ascending: the most suspicious / least confident first
    current_path: Mapped[list] = mapped_column(JSON)  # the label in the catalog, coarsest first ([] = none)
    suggestions: Mapped[list] = mapped_column(JSON)  # [{"path": [...], "confidence": float}], best first
    reason: Mapped[str] = mapped_column(Text)
    product: Mapped[dict] = mapped_column(JSON)  # title, image (relative to the catalog), metadata
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)  # open | decided
    version: Mapped[int] = mapped_column(Integer, default=1)
    lease_user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Decision(Base):
    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    product_id: Mapped[str] = mapped_column(String(128), index=True)
    reviewer: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(16))  # accept | pick | confirm | skip | undo
    before: Mapped[list] = mapped_column(JSON)
    after: Mapped[list] = mapped_column(JSON)
    undoes: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the decision an `undo` takes back
    at: Mapped[dt.datetime] = mapped_column(DateTime)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def engine_for(url: str) -> Engine:
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite(conn, _):  # noqa: ANN001 (DBAPI connection)
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for the one writer
            conn.execute("PRAGMA busy_timeout=10000")
    return engine


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to the newest migration (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@dataclass
class ItemView:
    """An item as a page or the API shows it."""
    id: int
    queue: str
    source: str
    product_id: str
    current_path: list
    suggestions: list
    reason: str
    product: dict
    status: str
    version: int
    lease_user: str | None
    lease_until: str | None

    @classmethod
    def of(cls, it: Item) -> ItemView:
        return cls(it.id, it.queue, it.source, it.product_id, list(it.current_path), list(it.suggestions),
                   it.reason, dict(it.product), it.status, it.version, it.lease_user,
                   it.lease_until.isoformat() + "Z" if it.lease_until else None)


class Store:
    def __init__(self, url: str, lease_minutes: float = 10.0) -> None:
        self.engine = engine_for(url)
        migrate(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        self.lease = dt.timedelta(minutes=lease_minutes)

    # --- users -----------------------------------------------------------------------------------------------

    def add_user(self, name: str, password: str, role: str = "reviewer") -> None:
        if role not in ROLES:
            raise ReviewError(f"role {role!r}: expected one of {ROLES}")
        if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise ReviewError(f"user name {name!r}: 1-64 letters, digits, '.', '_' or '-'")
        if len(password) < 10:
            raise ReviewError("password: at least 10 characters")
        with self.session.begin() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                s.add(User(name=name, password_hash=generate_password_hash(password), role=role, active=True,
                           created_at=now()))
            else:  # an existing user: new password and role (how an admin resets one)
                user.password_hash, user.role, user.active = generate_password_hash(password), role, True

    def login(self, name: str, password: str) -> dict | None:
        """The user's name and role when the password matches, else None (same answer for an unknown name)."""
        with self.session() as s:
            user = s.scalar(select(User).where(User.name == name, User.active.is_(True)))
        if user is None:
            check_password_hash(generate_password_hash("x"), password)  # same time as a wrong password
            return None
        return {"name": user.name, "role": user.role} if check_password_hash(user.password_hash, password) else None

    def role(self, name: str) -> str | None:
        with self.session() as s:
            user = s.scalar(select(User).where(User.name == name, User.active.is_(True)))
        return user.role if user else None

    # --- queues ----------------------------------------------------------------------------------------------

    def enqueue(self, items: list[dict]) -> tuple[int, int]:
        """Add items (queue, source, product_id, rank, current_path, suggestions, reason, product); a product
        already queued from the same source, or still open in the same queue (a new audit run flags it again),
        is left as it is. Returns (added, already there)."""
        added = 0
        with self.session.begin() as s:
            for d in items:
                if d["queue"] not in QUEUES:
                    raise ReviewError(f"queue {d['queue']!r}: expected one of {QUEUES}")
                same = (Item.source == d["source"]) | (Item.status == "open")
                exists = s.scalar(select(Item.id).where(Item.queue == d["queue"], same,
                                                        Item.product_id == str(d["product_id"])).limit(1))
                if exists is None:
                    s.add(Item(queue=d["queue"], source=d["source"], product_id=str(d["product_id"]),
                               rank=float(d["rank"]), current_path=list(d["current_path"]),
                               suggestions=list(d["suggestions"]), reason=d["reason"], product=dict(d["product"]),
                               status="open", version=1, created_at=now()))
                    added += 1
        return added, len(items) - added

    def counts(self) -> list[dict]:
        with self.session() as s:
            rows = s.execute(select(Item.queue, Item.status, Item.lease_until)).all()
        t = now()
        out = {q: {"queue": q, "open": 0, "leased": 0, "decided": 0} for q in QUEUES}
        for queue, status, until in rows:
            out[queue]["decided" if status == "decided" else "open"] += 1
            if status == "open" and until is not None and until > t:
                out[queue]["leased"] += 1
        return list(out.values())

    @staticmethod
    def _skipped_by(user: str):
        """Items this reviewer skipped (and did not undo), as a subquery: not offered to them again."""
        undone = select(Decision.undoes).where(Decision.reviewer == user, Decision.action == "undo",
                                               Decision.undoes.is_not(None))
        return select(Decision.item_id).where(Decision.reviewer == user, Decision.action == "skip",
                                              Decision.id.not_in(undone))

    def next_item(self, queue: str, user: str) -> ItemView | None:
        """Lease the queue's first open item nobody else holds (the reviewer's own lease first). One UPDATE picks
        and leases it, so reviewers asking at once get different items without retries (the database serialises
        the writes; PostgreSQL skips rows another transaction is leasing)."""
        if queue not in QUEUES:
            raise ReviewError(f"queue {queue!r}: expected one of {QUEUES}")
        t = now()
        with self.session() as s:
            mine = s.scalar(select(Item).where(Item.queue == queue, Item.status == "open",
                                               Item.lease_user == user, Item.lease_until > t)
                            .order_by(Item.rank, Item.id).limit(1))
        if mine is not None:
            return ItemView.of(mine)
        free = (Item.lease_until.is_(None)) | (Item.lease_until <= t)
        first = (select(Item.id).where(Item.queue == queue, Item.status == "open", free,
                                       Item.id.not_in(self._skipped_by(user)))
                 .order_by(Item.rank, Item.id).limit(1))
        if self.engine.dialect.name == "postgresql":
            first = first.with_for_update(skip_locked=True)
        with self.session.begin() as s:
            got = s.scalar(update(Item).where(Item.id == first.scalar_subquery())
                           .values(version=Item.version + 1, lease_user=user, lease_until=t + self.lease)
                           .returning(Item.id))
        return self.item(got) if got is not None else None

    def item(self, item_id: int) -> ItemView:
        with self.session() as s:
            it = s.get(Item, item_id)
        if it is None:
            raise ReviewError(f"item {item_id}: no such item")
        return ItemView.of(it)

    def _guarded(self, item_id: int, version: int, **values) -> bool:
        """Change an item only if nobody changed it since `version` was read."""
        with self.session.begin() as s:
            res = s.execute(update(Item).where(Item.id == item_id, Item.version == version)
                            .values(version=version + 1, **values))
            return res.rowcount == 1

    # --- decisions -------------------------------------------------------------------------------------------

    def decide(self, item_id: int, user: str, action: str, version: int, path: list[str] | None = None,
               taxonomy: set[tuple[str, ...]] | None = None) -> dict:
        """Record a decision on an item the reviewer holds (or nobody holds), if it is unchanged since `version`.
        `pick` needs `path`, which must be one of the taxonomy's paths."""
        if action not in ACTIONS:
            raise ReviewError(f"action {action!r}: expected one of {ACTIONS}")
        it = self.item(item_id)
        t = now()
        if it.version != version:
            raise StaleItem(f"item {item_id} changed since you loaded it (version {version}, now {it.version}); "
                            "reload it")
        if it.status == "decided":
            raise StaleItem(f"item {item_id} was already decided; reload the queue")
        lease_until = dt.datetime.fromisoformat(it.lease_until.rstrip("Z")) if it.lease_until else None
        if it.lease_user not in (None, user) and lease_until and lease_until > t:
            raise StaleItem(f"item {item_id} is held by another reviewer until {it.lease_until}")
        if action == "accept":
            if not it.suggestions:
                raise ReviewError(f"item {item_id} has no suggestion to accept; pick a path")
            after = list(it.suggestions[0]["path"])
        elif action == "pick":
            after = [str(p).strip() for p in (path or [])]
            if taxonomy is not None and tuple(after) not in taxonomy:
                raise ReviewError(f"path {' > '.join(after) or '(empty)'!r} is not in the catalog's taxonomy; "
                                  "pick one of the listed paths")
        else:  # confirm keeps the label; skip changes nothing
            after = list(it.current_path)
        status = "open" if action == "skip" else "decided"
        with self.session.begin() as s:
            res = s.execute(update(Item).where(Item.id == item_id, Item.version == version)
                            .values(version=version + 1, status=status, lease_user=None, lease_until=None))
            if res.rowcount != 1:
                raise StaleItem(f"item {item_id} changed while you decided; reload it")
            d = Decision(item_id=item_id, product_id=it.product_id, reviewer=user, action=action,
                         before=list(it.current_path), after=after, undoes=None, at=t)
            s.add(d)
            s.flush()
            return {"decision": d.id, "item": item_id, "action": action, "after": after, "version": version + 1}

    def undo(self, user: str) -> dict:
        """Take back the reviewer's own last decision (while nobody decided that item since); the item returns
        to them, leased."""
        with self.session() as s:
            rows = s.scalars(select(Decision).where(Decision.reviewer == user).order_by(Decision.id.desc())).all()
            undone = {d.undoes for d in rows if d.action == "undo"}
            last = next((d for d in rows if d.action != "undo" and d.id not in undone), None)
            if last is None:
                raise ReviewError("nothing to undo")
            later = s.scalar(select(Decision.id).where(Decision.item_id == last.item_id, Decision.id > last.id,
                                                       Decision.reviewer != user))
            it = s.get(Item, last.item_id)
        if later is not None:
            raise StaleItem(f"item {last.item_id} was decided by someone else since; it cannot be undone")
        t = now()
        with self.session.begin() as s:
            res = s.execute(update(Item).where(Item.id == it.id, Item.version == it.version)
                            .values(version=it.version + 1, status="open", lease_user=user,
                                    lease_until=t + self.lease))
            if res.rowcount != 1:
                raise StaleItem(f"item {it.id} changed meanwhile; reload it")
            s.add(Decision(item_id=it.id, product_id=it.product_id, reviewer=user, action="undo",
                           before=list(last.after), after=list(last.before), undoes=last.id, at=t))
        return {"undone": last.id, "item": it.id}

    def effective(self) -> list[dict]:
        """Each product's standing decision: its latest accept, pick or confirm that was not undone (a product
        queued twice, e.g. by the audit and by a categorize run, gets one answer), oldest first."""
        with self.session() as s:
            rows = s.scalars(select(Decision).order_by(Decision.id)).all()
        undone = {d.undoes for d in rows if d.action == "undo"}
        latest: dict[str, Decision] = {}
        for d in rows:
            if d.action in ("accept", "pick", "confirm") and d.id not in undone:
                latest[d.product_id] = d
        return [{"product_id": d.product_id, "action": d.action, "before": list(d.before), "after": list(d.after),
                 "reviewer": d.reviewer, "at": d.at.isoformat() + "Z", "decision": d.id}
                for d in sorted(latest.values(), key=lambda d: d.id)]

    def trail(self, item_id: int | None = None) -> list[dict]:
        with self.session() as s:
            q = select(Decision).order_by(Decision.id)
            if item_id is not None:
                q = q.where(Decision.item_id == item_id)
            rows = s.scalars(q).all()
        return [{"id": d.id, "item": d.item_id, "product_id": d.product_id, "reviewer": d.reviewer,
                 "action": d.action, "before": d.before, "after": d.after, "undoes": d.undoes,
                 "at": d.at.isoformat() + "Z"} for d in rows]


def database_url(params: Params) -> str:
    url = os.environ.get("DEEPFUSION_REVIEW_DB", "")
    if url:
        return url
    folder = Path(params.paths.review)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'review.db').resolve()}"


def open_store(params: Params) -> Store:
    return Store(database_url(params), lease_minutes=params.review.lease_minutes)
