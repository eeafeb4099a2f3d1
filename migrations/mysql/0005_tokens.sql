-- Token lifecycle (docs/protocol.md, "Tokens"). Refresh tokens are opaque
-- random strings; only their SHA-256 (hex) is stored. Every token of one
-- login shares a family_id: a rotation marks the presented token used and
-- adds its successor to the family; presenting a used token again revokes
-- the whole family.
CREATE TABLE refresh_tokens (
    token_hash CHAR(64) CHARACTER SET ascii NOT NULL,
    user_id    BIGINT UNSIGNED NOT NULL,
    family_id  BIGINT UNSIGNED NOT NULL,
    created_at BIGINT          NOT NULL,
    expires_at BIGINT          NOT NULL,
    -- When it was rotated (NULL: not yet).
    used_at    BIGINT          NULL,
    revoked    TINYINT(1)      NOT NULL DEFAULT 0,
    PRIMARY KEY (token_hash),
    KEY refresh_tokens_family (family_id),
    KEY refresh_tokens_user (user_id, expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- A user's token version, carried in every access token (claim `ver`) and
-- bumped by a logout of all sessions: older access tokens are refused.
-- No row = version 0.
CREATE TABLE user_token_versions (
    user_id BIGINT UNSIGNED NOT NULL,
    version BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
