-- stile gateway schema, version 4: how gates may decide an event's tickets when their node
-- does not answer. `online_only`: never offline (no double-entry risk at all);
-- `offline_rotating`: rotating codes verified offline too (gates then hold each ticket's
-- rotation key). Events before it: neither, as before.
ALTER TABLE events ADD COLUMN online_only INTEGER NOT NULL DEFAULT 0 CHECK (online_only IN (0, 1));
ALTER TABLE events ADD COLUMN offline_rotating INTEGER NOT NULL DEFAULT 0
    CHECK (offline_rotating IN (0, 1));
