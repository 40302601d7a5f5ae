-- Accounts and everything that names or links to a person. Portable SQL: the same
-- text runs on SQLite and PostgreSQL. Times are UNIX milliseconds (BIGINT), written
-- from the application's clock, never from the database's.

CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    email_verified_at BIGINT,
    trial_ends_at BIGINT NOT NULL,
    closed_at BIGINT
);

-- Consents with their times: the policy (with its version), the age confirmation and
-- the optional survey/e-mail opt-in. Withdrawal keeps the row and sets withdrawn_at.
CREATE TABLE consents (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    purpose TEXT NOT NULL,
    policy_version TEXT,
    given_at BIGINT NOT NULL,
    withdrawn_at BIGINT
);
CREATE INDEX consents_account ON consents(account_id);

-- Single-use links sent by e-mail (verification, e-mail change, password reset),
-- kept only as SHA-256 hashes.
CREATE TABLE email_tokens (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    purpose TEXT NOT NULL,
    email TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX email_tokens_account ON email_tokens(account_id);

-- Log-in sessions; the cookie's value is kept only as its SHA-256 hash.
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_account ON sessions(account_id);

-- One row per media session of a logged-in account: the connection metadata record.
CREATE TABLE usage_records (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    started_at BIGINT NOT NULL,
    ended_at BIGINT NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    packets_in BIGINT NOT NULL,
    packets_out BIGINT NOT NULL,
    loss_permille BIGINT NOT NULL,
    rtt_ms BIGINT
);
CREATE INDEX usage_records_account ON usage_records(account_id);

-- The durable promise to delete: due_at is seven working days after requested_at;
-- nothing is purged before purge_after (the end of the optional grace period).
CREATE TABLE deletion_requests (
    account_id TEXT PRIMARY KEY REFERENCES accounts(id),
    requested_at BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    purge_after BIGINT NOT NULL
);
CREATE INDEX deletion_requests_purge_after ON deletion_requests(purge_after);

-- Identifier-free counters per UTC day: all that outlives a purged account.
CREATE TABLE daily_rollups (
    day TEXT NOT NULL,
    measure TEXT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (day, measure)
);
