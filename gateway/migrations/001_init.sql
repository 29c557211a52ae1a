-- stile gateway schema, version 1. Times are Unix seconds (UTC).

-- Operators that sell tickets; `node` routes the provider to the node that owns its
-- tickets (NULL: the gateway's default node).
CREATE TABLE providers (
    id          INTEGER PRIMARY KEY CHECK (id BETWEEN 1 AND 65535),
    name        TEXT NOT NULL,
    node        TEXT,
    created_at  INTEGER NOT NULL
);

-- An event and the engine's validity rules for its tickets.
CREATE TABLE events (
    id              INTEGER PRIMARY KEY,
    provider        INTEGER NOT NULL REFERENCES providers(id),
    name            TEXT NOT NULL,
    venue           TEXT NOT NULL,
    starts_at       INTEGER NOT NULL,
    capacity        INTEGER,
    valid_from      INTEGER,
    valid_until     INTEGER,
    valid_for_s     INTEGER,
    entry           TEXT NOT NULL CHECK (entry IN ('single', 'multi', 'entry_exit')),
    max_entries     INTEGER NOT NULL,
    undo_window_s   INTEGER NOT NULL,
    rotating        INTEGER NOT NULL,
    reminder_lead_s TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);

-- The seat map of a seated event (free seating has none).
CREATE TABLE seats (
    event  INTEGER NOT NULL REFERENCES events(id),
    seat   TEXT NOT NULL,
    PRIMARY KEY (event, seat)
);

-- Idempotency keys of booking requests: `booking` is NULL while the request runs; `owner`
-- names the gateway process running it, so a key left behind by a crash can be taken over.
CREATE TABLE idempotency (
    key           TEXT PRIMARY KEY,
    request_hash  BLOB NOT NULL,
    booking       INTEGER REFERENCES bookings(id),
    owner         TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE accounts (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    email       TEXT,
    created_at  INTEGER NOT NULL
);

-- A device linked to an account; only the SHA-256 of its token is kept.
CREATE TABLE devices (
    id          INTEGER PRIMARY KEY,
    account     INTEGER NOT NULL REFERENCES accounts(id),
    name        TEXT NOT NULL,
    token_hash  BLOB NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE bookings (
    id           INTEGER PRIMARY KEY,
    event        INTEGER NOT NULL REFERENCES events(id),
    account      INTEGER REFERENCES accounts(id),
    payment_ref  TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);

-- One row a code. A ticket is found on its node by (provider, partition, serial): the
-- provider routes to the node, so a node that moves to another address keeps its tickets.
-- A transfer sets `successor` on the old row and adds the new one with `predecessor`.
-- `last_*` mirror the node's state word as the subscription last saw it.
CREATE TABLE tickets (
    code          TEXT PRIMARY KEY,
    booking       INTEGER NOT NULL REFERENCES bookings(id),
    event         INTEGER NOT NULL REFERENCES events(id),
    seat          TEXT,
    holder_name   TEXT NOT NULL,
    holder_email  TEXT,
    webhook       TEXT,
    account       INTEGER REFERENCES accounts(id),
    provider      INTEGER NOT NULL,
    partition     INTEGER NOT NULL,
    serial        INTEGER NOT NULL,
    rotating      INTEGER NOT NULL,
    ticket_key    BLOB,
    step_s        INTEGER,
    successor     TEXT,
    predecessor   TEXT,
    last_state    TEXT NOT NULL DEFAULT 'valid',
    entries       INTEGER NOT NULL DEFAULT 0,
    inside        INTEGER NOT NULL DEFAULT 0,
    first_entry   INTEGER,
    last_gate     INTEGER,
    last_at       INTEGER,
    created_at    INTEGER NOT NULL,
    UNIQUE (provider, partition, serial)
);
-- A seat is sold once; a transferred or revoked ticket frees nothing (its successor keeps it).
CREATE UNIQUE INDEX tickets_seat ON tickets(event, seat)
    WHERE seat IS NOT NULL AND successor IS NULL AND last_state != 'revoked';
CREATE INDEX tickets_event ON tickets(event);
-- A node's events name (partition, serial).
CREATE INDEX tickets_slot ON tickets(partition, serial);
CREATE INDEX tickets_account ON tickets(account);

-- Tokens of gates that check in over HTTP; only the SHA-256 of the token is kept.
CREATE TABLE gate_tokens (
    token_hash  BLOB PRIMARY KEY,
    provider    INTEGER NOT NULL REFERENCES providers(id),
    gate        INTEGER NOT NULL CHECK (gate BETWEEN 1 AND 65535),
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Every state change the node reported for a known ticket: entries, exits, undos, revokes.
-- Keyed by ticket and log position, so reading a node's log again records nothing twice.
CREATE TABLE scans (
    seq    INTEGER NOT NULL,
    code   TEXT NOT NULL REFERENCES tickets(code),
    event  INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    gate   INTEGER NOT NULL,
    at     INTEGER NOT NULL,
    PRIMARY KEY (code, seq)
);
CREATE INDEX scans_event_at ON scans(event, at);

-- How far the gateway has read each node's event stream (by address; a new address reads
-- the log from its start, which `scans`' key makes harmless).
CREATE TABLE node_cursors (
    node      TEXT PRIMARY KEY,
    next_seq  INTEGER NOT NULL
);

-- Events of an account's tickets, for its linked devices; `id` is the SSE event id.
CREATE TABLE account_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    account  INTEGER NOT NULL REFERENCES accounts(id),
    code     TEXT NOT NULL,
    kind     TEXT NOT NULL,
    body     TEXT NOT NULL,
    at       INTEGER NOT NULL
);
CREATE INDEX account_events_account ON account_events(account, id);

-- Reminders to send: one row per ticket and lead time, so each is delivered once.
CREATE TABLE outbox (
    id            INTEGER PRIMARY KEY,
    code          TEXT NOT NULL REFERENCES tickets(code),
    lead_s        INTEGER NOT NULL,
    url           TEXT NOT NULL,
    due_at        INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       INTEGER NOT NULL,
    last_error    TEXT,
    delivered_at  INTEGER,
    gave_up_at    INTEGER,
    UNIQUE (code, lead_s)
);
CREATE INDEX outbox_pending ON outbox(next_at) WHERE delivered_at IS NULL AND gave_up_at IS NULL;
