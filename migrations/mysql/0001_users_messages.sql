-- Users and messages (cluster mode). The same logical schema as
-- migrations/sqlite; ids are snowflakes stored as BIGINT UNSIGNED (the full
-- u64 range). Written for MariaDB 10.11 and MySQL 8 alike: no
-- utf8mb4_0900_* collations.
CREATE TABLE users (
    id            BIGINT UNSIGNED NOT NULL,
    -- Case-insensitive like SQLite's NOCASE ("Alice" and "alice" collide).
    username      VARCHAR(32)   CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
    password_hash VARCHAR(255)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    nickname      VARCHAR(64)   CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    avatar_url    VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_users_username (username)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE messages (
    id              BIGINT UNSIGNED NOT NULL,
    -- Binary strings compare byte for byte with no trailing-space padding
    -- (every *_bin collation here is PAD SPACE: 'a' = 'a '), as SQLite does.
    conversation_id VARBINARY(64) NOT NULL,
    seq             BIGINT UNSIGNED NOT NULL,
    sender_id       BIGINT UNSIGNED NOT NULL,
    -- Exact bytes: "A", "a" and "a " are three different keys. The gateway
    -- caps client_msg_id at 64 bytes of UTF-8.
    client_msg_id   VARBINARY(64) NOT NULL,
    content_type    VARCHAR(16) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    content         MEDIUMTEXT  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (id),
    -- Per-conversation order, and the index history paging walks.
    UNIQUE KEY uq_messages_conversation_seq (conversation_id, seq),
    -- Deduplication that survives the loss of the fast store.
    UNIQUE KEY uq_messages_sender_client_msg (sender_id, client_msg_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
