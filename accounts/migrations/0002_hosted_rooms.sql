-- Meetings an account hosts right now, so that a restarted signaling service still
-- admits people to them. Only hashes of the room id and the host key: a copy of the
-- database lets no one join a meeting or act as its host. A row goes when its meeting
-- ends, when it expires, when the account closes, and in the purge.
CREATE TABLE hosted_rooms (
    room_hash TEXT PRIMARY KEY,
    host_key_hash TEXT NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX hosted_rooms_account ON hosted_rooms(account_id);
