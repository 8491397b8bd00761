"""The ledger: accounts, immutable transfers, two-phase holds, lots with expiry.

Every public method that changes money is one database transaction keyed by
a caller-supplied idempotency key: applying the same key twice changes nothing
and answers with the first transfer (``duplicate=True``); the same key with a
different request is refused.

Locks are always taken in one order — the transfer's key, the hold, then the
owner account, whose row lock guards all of that account's lots — so
concurrent writers queue instead of deadlocking, and the rare conflict
PostgreSQL still reports is retried.

On PostgreSQL, grant/earn, deduct, hold, post and void (the sweep's too) run as one
call of a server function each (migration 0008, ``functions.py``): the same
statements in the same order, in one round trip instead of 6-11. Their Python
path, below, is what SQLite always runs; ``server_functions=False`` forces it on
PostgreSQL too. Both write identical rows and raise identical errors.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Sequence

from sqlalchemy import case, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from ..quoting import quote_input
from . import database, functions
from .amounts import MAX_UNITS, InvalidAmount
from .errors import (
    HoldNotPending,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
    NotReversible,
    UnknownAccount,
    UnknownTransfer,
)
from .schema import (
    OWNER_KINDS,
    accounts,
    hold_lots,
    holds,
    lot_movements,
    lots,
    transfers,
)

Clock = Callable[[], datetime]

ISSUANCE = "system:issuance"
USAGE = "system:usage"
EXPIRED = "system:expired"

#: Keys of the transfers the sweep makes; callers may not use them.
SWEEP_TIMEOUT_PREFIX = "timeout:"
SWEEP_EXPIRE_PREFIX = "expire:"
RESERVED_KEY_PREFIXES = (SWEEP_TIMEOUT_PREFIX, SWEEP_EXPIRE_PREFIX)

#: Accounts are ``<kind>:<name>``; a hub user's is ``user:`` + the hub name, verbatim.
USER_PREFIX = "user:"
ACCOUNT_KINDS = ("user", "group", "system")
#: What a name in an account may be. JupyterHub allows nearly any user or group name
#: (spaces, ``:``, ``/``, ``%``, unicode), so only what no name needs is refused.
NAME_RULE = "1-200 characters, no control characters, no leading or trailing spaces"
_NAME_BODY = re.compile(r"(?!\s)[^\x00-\x1f\x7f-\x9f]{1,200}(?<!\s)")
_MAX_KEY_LENGTH = 255


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def account_name(text: str) -> str:
    """The canonical account name from what an admin types (the CLI's documented rule).

    ``alice`` → ``user:alice``; ``user:x``, ``group:x`` and ``system:x`` stay. Only
    admin input is read this way: a hub user's own account is ``user_account(name)``,
    which never reads a hub name as an account name.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("account name must be a non-empty string")
    text = text.strip()
    kind, sep, body = text.partition(":")
    if sep and kind in ACCOUNT_KINDS:
        name = text
    elif re.search(r"\s", text):
        # A bare NAME has no kind to delimit it, and a space in it is likelier a slip than
        # a name: a hub user whose name has spaces is written in full, ``user:NAME``.
        raise InvalidRequest(f"invalid account name {quote_input(text)}: a name with spaces needs "
                             "its kind in front, e.g. user:NAME")
    else:
        kind, body, name = "user", text, USER_PREFIX + text
    if not _NAME_BODY.fullmatch(body):
        raise InvalidRequest(f"invalid account name {quote_input(text)}: {NAME_RULE}")
    return name


def user_account(hub_name: str) -> str:
    """The account of the hub user ``hub_name``: ``user:`` + the hub name, verbatim.

    Never parsed: the hub user ``user:bob`` owns ``user:user:bob``, not bob's
    account, and ``group:x`` owns ``user:group:x``. Since the prefix is fixed,
    an account built here maps back to exactly one hub name.
    """
    if not isinstance(hub_name, str) or not _NAME_BODY.fullmatch(hub_name):
        raise InvalidRequest(f"the user name {quote_input(hub_name)} cannot have a credits "
                             f"account: {NAME_RULE}")
    return USER_PREFIX + hub_name


def account_kind(name: str) -> str:
    return name.partition(":")[0]


def request_digest(fields: dict) -> str:
    """A stable digest of a request's content, to tell a retry from a key reused by mistake."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Transfer:
    id: int
    key: str | None
    kind: str
    debit_account: str
    credit_account: str
    amount: int
    created_at: datetime
    actor: str
    reason: str
    metadata: dict | None = None
    pending_id: int | None = None
    reversal_of: int | None = None


@dataclass(frozen=True)
class TransferResult:
    transfer: Transfer
    duplicate: bool = False


@dataclass(frozen=True)
class Balance:
    account: str
    total: int
    reserved: int

    @property
    def available(self) -> int:
        return self.total - self.reserved


@dataclass
class SweepReport:
    holds_voided: list[int] = field(default_factory=list)
    lots_expired: list[int] = field(default_factory=list)
    expired_units: int = 0


@dataclass(frozen=True)
class HoldResolution:
    """One hold's part in ``Ledger.resolve_holds``: post ``amount`` (0: void it) under ``key``."""

    hold_key: str
    amount: int
    key: str


class _Duplicate(Exception):
    """Raised inside a transaction when its key is already taken, to roll it back."""


class _Raced(Exception):
    """A concurrent writer changed what a batch read; roll back and read again."""


class Ledger:
    """All money movements. Thread-safe; share one per process."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow,
                 server_functions: bool | None = None):
        """``server_functions``: on PostgreSQL, write through the ledger's server functions
        (True), or through the Python path (False); None uses them where installed."""
        self.engine = engine
        self.clock = clock
        self._dialect = engine.dialect.name
        if server_functions and self._dialect != "postgresql":
            raise InvalidRequest("the ledger's server functions exist only on PostgreSQL")
        self._server_functions = server_functions
        self._functions = functions.ServerFunctions(engine)
        # Accounts are never deleted, so their ids (and names) can be remembered.
        self._account_ids: dict[str, int] = {}
        self._account_names: dict[int, str] = {}
        # The transfer the current thread's transaction inserted, so a write
        # answers without reading its own row back in a second transaction.
        self._claimed = threading.local()

    @classmethod
    def open(cls, url: str = database.DEFAULT_URL, *, clock: Clock = utcnow, upgrade: bool = True,
             server_functions: bool | None = None, **engine_kwargs) -> "Ledger":
        engine = database.make_engine(url, **engine_kwargs)
        if upgrade:
            database.ensure_schema(engine)
        return cls(engine, clock=clock, server_functions=server_functions)

    @property
    def uses_server_functions(self) -> bool:
        """Whether writes go through the server functions (decided on first use)."""
        if self._server_functions is None:
            self._server_functions = functions.installed(self.engine)
        return self._server_functions

    def close(self) -> None:
        self._functions.close()
        self.engine.dispose()

    # --- money in and out ---------------------------------------------------

    def grant(self, account: str, amount: int, *, key: str, reason: str, actor: str,
              expires_at: datetime | None = None, metadata: dict | None = None,
              kind: str = "grant", fingerprint: dict | None = None) -> TransferResult:
        """Issue new credits to a user or group, optionally expiring at ``expires_at``."""
        if kind not in ("grant", "earn"):
            raise InvalidRequest(f"credits are issued by 'grant' or 'earn', not {kind!r}")
        name = self._owner_name(account)
        amount = _check_units(amount)
        if expires_at is not None and expires_at.tzinfo is None:
            raise InvalidRequest("expires_at must be timezone-aware")
        digest = request_digest(fingerprint or {
            "op": kind, "account": name, "amount": amount, "reason": reason,
            "expires_at": expires_at, "metadata": metadata})
        if self.uses_server_functions:
            created_at = self.clock()
            return self._call_function(
                "grant", key, digest,
                (key, digest, kind, name, account_kind(name), amount,
                 functions.timestamp(expires_at), actor or "unknown", reason or "",
                 _json(metadata), functions.timestamp(created_at),
                 functions.timestamp(created_at)),
                lambda row: Transfer(row[0], key, kind, ISSUANCE, name, amount, created_at,
                                     actor or "unknown", reason or "", metadata),
                name=name)

        created = {}

        def work(conn: Connection) -> int:
            # Created in this transaction, so a refused grant leaves no account behind.
            account_id = created["id"] = self._owner_account_id(conn, name)
            transfer_id = self._claim(conn, key, digest, kind=kind,
                                      debit=self._existing_id(conn, ISSUANCE), credit=account_id,
                                      amount=amount, actor=actor, reason=reason,
                                      metadata=metadata)
            self._credit_owner(conn, account_id, transfer_id, amount, expires_at,
                               earned=amount if kind == "earn" else 0)
            return transfer_id

        result = self._transact(key, digest, work)
        if "id" in created and not result.duplicate:  # committed: safe to remember
            self._account_ids[name] = created["id"]
            self._account_names[created["id"]] = name
        return result

    def earn(self, account: str, amount: int, *, key: str, rule: str, actor: str | None = None,
             reason: str = "", expires_at: datetime | None = None,
             metadata: dict | None = None) -> TransferResult:
        """Credits earned by an earning rule (same as a grant, recorded as ``earn``)."""
        metadata = {"rule": rule, **(metadata or {})}
        return self.grant(account, amount, key=key, reason=reason or rule,
                          actor=actor or f"rule:{rule}", expires_at=expires_at,
                          metadata=metadata, kind="earn")

    def deduct(self, account: str, amount: int, *, key: str, reason: str, actor: str,
               metadata: dict | None = None, fingerprint: dict | None = None) -> TransferResult:
        """Take credits away (back to issuance): soonest-expiring credits go first."""
        name = self._owner_name(account)
        amount = _check_units(amount)
        digest = request_digest(fingerprint or {
            "op": "deduct", "account": name, "amount": amount, "reason": reason,
            "metadata": metadata})
        if self.uses_server_functions:
            created_at = self.clock()
            return self._call_function(
                "deduct", key, digest,
                (key, digest, name, amount, actor or "unknown", reason or "", _json(metadata),
                 functions.timestamp(created_at), functions.timestamp(self.clock())),
                lambda row: Transfer(row[0], key, "deduct", name, ISSUANCE, amount, created_at,
                                     actor or "unknown", reason or "", metadata),
                name=name, amount=amount, what="debit")

        def work(conn: Connection) -> int:
            account_id = self._existing_id(conn, name)
            transfer_id = self._claim(conn, key, digest, kind="deduct", debit=account_id,
                                      credit=self._existing_id(conn, ISSUANCE), amount=amount, actor=actor,
                                      reason=reason, metadata=metadata)
            self._debit_owner(conn, name, account_id, transfer_id, amount)
            return transfer_id

        return self._transact(key, digest, work)

    # --- holds ---------------------------------------------------------------

    def hold(self, account: str, amount: int, *, key: str, actor: str, reason: str = "",
             timeout: timedelta | None = None, metadata: dict | None = None,
             fingerprint: dict | None = None) -> TransferResult:
        """Reserve credits (a pending transfer to usage), later posted or voided exactly once."""
        name = self._owner_name(account)
        amount = _check_units(amount)
        if timeout is not None and timeout <= timedelta(0):
            raise InvalidRequest("hold timeout must be positive")
        digest = request_digest(fingerprint or {
            "op": "hold", "account": name, "amount": amount, "reason": reason,
            "timeout_s": timeout.total_seconds() if timeout else None, "metadata": metadata})
        if self.uses_server_functions:
            now = self.clock()
            created_at = self.clock()
            return self._call_function(
                "hold", key, digest,
                (key, digest, name, amount, actor or "unknown", reason or "", _json(metadata),
                 functions.timestamp(now), functions.timestamp(created_at),
                 functions.timestamp(now + timeout) if timeout else None),
                lambda row: Transfer(row[0], key, "hold", name, USAGE, amount, created_at,
                                     actor or "unknown", reason or "", metadata),
                name=name, amount=amount, what="hold")

        def work(conn: Connection) -> int:
            account_id = self._existing_id(conn, name)
            now = self.clock()
            transfer_id = self._claim(conn, key, digest, kind="hold", debit=account_id,
                                      credit=self._existing_id(conn, USAGE), amount=amount, actor=actor,
                                      reason=reason, metadata=metadata)
            self._lock_account(conn, account_id)
            spendable = self._spendable_lots(conn, account_id, now)
            _require_funds(name, spendable, amount, "hold")
            conn.execute(insert(holds).values(
                transfer_id=transfer_id, account_id=account_id, amount=amount, state="pending",
                posted=0, timeout_at=now + timeout if timeout else None))
            allocations = []
            for lot_id, take in _draw(spendable, amount):
                conn.execute(update(lots).where(lots.c.id == lot_id)
                             .values(reserved=lots.c.reserved + take))
                allocations.append({"hold_id": transfer_id, "lot_id": lot_id, "amount": take})
            conn.execute(insert(hold_lots), allocations)
            conn.execute(update(accounts).where(accounts.c.id == account_id)
                         .values(reserved=accounts.c.reserved + amount))
            return transfer_id

        return self._transact(key, digest, work)

    def post(self, hold_key: str, amount: int | None = None, *, key: str, actor: str,
             reason: str = "", metadata: dict | None = None,
             fingerprint: dict | None = None) -> TransferResult:
        """Settle a hold: move ``amount`` (all of it when None) and release the rest, once."""
        if amount is not None:
            amount = _check_units(amount)
        digest = request_digest(fingerprint or {
            "op": "post", "hold": hold_key, "amount": amount, "reason": reason,
            "metadata": metadata})
        if self.uses_server_functions:
            now = self.clock()
            created_at = self.clock()
            return self._call_function(
                "post", key, digest,
                (key, digest, hold_key, amount, actor or "unknown", reason or "",
                 _json(metadata), functions.timestamp(now), functions.timestamp(created_at)),
                lambda row: Transfer(row[0], key, "post", row[1], row[2], int(row[3]),
                                     created_at, actor or "unknown", reason or "", metadata,
                                     pending_id=row[4]),
                hold_key=hold_key, amount=amount)

        def work(conn: Connection) -> int:
            hold = self._find_hold(conn, hold_key)
            posted = hold["amount"] if amount is None else amount
            if posted > hold["amount"]:
                raise InvalidRequest(
                    f"cannot post {posted} units: hold {hold_key!r} reserves only {hold['amount']}")
            now = self.clock()
            transfer_id = self._claim(conn, key, digest, kind="post", debit=hold["debit"],
                                      credit=hold["credit"], amount=posted, actor=actor,
                                      reason=reason, metadata=metadata, pending_id=hold["id"])
            self._resolve_hold(conn, hold, "posted", posted, now)
            self._lock_account(conn, hold["debit"])
            self._release_hold_lots(conn, hold, posted, transfer_id, actor)
            conn.execute(update(accounts).where(accounts.c.id == hold["debit"]).values(
                balance=accounts.c.balance - posted, reserved=accounts.c.reserved - hold["amount"],
                **_total_changes(spent=posted)))
            return transfer_id

        return self._transact(key, digest, work)

    def void(self, hold_key: str, *, key: str, actor: str, reason: str = "",
             metadata: dict | None = None, fingerprint: dict | None = None) -> TransferResult:
        """Release a hold without moving anything, once."""
        return self._void(hold_key, key=key, actor=actor, reason=reason, metadata=metadata,
                          fingerprint=fingerprint)

    def _void(self, hold_key: str, *, key: str, actor: str, reason: str, metadata: dict | None,
              fingerprint: dict | None, system: bool = False,
              timed_out_by: datetime | None = None) -> TransferResult:
        digest = request_digest(fingerprint or {
            "op": "void", "hold": hold_key, "reason": reason, "metadata": metadata})
        if self.uses_server_functions:
            created_at = self.clock()
            return self._call_function(
                "void", key, digest,
                (key, digest, hold_key, actor or "unknown", reason or "", _json(metadata),
                 functions.timestamp(created_at), functions.timestamp(self.clock()),
                 functions.timestamp(timed_out_by)),
                lambda row: Transfer(row[0], key, "void", row[1], row[2], int(row[3]),
                                     created_at, actor or "unknown", reason or "", metadata,
                                     pending_id=row[4]),
                hold_key=hold_key, timed_out_by=timed_out_by, system=system)

        def work(conn: Connection) -> int:
            hold = self._find_hold(conn, hold_key)
            return self._void_hold(conn, hold, key, digest, actor, reason, metadata,
                                   timed_out_by=timed_out_by)

        return self._transact(key, digest, work, system=system)

    def resolve_holds(self, resolutions: Sequence[HoldResolution], *, actor: str,
                     reason: str = "", metadata: dict | None = None
                     ) -> list[TransferResult | None]:
        """Post or void many holds in ONE transaction (e.g. all the holds of a session).

        Each hold is still resolved exactly once by its own post or void transfer,
        under its own idempotency key and recorded exactly as ``post`` / ``void``
        record it (same request digests), so a retry — or a session's settlement
        begun hold by hold — changes nothing. The answer has one entry per resolution, in
        order: None for a hold that is unknown or was resolved under another key
        meanwhile (e.g. voided by the sweep), so nothing was taken from it.
        One transaction instead of one per hold: a session extended many times
        settles in about the time of one post, not one per extension.
        """
        items = list(resolutions)
        if not items:
            return []
        digests = []
        for item in items:
            _check_key(item.key)
            if item.amount:
                _check_units(item.amount)
                request = {"op": "post", "hold": item.hold_key, "amount": item.amount}
            else:
                request = {"op": "void", "hold": item.hold_key}
            digests.append(request_digest({**request, "reason": reason, "metadata": metadata}))

        def work(conn: Connection) -> list[TransferResult | None]:
            already = {row.key: row for row in conn.execute(
                _transfer_query().add_columns(transfers.c.request_hash)
                .where(transfers.c.key.in_({item.key for item in items})))}
            found = {row.key: row for row in conn.execute(
                select(transfers.c.id, transfers.c.key, transfers.c.kind,
                       transfers.c.debit_account_id, transfers.c.credit_account_id,
                       transfers.c.amount, holds.c.state)
                .outerjoin(holds, holds.c.transfer_id == transfers.c.id)
                .where(transfers.c.key.in_({item.hold_key for item in items})))}
            now = self.clock()
            answers: list = []
            resolved = []  # (hold, posted, transfer id)
            # Keys, then holds, then accounts: the ledger's one lock order.
            for item, digest in zip(items, digests):
                row = already.get(item.key)
                if row is not None:
                    if row.request_hash != digest:
                        raise IdempotencyConflict(
                            f"idempotency key {item.key!r} was already used for a different "
                            f"request (transfer {row.id}, {row.kind})")
                    answers.append(TransferResult(_transfer(row), duplicate=True))
                    continue
                hold_row = found.get(item.hold_key)
                if hold_row is None or hold_row.state != "pending":
                    answers.append(None)
                    continue
                if hold_row.kind != "hold":  # pragma: no cover - only holds have a state
                    raise InvalidRequest(f"transfer {item.hold_key!r} is not a hold")
                if item.amount > hold_row.amount:
                    raise InvalidRequest(f"cannot post {item.amount} units: hold "
                                         f"{item.hold_key!r} reserves only {hold_row.amount}")
                hold = {"id": hold_row.id, "key": item.hold_key,
                        "debit": hold_row.debit_account_id,
                        "credit": hold_row.credit_account_id, "amount": hold_row.amount}
                transfer_id = self._insert_transfer(
                    conn, item.key, digest, kind="post" if item.amount else "void",
                    debit=hold["debit"], credit=hold["credit"],
                    amount=item.amount or hold["amount"], actor=actor, reason=reason,
                    metadata=metadata, pending_id=hold["id"], created_at=now)
                if transfer_id is None or not self._resolve_if_pending(
                        conn, hold, "posted" if item.amount else "voided", item.amount, now):
                    raise _Raced()  # a concurrent writer got there between our read and now
                resolved.append((hold, item.amount, transfer_id))
                answers.append(transfer_id)
            debits = sorted({hold["debit"] for hold, _, _ in resolved})
            for account_id in debits:
                self._lock_account(conn, account_id)
            for hold, posted, transfer_id in resolved:
                self._release_hold_lots(conn, hold, posted, transfer_id, actor)
            for account_id in debits:
                mine = [(hold, posted) for hold, posted, _ in resolved
                        if hold["debit"] == account_id]
                spent = sum(posted for _, posted in mine)
                conn.execute(update(accounts).where(accounts.c.id == account_id).values(
                    balance=accounts.c.balance - spent,
                    reserved=accounts.c.reserved - sum(hold["amount"] for hold, _ in mine),
                    **_total_changes(spent=spent)))
            created = {row.id: _transfer(row) for row in conn.execute(
                _transfer_query().where(transfers.c.id.in_(
                    [answer for answer in answers if isinstance(answer, int)])))}
            return [TransferResult(created[answer]) if isinstance(answer, int) else answer
                    for answer in answers]

        for _ in range(3):
            try:
                return database.run_with_retries(self.engine, work)
            except (_Raced, IntegrityError):
                continue  # read again: the next attempt sees what the other writer did
        raise IdempotencyConflict("could not resolve these holds: concurrent conflicting requests")

    def postpone_timeouts(self, hold_keys: Sequence[str], until: datetime, *,
                          connection: Connection | None = None) -> int:
        """Move the timeout of these pending holds to ``until``, where it was earlier; how many.

        A hold's timeout is only when the sweep may void it: whoever still needs
        a hold (a session extended past what its first holds paid for) moves it
        later. Nothing of the hold's transfer changes, a timeout never moves
        earlier, and a hold without one keeps none. With ``connection`` it runs
        in the caller's transaction, so the move commits with what made it needed.
        """
        if until.tzinfo is None:
            raise InvalidRequest("until must be timezone-aware")
        keys = list(hold_keys)
        if not keys:
            return 0
        statement = (
            update(holds)
            .where(holds.c.transfer_id.in_(select(transfers.c.id)
                                           .where(transfers.c.key.in_(keys))),
                   holds.c.state == "pending", holds.c.timeout_at < until)
            .values(timeout_at=until))
        if connection is not None:
            return connection.execute(statement).rowcount
        return database.run_with_retries(
            self.engine, lambda conn: conn.execute(statement).rowcount)

    # --- corrections ----------------------------------------------------------

    def reverse(self, transfer: int | str, *, key: str, reason: str, actor: str,
                metadata: dict | None = None, fingerprint: dict | None = None) -> TransferResult:
        """Undo a transfer with a new one in the opposite direction (each transfer once).

        What the reversal moves depends on what is undone:

        - ``grant`` / ``earn`` (credits given to a user or group): what is still free
          in the lot that transfer created, and never anything of the owner's other
          lots. Credits of that lot already spent stay spent, those already expired
          stay expired, and those a pending hold reserves stay with the hold (a
          running session pays with them; if the hold is voided they return to the
          owner, who keeps them). A lot past its expiry that the sweep has not yet
          expired still has its remainder: the reversal takes it. So the reversal's
          amount is at most the original's; when nothing is free it is refused
          (``NotReversible``, saying how much expired, was spent or is reserved) —
          to take credits from the owner's other lots, deduct.
        - ``deduct`` / ``post`` (credits taken from an owner): the whole amount comes
          back, as a new lot that never expires.
        - ``expire`` is refused: credits given back as a lot without expiry would
          last for ever; grant them again, with an expiry, instead.
        - ``hold``, ``void`` and ``reverse`` are refused (void a hold; place a new one;
          grant or deduct again).

        A transfer is reversed at most once (a new key for it is refused), and a
        reversal never overdraws: from an owner it takes only free credits of one lot.
        """
        digest = request_digest(fingerprint or {
            "op": "reverse", "transfer": transfer, "reason": reason, "metadata": metadata})

        def work(conn: Connection) -> int:
            # A replay answers as a duplicate even though the transfer is now reversed.
            if conn.execute(select(transfers.c.id).where(transfers.c.key == key)).first():
                raise _Duplicate()
            original = self._find_transfer(conn, transfer)
            if original.kind == "hold":
                raise NotReversible(f"transfer {original.id} is a hold: release it with void")
            if original.kind == "void":
                raise NotReversible(f"transfer {original.id} is a void: place a new hold instead")
            if original.kind == "reverse":
                raise NotReversible(
                    f"transfer {original.id} is itself a reversal: grant or deduct again instead")
            if original.kind == "expire":
                raise NotReversible(
                    f"transfer {original.id} expired credits: reversing it would give them back "
                    "without an expiry; grant them again (with an expiry) instead")
            earlier = conn.execute(select(transfers.c.id, transfers.c.key).where(
                transfers.c.reversal_of == original.id)).first()
            if earlier is not None:
                if earlier.key == key:  # the same request, committed a moment ago
                    raise _Duplicate()
                raise NotReversible(
                    f"transfer {original.id} was already reversed by transfer {earlier.id}")
            amount, own_lot = original.amount, None
            debit_id = self._existing_id(conn, original.credit_account)
            if account_kind(original.credit_account) in OWNER_KINDS:
                # The owner is locked before its lot is read, so what the lot holds cannot
                # change before the reversal takes it (under contention a read-then-recheck
                # could lose every retry). Owner before key is safe here: the only writer
                # that waits on this key is the same reversal, which takes the owner first too.
                self._lock_account(conn, debit_id)
                own_lot, amount = conn.execute(
                    select(lots.c.id, lots.c.remaining - lots.c.reserved)
                    .where(lots.c.transfer_id == original.id)).one()
                if amount <= 0:
                    # Each statement sees what committed before it (READ COMMITTED): the
                    # lot may be empty because this very request, sent twice, just
                    # reversed it. That is a duplicate, not a refusal.
                    if conn.execute(select(transfers.c.id).where(transfers.c.key == key)).first():
                        raise _Duplicate()
                    raise NotReversible(self._nothing_left(conn, original, own_lot))
            credit_id = self._existing_id(conn, original.debit_account)
            transfer_id = self._claim(conn, key, digest, kind="reverse", debit=debit_id,
                                      credit=credit_id, amount=amount, actor=actor,
                                      reason=reason, metadata=metadata, reversal_of=original.id)
            # The owner's lifetime totals forget what is undone: an earn's reversal takes
            # back what it takes from the earned total, a post's gives back the spending.
            if own_lot is not None:
                # Free units of one lot (the reversed grant's own), read under the lock.
                self._take_from_lots(conn, debit_id, transfer_id, [(own_lot, amount)],
                                     earned=-amount if original.kind == "earn" else 0)
            if account_kind(original.debit_account) in OWNER_KINDS:
                self._credit_owner(conn, credit_id, transfer_id, amount, None,
                                   spent=-amount if original.kind == "post" else 0)
            return transfer_id

        return self._transact(key, digest, work)


    def _nothing_left(self, conn: Connection, original: Transfer, lot_id: int) -> str:
        """Why a grant's lot has nothing to take back: how much expired, was spent, is held."""
        from .amounts import format_exact

        reserved = conn.execute(select(lots.c.reserved).where(lots.c.id == lot_id)).scalar_one()
        expired = conn.execute(
            select(func.coalesce(func.sum(lot_movements.c.amount), 0))
            .join(transfers, transfers.c.id == lot_movements.c.transfer_id)
            .where(lot_movements.c.lot_id == lot_id, transfers.c.kind == "expire")).scalar()
        spent = original.amount - int(expired) - int(reserved)
        return (f"nothing is left to take back of transfer {original.id} "
                f"({format_exact(original.amount)} credits): {format_exact(int(expired))} "
                f"expired, {format_exact(spent)} were spent, {format_exact(int(reserved))} are "
                "reserved by pending holds; to take credits from the account's other lots, "
                "deduct")

    # --- the sweep --------------------------------------------------------------

    def sweep(self, *, actor: str = "system:sweep") -> SweepReport:
        """Void holds past their timeout, then expire the unreserved remainder of lapsed lots.

        Each item is its own small transaction with a key derived from what it
        resolves, so concurrent sweeps (or a sweep racing a post) resolve it once.
        """
        report = SweepReport()
        now = self.clock()
        with database.read_transaction(self.engine) as conn:
            timed_out = conn.execute(
                select(transfers.c.id, transfers.c.key)
                .join(holds, holds.c.transfer_id == transfers.c.id)
                .where(holds.c.state == "pending", holds.c.timeout_at <= now)
                .order_by(holds.c.transfer_id)
            ).all()
        for hold_id, hold_key in timed_out:
            try:
                # Checked again as it voids: the timeout may have moved since it was read.
                result = self._void(hold_key, key=f"{SWEEP_TIMEOUT_PREFIX}hold-{hold_id}",
                                    actor=actor, reason="hold timed out", metadata=None,
                                    fingerprint=None, system=True, timed_out_by=now)
            except HoldNotPending:
                continue  # posted or voided meanwhile: nothing to do
            if not result.duplicate:
                report.holds_voided.append(result.transfer.pending_id)

        with database.read_transaction(self.engine) as conn:
            lapsed = conn.execute(
                select(lots.c.id).where(lots.c.expires_at <= now,
                                        lots.c.remaining > lots.c.reserved)
                .order_by(lots.c.expires_at, lots.c.id)
            ).scalars().all()
        for lot_id in lapsed:
            expired = database.run_with_retries(
                self.engine, lambda conn, lot_id=lot_id: self._expire_lot(conn, lot_id, now, actor))
            if expired:
                report.lots_expired.append(lot_id)
                report.expired_units += expired
        return report

    # --- reading ------------------------------------------------------------------

    def available(self, account: str) -> int:
        """Units ``account`` can spend now; 0 for an account that has never had a transfer.

        Only an unknown account reads as 0: any other failure (a bad name, the
        database unreachable) is raised, so that nobody is refused "for lack of
        credits" when the truth is that the ledger could not be read.
        """
        try:
            return self.balance(account).available
        except UnknownAccount:
            return 0

    def balance(self, account: str) -> Balance:
        name = account_name(account)
        with database.read_transaction(self.engine) as conn:
            row = conn.execute(select(accounts.c.id, accounts.c.kind, accounts.c.balance,
                                      accounts.c.reserved).where(accounts.c.name == name)).first()
            if row is None:
                raise UnknownAccount(name)
            if row.kind == "system":
                return Balance(name, _system_balance(conn, row.id), 0)
            # Lapsed credits not yet swept are no longer spendable: do not show them.
            lapsed = conn.execute(
                select(func.coalesce(func.sum(lots.c.remaining - lots.c.reserved), 0))
                .where(lots.c.account_id == row.id, lots.c.expires_at <= self.clock(),
                       lots.c.remaining > lots.c.reserved)
            ).scalar()
            return Balance(name, row.balance - int(lapsed), row.reserved)

    def history(self, account: str, *, limit: int = 50) -> list[Transfer]:
        """Transfers touching ``account``, newest first."""
        name = account_name(account)
        if limit < 1:
            raise InvalidRequest("limit must be at least 1")
        with database.read_transaction(self.engine) as conn:
            account_id = self._existing_id(conn, name)
            query = (_transfer_query()
                     .where(or_(transfers.c.debit_account_id == account_id,
                                transfers.c.credit_account_id == account_id))
                     .order_by(transfers.c.id.desc()).limit(limit))
            return [_transfer(row) for row in conn.execute(query)]

    def transfers(self, *, since: datetime | None = None, until: datetime | None = None,
                  batch: int = 1000) -> Iterator[Transfer]:
        """Every transfer in order of id (the audit log), optionally made at or after ``since``
        and before ``until``; streamed ``batch`` rows at a time from one snapshot."""
        query = _transfer_query().order_by(transfers.c.id)
        if since is not None:
            query = query.where(transfers.c.created_at >= since)
        if until is not None:
            query = query.where(transfers.c.created_at < until)
        with database.read_transaction(self.engine) as conn:
            result = conn.execution_options(yield_per=batch).execute(query)
            for row in result:
                yield _transfer(row)

    def get_transfer(self, ref: int | str) -> Transfer:
        with database.read_transaction(self.engine) as conn:
            return self._find_transfer(conn, ref)

    def account_names(self) -> list[str]:
        with database.read_transaction(self.engine) as conn:
            return conn.execute(select(accounts.c.name).order_by(accounts.c.id)).scalars().all()

    # --- internals ------------------------------------------------------------------

    def _transact(self, key: str, digest: str, work: Callable[[Connection], int], *,
                  system: bool = False) -> TransferResult:
        _check_key(key, system=system)
        for _ in range(3):
            self._claimed.transfer = None
            try:
                transfer_id = database.run_with_retries(self.engine, work)
            except _Duplicate:
                return self._existing_result(key, digest)
            except IntegrityError:
                # A concurrent writer took this key (or reversed the same transfer) first:
                # look again from the start, which then sees what it did.
                if self._key_taken(key):
                    return self._existing_result(key, digest)
                continue
            claimed = self._claimed.transfer
            if claimed is None or claimed.id != transfer_id:  # pragma: no cover - defensive
                claimed = self.get_transfer(transfer_id)
            return TransferResult(claimed, duplicate=False)
        raise IdempotencyConflict(f"could not apply {key!r}: concurrent conflicting requests")

    def _call_function(self, operation: str, key: str, digest: str, params: tuple,
                       build: Callable[[tuple], Transfer], *, system: bool = False,
                       **context) -> TransferResult:
        """The server-function path of a write: what ``_transact`` is to the Python path."""
        _check_key(key, system=system)
        hold_key = context.get("hold_key")
        if "hold_key" in context and (not isinstance(hold_key, str) or not hold_key):
            raise InvalidRequest("hold must be the idempotency key of a hold")
        for _ in range(3):
            try:
                row = self._functions.call(operation, params)
            except functions.Refused as refused:
                if refused.code == functions.KEY_TAKEN:
                    return self._existing_result(key, digest)
                if refused.code == functions.UNIQUE_VIOLATION:
                    # As in _transact: a concurrent writer got there first; look again.
                    if self._key_taken(key):
                        return self._existing_result(key, digest)
                    continue
                raise _refusal(refused, **context) from None
            return TransferResult(build(row), duplicate=False)
        raise IdempotencyConflict(f"could not apply {key!r}: concurrent conflicting requests")

    def _key_taken(self, key: str) -> bool:
        with database.read_transaction(self.engine) as conn:
            return conn.execute(select(transfers.c.id).where(transfers.c.key == key)).first() \
                is not None

    def _existing_result(self, key: str, digest: str) -> TransferResult:
        with database.read_transaction(self.engine) as conn:
            row = conn.execute(_transfer_query().add_columns(transfers.c.request_hash)
                               .where(transfers.c.key == key)).first()
        if row is None:  # pragma: no cover - the key was seen taken a moment ago
            raise IdempotencyConflict(f"idempotency key {key!r} vanished")
        if row.request_hash != digest:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was already used for a different request "
                f"(transfer {row.id}, {row.kind})")
        return TransferResult(_transfer(row), duplicate=True)

    def _claim(self, conn: Connection, key: str, digest: str, **row) -> int:
        """Insert the transfer under its key, or roll back as a duplicate if the key is taken."""
        created_at = self.clock()
        transfer_id = self._insert_transfer(conn, key, digest, created_at=created_at, **row)
        if transfer_id is None:
            raise _Duplicate()
        self._claimed.transfer = Transfer(
            id=transfer_id, key=key, kind=row["kind"],
            debit_account=self._name_of(conn, row["debit"]),
            credit_account=self._name_of(conn, row["credit"]), amount=row["amount"],
            created_at=created_at, actor=row["actor"] or "unknown", reason=row["reason"] or "",
            metadata=row["metadata"], pending_id=row.get("pending_id"),
            reversal_of=row.get("reversal_of"))
        return transfer_id

    def _insert_transfer(self, conn: Connection, key, digest, *, kind, debit, credit, amount,
                         actor, reason, metadata, pending_id=None, reversal_of=None,
                         created_at=None) -> int | None:
        values = dict(key=key, request_hash=digest, kind=kind, debit_account_id=debit,
                      credit_account_id=credit, amount=amount,
                      created_at=created_at or self.clock(),
                      actor=actor or "unknown", reason=reason or "", metadata=metadata,
                      pending_id=pending_id, reversal_of=reversal_of)
        if key is None:
            return conn.execute(insert(transfers).values(values).returning(transfers.c.id)).scalar()
        dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        statement = (dialect_insert(transfers).values(values)
                     .on_conflict_do_nothing(index_elements=[transfers.c.key])
                     .returning(transfers.c.id))
        return conn.execute(statement).scalar()

    def _owner_name(self, account: str) -> str:
        name = account_name(account)
        if account_kind(name) not in OWNER_KINDS:
            raise InvalidRequest(f"{name} is a system account: only user and group accounts "
                                 "hold credits")
        return name

    def _owner_account_id(self, conn: Connection, name: str) -> int:
        """The id of an owner account, created in this transaction if it is new.

        Only ids read outside a creating transaction are cached: a rolled-back
        creation must not leave a remembered id behind.
        """
        cached = self._account_ids.get(name)
        if cached is not None:
            return cached
        dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        conn.execute(dialect_insert(accounts).values(
            name=name, kind=account_kind(name), balance=0, reserved=0,
            created_at=self.clock()).on_conflict_do_nothing(index_elements=[accounts.c.name]))
        return conn.execute(select(accounts.c.id).where(accounts.c.name == name)).scalar_one()

    def _existing_id(self, conn: Connection, name: str) -> int:
        cached = self._account_ids.get(name)
        if cached is not None:
            return cached
        account_id = conn.execute(select(accounts.c.id).where(accounts.c.name == name)).scalar()
        if account_id is None:
            raise UnknownAccount(name)
        self._account_ids[name] = account_id
        self._account_names[account_id] = name
        return account_id

    def _name_of(self, conn: Connection, account_id: int) -> str:
        name = self._account_names.get(account_id)
        if name is None:
            name = conn.execute(select(accounts.c.name).where(accounts.c.id == account_id)
                                ).scalar_one()
            # Not cached here: the row may be this transaction's own, not yet committed.
        return name

    def _lock_account(self, conn: Connection, account_id: int) -> None:
        # FOR NO KEY UPDATE: does not conflict with the key-share locks that
        # foreign-key checks on new transfer rows take on the same account.
        conn.execute(select(accounts.c.id).where(accounts.c.id == account_id)
                     .with_for_update(key_share=True))

    def _spendable_lots(self, conn: Connection, account_id: int, now: datetime,
                        prefer_lot: int | None = None) -> list[tuple[int, int]]:
        """(lot id, free units) soonest-expiring first; a lapsed lot only when preferred."""
        live = or_(lots.c.expires_at.is_(None), lots.c.expires_at > now)
        if prefer_lot is not None:
            live = or_(live, lots.c.id == prefer_lot)
        order = [*_expiry_order(), lots.c.id]
        if prefer_lot is not None:
            order.insert(0, case((lots.c.id == prefer_lot, 0), else_=1))
        rows = conn.execute(
            select(lots.c.id, lots.c.remaining - lots.c.reserved)
            .where(lots.c.account_id == account_id, lots.c.remaining > lots.c.reserved, live)
            .order_by(*order)
        ).all()
        return [(lot_id, int(free)) for lot_id, free in rows]

    def _credit_owner(self, conn: Connection, account_id: int, transfer_id: int, amount: int,
                      expires_at: datetime | None, *, earned: int = 0, spent: int = 0) -> None:
        """A new lot of ``amount``; the balance and lifetime totals change in the same UPDATE."""
        conn.execute(insert(lots).values(account_id=account_id, transfer_id=transfer_id,
                                         amount=amount, remaining=amount, reserved=0,
                                         expires_at=expires_at))
        conn.execute(update(accounts).where(accounts.c.id == account_id)
                     .values(balance=accounts.c.balance + amount,
                             **_total_changes(earned=earned, spent=spent)))

    def _debit_owner(self, conn: Connection, name: str, account_id: int, transfer_id: int,
                     amount: int, prefer_lot: int | None = None) -> None:
        self._lock_account(conn, account_id)
        spendable = self._spendable_lots(conn, account_id, self.clock(), prefer_lot)
        _require_funds(name, spendable, amount, "debit")
        self._take_from_lots(conn, account_id, transfer_id, list(_draw(spendable, amount)))

    def _take_from_lots(self, conn: Connection, account_id: int, transfer_id: int,
                        draws: list[tuple[int, int]], *, earned: int = 0) -> None:
        """Take ``(lot id, units)`` out of an owner's lots, one movement each, and its balance
        (with ``earned``, the change to its lifetime earned total, in the same UPDATE)."""
        for lot_id, take in draws:
            conn.execute(update(lots).where(lots.c.id == lot_id)
                         .values(remaining=lots.c.remaining - take))
        conn.execute(insert(lot_movements), [
            {"lot_id": lot_id, "transfer_id": transfer_id, "amount": take}
            for lot_id, take in draws])
        conn.execute(update(accounts).where(accounts.c.id == account_id)
                     .values(balance=accounts.c.balance - sum(take for _, take in draws),
                             **_total_changes(earned=earned)))

    def _find_transfer(self, conn: Connection, ref: int | str) -> Transfer:
        if isinstance(ref, bool):
            raise InvalidRequest(f"invalid transfer reference {ref!r}")
        if isinstance(ref, int):
            condition = transfers.c.id == ref
        elif isinstance(ref, str) and ref:
            condition = transfers.c.key == ref
        else:
            raise InvalidRequest(f"invalid transfer reference {ref!r}")
        row = conn.execute(_transfer_query().where(condition)).first()
        if row is None:
            raise UnknownTransfer(f"unknown transfer: {ref}")
        return _transfer(row)

    def _find_hold(self, conn: Connection, hold_key: str) -> dict:
        if not isinstance(hold_key, str) or not hold_key:
            raise InvalidRequest("hold must be the idempotency key of a hold")
        row = conn.execute(
            select(transfers.c.id, transfers.c.kind, transfers.c.debit_account_id,
                   transfers.c.credit_account_id, transfers.c.amount)
            .where(transfers.c.key == hold_key)).first()
        if row is None:
            raise UnknownTransfer(f"unknown hold: {hold_key}")
        if row.kind != "hold":
            raise InvalidRequest(f"transfer {hold_key!r} is a {row.kind}, not a hold")
        return {"id": row.id, "key": hold_key, "debit": row.debit_account_id,
                "credit": row.credit_account_id, "amount": row.amount}

    def _resolve_hold(self, conn: Connection, hold: dict, state: str, posted: int,
                      now: datetime, timed_out_by: datetime | None = None) -> None:
        """Mark the hold resolved, atomically and only if it is still pending.

        With ``timed_out_by`` (the sweep) only if its timeout is still at or before then.
        """
        if not self._resolve_if_pending(conn, hold, state, posted, now, timed_out_by):
            state_now = conn.execute(select(holds.c.state).where(
                holds.c.transfer_id == hold["id"])).scalar()
            if state_now == "pending":
                raise HoldNotPending(f"hold {hold['key']!r} no longer times out by "
                                     f"{timed_out_by.isoformat()}")
            raise HoldNotPending(f"hold {hold['key']!r} was already {state_now}")

    def _resolve_if_pending(self, conn: Connection, hold: dict, state: str, posted: int,
                            now: datetime, timed_out_by: datetime | None = None) -> bool:
        still = [holds.c.transfer_id == hold["id"], holds.c.state == "pending"]
        if timed_out_by is not None:
            still.append(holds.c.timeout_at <= timed_out_by)
        result = conn.execute(update(holds).where(*still)
                              .values(state=state, posted=posted, resolved_at=now))
        return result.rowcount == 1

    def _release_hold_lots(self, conn: Connection, hold: dict, posted: int, transfer_id: int,
                           actor: str) -> None:
        """Unreserve a resolved hold's lots, taking ``posted`` from them soonest-expiring first.

        A partial post voids the unposted remainder in the same breath (one
        resolution); the caller locks the account and updates its totals.
        """
        rows = conn.execute(
            select(hold_lots.c.lot_id, hold_lots.c.amount)
            .join(lots, lots.c.id == hold_lots.c.lot_id)
            .where(hold_lots.c.hold_id == hold["id"])
            .order_by(*_expiry_order(), lots.c.id)
        ).all()
        left = posted
        for lot_id, reserved in rows:
            take = min(left, reserved)
            left -= take
            conn.execute(update(lots).where(lots.c.id == lot_id).values(
                remaining=lots.c.remaining - take, reserved=lots.c.reserved - reserved))
            if take:
                conn.execute(insert(lot_movements).values(
                    lot_id=lot_id, transfer_id=transfer_id, amount=take))
        if 0 < posted < hold["amount"]:
            self._insert_transfer(conn, None, None, kind="void", debit=hold["debit"],
                                  credit=hold["credit"], amount=hold["amount"] - posted,
                                  actor=actor, reason="remainder of partial post",
                                  metadata=None, pending_id=hold["id"])

    def _void_hold(self, conn: Connection, hold: dict, key: str, digest: str, actor: str,
                   reason: str, metadata: dict | None,
                   timed_out_by: datetime | None = None) -> int:
        transfer_id = self._claim(conn, key, digest, kind="void", debit=hold["debit"],
                                  credit=hold["credit"], amount=hold["amount"], actor=actor,
                                  reason=reason, metadata=metadata, pending_id=hold["id"])
        self._resolve_hold(conn, hold, "voided", 0, self.clock(), timed_out_by)
        self._lock_account(conn, hold["debit"])
        rows = conn.execute(select(hold_lots.c.lot_id, hold_lots.c.amount)
                            .where(hold_lots.c.hold_id == hold["id"])
                            .order_by(hold_lots.c.lot_id)).all()
        for lot_id, reserved in rows:
            conn.execute(update(lots).where(lots.c.id == lot_id)
                         .values(reserved=lots.c.reserved - reserved))
        conn.execute(update(accounts).where(accounts.c.id == hold["debit"])
                     .values(reserved=accounts.c.reserved - hold["amount"]))
        return transfer_id

    def _expire_lot(self, conn: Connection, lot_id: int, now: datetime, actor: str) -> int:
        account_id = conn.execute(select(lots.c.account_id).where(lots.c.id == lot_id)).scalar()
        self._lock_account(conn, account_id)
        # Read after taking the account's lock, which guards all its lots.
        lot = conn.execute(select(lots.c.remaining, lots.c.reserved, lots.c.expires_at)
                           .where(lots.c.id == lot_id)).one()
        amount = lot.remaining - lot.reserved
        if amount <= 0 or lot.expires_at is None or lot.expires_at > now:
            return 0
        # The remainder only ever shrinks, so (lot, remainder) names this expiry uniquely.
        key = f"{SWEEP_EXPIRE_PREFIX}lot-{lot_id}:{lot.remaining}"
        transfer_id = self._insert_transfer(
            conn, key, request_digest({"op": "expire", "lot": lot_id, "remaining": lot.remaining}),
            kind="expire", debit=account_id, credit=self._existing_id(conn, EXPIRED), amount=amount,
            actor=actor, reason="credits expired", metadata={"lot": lot_id})
        if transfer_id is None:
            return 0
        self._take_from_lots(conn, account_id, transfer_id, [(lot_id, amount)])
        return amount


# --- small pure helpers ----------------------------------------------------------------


def _check_units(amount: Any) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmount(f"amount must be an integer number of units, not {amount!r}")
    if amount <= 0:
        raise InvalidAmount(f"amount must be greater than zero, not {amount}")
    if amount > MAX_UNITS:
        raise InvalidAmount(f"amount {amount} exceeds the largest single amount ({MAX_UNITS})")
    return amount


def _check_key(key: Any, *, system: bool = False) -> None:
    if not isinstance(key, str) or not key.strip():
        raise InvalidRequest("every transfer needs an idempotency key (a non-empty string)")
    if len(key) > _MAX_KEY_LENGTH:
        raise InvalidRequest(f"idempotency key longer than {_MAX_KEY_LENGTH} characters")
    if "\x00" in key:  # PostgreSQL cannot store it in text
        raise InvalidRequest("idempotency keys must not contain NUL characters")
    if not system and key.startswith(RESERVED_KEY_PREFIXES):
        raise InvalidRequest(f"idempotency keys starting with {' or '.join(RESERVED_KEY_PREFIXES)}"
                             " are reserved for the ledger's sweep")


def _require_funds(name: str, spendable: list[tuple[int, int]], amount: int, what: str) -> None:
    available = sum(free for _, free in spendable)
    if available < amount:
        raise _insufficient(name, available, amount, what)


def _insufficient(name: str, available: int, amount: int, what: str) -> InsufficientFunds:
    from .amounts import format_exact

    return InsufficientFunds(
        f"insufficient funds: {name} has {format_exact(available)} credits available, "
        f"{format_exact(amount)} needed for this {what}")


def _refusal(refused: functions.Refused, *, name: str | None = None, amount: int | None = None,
             what: str | None = None, hold_key: str | None = None,
             timed_out_by: datetime | None = None):
    """The exception the Python path raises for what a server function refused."""
    code, detail = refused.code, refused.detail
    if code == functions.UNKNOWN_ACCOUNT:
        return UnknownAccount(name)
    if code == functions.INSUFFICIENT_FUNDS:
        return _insufficient(name, int(detail), amount, what)
    if code == functions.UNKNOWN_HOLD:
        return UnknownTransfer(f"unknown hold: {hold_key}")
    if code == functions.NOT_A_HOLD:
        return InvalidRequest(f"transfer {hold_key!r} is a {detail}, not a hold")
    if code == functions.POST_EXCEEDS_HOLD:
        return InvalidRequest(
            f"cannot post {amount} units: hold {hold_key!r} reserves only {detail}")
    if code == functions.HOLD_NOT_PENDING:
        if detail == "pending":
            return HoldNotPending(f"hold {hold_key!r} no longer times out by "
                                  f"{timed_out_by.isoformat()}")
        return HoldNotPending(f"hold {hold_key!r} was already {detail}")
    raise AssertionError(f"unknown ledger SQLSTATE {code}")  # pragma: no cover


def _json(value: Any) -> str | None:
    """A JSON column's value as SQLAlchemy's JSON type writes it (None: SQL NULL)."""
    return None if value is None else json.dumps(value)


def _draw(spendable: list[tuple[int, int]], amount: int) -> Iterator[tuple[int, int]]:
    """Take ``amount`` from lots in the order given: (lot id, units taken)."""
    left = amount
    for lot_id, free in spendable:
        if left == 0:
            break
        take = min(free, left)
        left -= take
        yield lot_id, take


def _total_changes(*, earned: int = 0, spent: int = 0) -> dict:
    """UPDATE values moving an owner's lifetime totals (``lifetime_earned``: earns less their
    reversals; ``lifetime_spent``: posts less theirs), for the statement that moves its balance."""
    values = {}
    if earned:
        values["lifetime_earned"] = accounts.c.lifetime_earned + earned
    if spent:
        values["lifetime_spent"] = accounts.c.lifetime_spent + spent
    return values


def _expiry_order():
    # Soonest expiry first; credits that never expire last.
    return case((lots.c.expires_at.is_(None), 1), else_=0), lots.c.expires_at


def _system_balance(conn: Connection, account_id: int) -> int:
    moving = transfers.c.kind.not_in(("hold", "void"))
    credited = select(func.coalesce(func.sum(transfers.c.amount), 0)).where(
        transfers.c.credit_account_id == account_id, moving)
    debited = select(func.coalesce(func.sum(transfers.c.amount), 0)).where(
        transfers.c.debit_account_id == account_id, moving)
    return int(conn.execute(credited).scalar()) - int(conn.execute(debited).scalar())


_debit_account = accounts.alias("debit_account")
_credit_account = accounts.alias("credit_account")


def _transfer_query():
    return (
        select(transfers.c.id, transfers.c.key, transfers.c.kind,
               _debit_account.c.name.label("debit_name"),
               _credit_account.c.name.label("credit_name"),
               transfers.c.amount, transfers.c.created_at, transfers.c.actor, transfers.c.reason,
               transfers.c.metadata, transfers.c.pending_id, transfers.c.reversal_of)
        .join(_debit_account, _debit_account.c.id == transfers.c.debit_account_id)
        .join(_credit_account, _credit_account.c.id == transfers.c.credit_account_id)
    )


def _transfer(row) -> Transfer:
    return Transfer(id=row.id, key=row.key, kind=row.kind, debit_account=row.debit_name,
                    credit_account=row.credit_name, amount=int(row.amount),
                    created_at=row.created_at, actor=row.actor, reason=row.reason,
                    metadata=row.metadata, pending_id=row.pending_id, reversal_of=row.reversal_of)
