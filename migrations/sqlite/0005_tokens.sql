-- Token lifecycle (see migrations/mysql/0005_tokens.sql): refresh tokens
-- stored as SHA-256 hex, grouped in families; per-user token versions.
CREATE TABLE refresh_tokens (
    token_hash TEXT    NOT NULL PRIMARY KEY,
    user_id    INTEGER NOT NULL,
    family_id  INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    revoked    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id, expires_at);

CREATE TABLE user_token_versions (
    user_id INTEGER NOT NULL PRIMARY KEY,
    version INTEGER NOT NULL
);
