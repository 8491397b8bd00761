"""Ledger write paths as PostgreSQL functions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

Each grant/earn, deduct, hold, post and void is one ``SELECT credits_ledger_*(...)``
in autocommit: one round trip and one transaction, where the same work as separate
statements costs 6-11 round trips and most of the writer's CPU in the driver and
SQLAlchemy. The functions do exactly what ``Ledger``'s Python path does, statement for
statement and in the same lock order (the transfer's key, the hold, then the owner
account, whose row lock guards its lots), so both paths write identical rows and can
run side by side. A refusal is raised with a ledger SQLSTATE (``CR...``, see
``jupyterhub_credits/ledger/functions.py``), which rolls the whole call back; the
Python side turns it into the same exception, with the same message, as its own path.

Times are passed in (the ledger's injected clock), never read with ``now()``.
PostgreSQL only: on SQLite this migration does nothing.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The SQLSTATEs raised below; the Python side maps each to an exception.
#   CRK01 the idempotency key is taken           CRA01 unknown account (owner)
#   CRF01 insufficient funds (DETAIL: available)  CRH01 unknown hold
#   CRH02 not a hold (DETAIL: its kind)           CRH03 post exceeds the hold (DETAIL: hold amount)
#   CRH04 hold not pending (DETAIL: its state)

FUNCTIONS = {
    "credits_ledger_grant": """
CREATE FUNCTION credits_ledger_grant(
    p_key text, p_digest text, p_kind text, p_account text, p_account_kind text,
    p_amount bigint, p_expires_at timestamp, p_actor text, p_reason text, p_metadata json,
    p_account_created_at timestamp, p_created_at timestamp) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_account bigint;
    v_transfer bigint;
BEGIN
    SELECT id INTO v_account FROM credits_accounts WHERE name = p_account;
    IF v_account IS NULL THEN
        -- Created in this transaction: a refused grant leaves no account behind.
        INSERT INTO credits_accounts (name, kind, balance, reserved, created_at,
                                      lifetime_earned, lifetime_spent)
        VALUES (p_account, p_account_kind, 0, 0, p_account_created_at, 0, 0)
        ON CONFLICT (name) DO NOTHING;
        SELECT id INTO v_account FROM credits_accounts WHERE name = p_account;
    END IF;
    INSERT INTO credits_transfers (key, request_hash, kind, debit_account_id,
                                   credit_account_id, amount, created_at, actor, reason, metadata)
    VALUES (p_key, p_digest, p_kind,
            (SELECT id FROM credits_accounts WHERE name = 'system:issuance'), v_account,
            p_amount, p_created_at, p_actor, p_reason, p_metadata)
    ON CONFLICT (key) DO NOTHING
    RETURNING id INTO v_transfer;
    IF v_transfer IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'CRK01', MESSAGE = 'idempotency key taken';
    END IF;
    INSERT INTO credits_lots (account_id, transfer_id, amount, remaining, reserved, expires_at)
    VALUES (v_account, v_transfer, p_amount, p_amount, 0, p_expires_at);
    UPDATE credits_accounts
    SET balance = balance + p_amount,
        lifetime_earned = lifetime_earned + CASE WHEN p_kind = 'earn' THEN p_amount ELSE 0 END
    WHERE id = v_account;
    RETURN v_transfer;
END $$""",
    # Deduct and hold: claim the key, lock the owner, then draw soonest-expiring first.
    "credits_ledger_deduct": """
CREATE FUNCTION credits_ledger_deduct(
    p_key text, p_digest text, p_account text, p_amount bigint, p_actor text, p_reason text,
    p_metadata json, p_created_at timestamp, p_now timestamp) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_account bigint;
    v_transfer bigint;
    v_left bigint := p_amount;
    v_take bigint;
    v_lot record;
    v_lots bigint[] := '{}';  -- the draw: lots soonest-expiring first, and units from each
    v_takes bigint[] := '{}';
BEGIN
    SELECT id INTO v_account FROM credits_accounts WHERE name = p_account;
    IF v_account IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'CRA01', MESSAGE = 'unknown account';
    END IF;
    INSERT INTO credits_transfers (key, request_hash, kind, debit_account_id,
                                   credit_account_id, amount, created_at, actor, reason, metadata)
    VALUES (p_key, p_digest, 'deduct', v_account,
            (SELECT id FROM credits_accounts WHERE name = 'system:issuance'),
            p_amount, p_created_at, p_actor, p_reason, p_metadata)
    ON CONFLICT (key) DO NOTHING
    RETURNING id INTO v_transfer;
    IF v_transfer IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'CRK01', MESSAGE = 'idempotency key taken';
    END IF;
    PERFORM 1 FROM credits_accounts WHERE id = v_account FOR NO KEY UPDATE;
    FOR v_lot IN
        SELECT id, remaining - reserved AS free FROM credits_lots
        WHERE account_id = v_account AND remaining > reserved
          AND (expires_at IS NULL OR expires_at > p_now)
        ORDER BY expires_at IS NULL, expires_at, id
    LOOP
        EXIT WHEN v_left = 0;
        v_take := least(v_lot.free, v_left);
        v_left := v_left - v_take;
        v_lots := v_lots || v_lot.id;
        v_takes := v_takes || v_take;
    END LOOP;
    IF v_left > 0 THEN  -- every spendable lot was read: what they hold is what is available
        RAISE EXCEPTION USING ERRCODE = 'CRF01', MESSAGE = 'insufficient funds',
            DETAIL = (p_amount - v_left)::text;
    END IF;
    -- Checked before anything is written, so a refusal uses up no movement ids either.
    UPDATE credits_lots l SET remaining = l.remaining - d.take
    FROM unnest(v_lots, v_takes) AS d(lot_id, take) WHERE l.id = d.lot_id;
    INSERT INTO credits_lot_movements (lot_id, transfer_id, amount)
    SELECT d.lot_id, v_transfer, d.take
    FROM unnest(v_lots, v_takes) WITH ORDINALITY AS d(lot_id, take, n) ORDER BY d.n;
    UPDATE credits_accounts SET balance = balance - p_amount WHERE id = v_account;
    RETURN v_transfer;
END $$""",
    "credits_ledger_hold": """
CREATE FUNCTION credits_ledger_hold(
    p_key text, p_digest text, p_account text, p_amount bigint, p_actor text, p_reason text,
    p_metadata json, p_now timestamp, p_created_at timestamp, p_timeout_at timestamp)
    RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_account bigint;
    v_transfer bigint;
    v_left bigint := p_amount;
    v_take bigint;
    v_lot record;
    v_lots bigint[] := '{}';  -- the draw: lots soonest-expiring first, and units from each
    v_takes bigint[] := '{}';
BEGIN
    SELECT id INTO v_account FROM credits_accounts WHERE name = p_account;
    IF v_account IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'CRA01', MESSAGE = 'unknown account';
    END IF;
    INSERT INTO credits_transfers (key, request_hash, kind, debit_account_id,
                                   credit_account_id, amount, created_at, actor, reason, metadata)
    VALUES (p_key, p_digest, 'hold', v_account,
            (SELECT id FROM credits_accounts WHERE name = 'system:usage'),
            p_amount, p_created_at, p_actor, p_reason, p_metadata)
    ON CONFLICT (key) DO NOTHING
    RETURNING id INTO v_transfer;
    IF v_transfer IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'CRK01', MESSAGE = 'idempotency key taken';
    END IF;
    PERFORM 1 FROM credits_accounts WHERE id = v_account FOR NO KEY UPDATE;
    FOR v_lot IN
        SELECT id, remaining - reserved AS free FROM credits_lots
        WHERE account_id = v_account AND remaining > reserved
          AND (expires_at IS NULL OR expires_at > p_now)
        ORDER BY expires_at IS NULL, expires_at, id
    LOOP
        EXIT WHEN v_left = 0;
        v_take := least(v_lot.free, v_left);
        v_left := v_left - v_take;
        v_lots := v_lots || v_lot.id;
        v_takes := v_takes || v_take;
    END LOOP;
    IF v_left > 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'CRF01', MESSAGE = 'insufficient funds',
            DETAIL = (p_amount - v_left)::text;
    END IF;
    INSERT INTO credits_holds (transfer_id, account_id, amount, state, posted, timeout_at)
    VALUES (v_transfer, v_account, p_amount, 'pending', 0, p_timeout_at);
    UPDATE credits_lots l SET reserved = l.reserved + d.take
    FROM unnest(v_lots, v_takes) AS d(lot_id, take) WHERE l.id = d.lot_id;
    INSERT INTO credits_hold_lots (hold_id, lot_id, amount)
    SELECT v_transfer, d.lot_id, d.take FROM unnest(v_lots, v_takes) AS d(lot_id, take);
    UPDATE credits_accounts SET reserved = reserved + p_amount WHERE id = v_account;
    RETURN v_transfer;
END $$""",
    # Post and void answer the transfer's accounts by name and its amount, which the
    # caller does not know before it reads the hold.
    "credits_ledger_post": """
CREATE FUNCTION credits_ledger_post(
    p_key text, p_digest text, p_hold_key text, p_amount bigint, p_actor text, p_reason text,
    p_metadata json, p_now timestamp, p_created_at timestamp,
    OUT o_transfer_id bigint, OUT o_debit_account text, OUT o_credit_account text,
    OUT o_amount bigint, OUT o_pending_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_hold record;
    v_posted bigint;
    v_left bigint;
    v_take bigint;
    v_lot record;
    v_state text;
BEGIN
    SELECT t.id, t.kind, t.debit_account_id, t.credit_account_id, t.amount,
           d.name AS debit_name, c.name AS credit_name
    INTO v_hold
    FROM credits_transfers t
    JOIN credits_accounts d ON d.id = t.debit_account_id
    JOIN credits_accounts c ON c.id = t.credit_account_id
    WHERE t.key = p_hold_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CRH01', MESSAGE = 'unknown hold';
    END IF;
    IF v_hold.kind <> 'hold' THEN
        RAISE EXCEPTION USING ERRCODE = 'CRH02', MESSAGE = 'not a hold', DETAIL = v_hold.kind;
    END IF;
    v_posted := coalesce(p_amount, v_hold.amount);
    IF v_posted > v_hold.amount THEN
        RAISE EXCEPTION USING ERRCODE = 'CRH03', MESSAGE = 'post exceeds the hold',
            DETAIL = v_hold.amount::text;
    END IF;
    INSERT INTO credits_transfers (key, request_hash, kind, debit_account_id,
                                   credit_account_id, amount, created_at, actor, reason, metadata,
                                   pending_id)
    VALUES (p_key, p_digest, 'post', v_hold.debit_account_id, v_hold.credit_account_id,
            v_posted, p_created_at, p_actor, p_reason, p_metadata, v_hold.id)
    ON CONFLICT (key) DO NOTHING
    RETURNING id INTO o_transfer_id;
    IF o_transfer_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'CRK01', MESSAGE = 'idempotency key taken';
    END IF;
    UPDATE credits_holds SET state = 'posted', posted = v_posted, resolved_at = p_now
    WHERE credits_holds.transfer_id = v_hold.id AND state = 'pending';
    IF NOT FOUND THEN
        SELECT state INTO v_state FROM credits_holds WHERE credits_holds.transfer_id = v_hold.id;
        RAISE EXCEPTION USING ERRCODE = 'CRH04', MESSAGE = 'hold not pending', DETAIL = v_state;
    END IF;
    PERFORM 1 FROM credits_accounts WHERE id = v_hold.debit_account_id FOR NO KEY UPDATE;
    -- Unreserve the hold's lots, taking what is posted from them soonest-expiring first.
    v_left := v_posted;
    FOR v_lot IN
        SELECT hl.lot_id, hl.amount FROM credits_hold_lots hl
        JOIN credits_lots l ON l.id = hl.lot_id
        WHERE hl.hold_id = v_hold.id
        ORDER BY l.expires_at IS NULL, l.expires_at, l.id
    LOOP
        v_take := least(v_left, v_lot.amount);
        v_left := v_left - v_take;
        UPDATE credits_lots SET remaining = remaining - v_take, reserved = reserved - v_lot.amount
        WHERE id = v_lot.lot_id;
        IF v_take > 0 THEN
            INSERT INTO credits_lot_movements (lot_id, transfer_id, amount)
            VALUES (v_lot.lot_id, o_transfer_id, v_take);
        END IF;
    END LOOP;
    IF v_posted < v_hold.amount THEN  -- a partial post voids the rest in the same breath
        INSERT INTO credits_transfers (key, request_hash, kind, debit_account_id,
                                       credit_account_id, amount, created_at, actor, reason,
                                       metadata, pending_id)
        VALUES (NULL, NULL, 'void', v_hold.debit_account_id, v_hold.credit_account_id,
                v_hold.amount - v_posted, p_created_at, p_actor, 'remainder of partial post',
                NULL, v_hold.id);
    END IF;
    UPDATE credits_accounts
    SET balance = balance - v_posted, reserved = reserved - v_hold.amount,
        lifetime_spent = lifetime_spent + v_posted
    WHERE id = v_hold.debit_account_id;
    o_debit_account := v_hold.debit_name;
    o_credit_account := v_hold.credit_name;
    o_amount := v_posted;
    o_pending_id := v_hold.id;
END $$""",
    # p_timed_out_by (the sweep): void only if the hold still times out by then.
    "credits_ledger_void": """
CREATE FUNCTION credits_ledger_void(
    p_key text, p_digest text, p_hold_key text, p_actor text, p_reason text, p_metadata json,
    p_created_at timestamp, p_now timestamp, p_timed_out_by timestamp,
    OUT o_transfer_id bigint, OUT o_debit_account text, OUT o_credit_account text,
    OUT o_amount bigint, OUT o_pending_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_hold record;
    v_state text;
BEGIN
    SELECT t.id, t.kind, t.debit_account_id, t.credit_account_id, t.amount,
           d.name AS debit_name, c.name AS credit_name
    INTO v_hold
    FROM credits_transfers t
    JOIN credits_accounts d ON d.id = t.debit_account_id
    JOIN credits_accounts c ON c.id = t.credit_account_id
    WHERE t.key = p_hold_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CRH01', MESSAGE = 'unknown hold';
    END IF;
    IF v_hold.kind <> 'hold' THEN
        RAISE EXCEPTION USING ERRCODE = 'CRH02', MESSAGE = 'not a hold', DETAIL = v_hold.kind;
    END IF;
    INSERT INTO credits_transfers (key, request_hash, kind, debit_account_id,
                                   credit_account_id, amount, created_at, actor, reason, metadata,
                                   pending_id)
    VALUES (p_key, p_digest, 'void', v_hold.debit_account_id, v_hold.credit_account_id,
            v_hold.amount, p_created_at, p_actor, p_reason, p_metadata, v_hold.id)
    ON CONFLICT (key) DO NOTHING
    RETURNING id INTO o_transfer_id;
    IF o_transfer_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'CRK01', MESSAGE = 'idempotency key taken';
    END IF;
    UPDATE credits_holds SET state = 'voided', posted = 0, resolved_at = p_now
    WHERE credits_holds.transfer_id = v_hold.id AND state = 'pending'
      AND (p_timed_out_by IS NULL OR timeout_at <= p_timed_out_by);
    IF NOT FOUND THEN
        SELECT state INTO v_state FROM credits_holds WHERE credits_holds.transfer_id = v_hold.id;
        RAISE EXCEPTION USING ERRCODE = 'CRH04', MESSAGE = 'hold not pending', DETAIL = v_state;
    END IF;
    PERFORM 1 FROM credits_accounts WHERE id = v_hold.debit_account_id FOR NO KEY UPDATE;
    UPDATE credits_lots l SET reserved = l.reserved - hl.amount
    FROM credits_hold_lots hl
    WHERE hl.hold_id = v_hold.id AND l.id = hl.lot_id;
    UPDATE credits_accounts SET reserved = reserved - v_hold.amount
    WHERE id = v_hold.debit_account_id;
    o_debit_account := v_hold.debit_name;
    o_credit_account := v_hold.credit_name;
    o_amount := v_hold.amount;
    o_pending_id := v_hold.id;
END $$""",
}


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    for definition in FUNCTIONS.values():
        op.get_bind().exec_driver_sql(definition)


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in FUNCTIONS:
        op.get_bind().exec_driver_sql(f"DROP FUNCTION IF EXISTS {name}")
