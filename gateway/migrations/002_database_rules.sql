-- stile gateway schema, version 2: the rules of a sale held by the database itself, so that
-- they hold whatever process writes (tickets of a capped event, seats of the seat map), the
-- holder's page link, and single-use stream tickets of linked devices.

-- An event with a capacity sells at most that many live tickets (not transferred, not
-- revoked). `sold` counts them, kept by triggers, so the check costs one row, not a count.
-- A transfer's new ticket replaces its predecessor (which stops being live in the same
-- transaction), so it is not checked.
ALTER TABLE events ADD COLUMN sold INTEGER NOT NULL DEFAULT 0;
UPDATE events SET sold = (SELECT count(*) FROM tickets
    WHERE event = events.id AND successor IS NULL AND last_state != 'revoked');
CREATE TRIGGER tickets_sold_insert AFTER INSERT ON tickets
WHEN NEW.successor IS NULL AND NEW.last_state != 'revoked'
BEGIN
    UPDATE events SET sold = sold + 1 WHERE id = NEW.event;
END;
CREATE TRIGGER tickets_sold_update AFTER UPDATE OF successor, last_state ON tickets
WHEN (OLD.successor IS NULL AND OLD.last_state != 'revoked')
    != (NEW.successor IS NULL AND NEW.last_state != 'revoked')
BEGIN
    UPDATE events
    SET sold = sold + CASE WHEN NEW.successor IS NULL AND NEW.last_state != 'revoked'
                           THEN 1 ELSE -1 END
    WHERE id = NEW.event;
END;
CREATE TRIGGER tickets_capacity BEFORE INSERT ON tickets
WHEN NEW.predecessor IS NULL
BEGIN
    SELECT RAISE(ABORT, 'stile: sold out')
    FROM events WHERE id = NEW.event AND capacity IS NOT NULL AND sold >= capacity;
END;

-- A seated ticket names a seat of its event's seat map.
CREATE TRIGGER tickets_seat_in_map BEFORE INSERT ON tickets
WHEN NEW.seat IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM seats WHERE event = NEW.event AND seat = NEW.seat)
BEGIN
    SELECT RAISE(ABORT, 'stile: seat not in the seat map');
END;

-- The holder's page link (`/t/TOKEN`): unguessable and shown by no QR, so a rotating
-- ticket's page cannot be reached from a screenshot of its code.
ALTER TABLE tickets ADD COLUMN page_token TEXT;
UPDATE tickets SET page_token = 'tk_' || lower(hex(randomblob(24)));
CREATE UNIQUE INDEX tickets_page_token ON tickets(page_token);

-- Single-use tickets that open one device event stream (EventSource cannot send headers,
-- and tokens stay out of URLs); only their SHA-256 is kept.
CREATE TABLE stream_tickets (
    ticket_hash  BLOB PRIMARY KEY,
    device       INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    expires_at   INTEGER NOT NULL
);

-- A gate has one HTTP token: issuing another replaces it (in one transaction).
DELETE FROM gate_tokens
WHERE rowid NOT IN (SELECT max(rowid) FROM gate_tokens GROUP BY provider, gate);
CREATE UNIQUE INDEX gate_tokens_gate ON gate_tokens(provider, gate);

-- An account links at most 32 devices (`DEVICES_PER_ACCOUNT_MAX` in api/accounts.rs).
CREATE TRIGGER devices_per_account BEFORE INSERT ON devices
WHEN (SELECT count(*) FROM devices WHERE account = NEW.account) >= 32
BEGIN
    SELECT RAISE(ABORT, 'stile: account links the most devices it may');
END;

-- An old holder's `transferred` event says only that: the new code is the new holder's.
UPDATE account_events SET body = json_remove(body, '$.successor')
WHERE kind = 'transferred' AND json_valid(body);
