-- stile gateway schema, version 3: a gate's name outlives its credentials (the holder's page
-- names the gate that admitted a ticket even after the gate's token was revoked), and a
-- gate's staff PIN, for check-in on the holder's own page.

-- Every gate that was ever given a token, by provider and number, with its name.
CREATE TABLE gates (
    provider  INTEGER NOT NULL REFERENCES providers(id),
    gate      INTEGER NOT NULL CHECK (gate BETWEEN 1 AND 65535),
    name      TEXT NOT NULL,
    PRIMARY KEY (provider, gate)
);
INSERT OR IGNORE INTO gates (provider, gate, name) SELECT provider, gate, name FROM gate_tokens;

-- The gate's staff PIN, issued, replaced and revoked with its token: a random salt and
-- SHA-256(salt, provider, gate, PIN), never the PIN. Gates issued before have none.
ALTER TABLE gate_tokens ADD COLUMN pin_salt BLOB;
ALTER TABLE gate_tokens ADD COLUMN pin_hash BLOB;
