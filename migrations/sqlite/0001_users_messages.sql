-- Users and messages (embedded mode). Ids are snowflakes; SQLite stores them
-- as INTEGER (they fit in 63 bits).
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL COLLATE NOCASE UNIQUE,
    password_hash TEXT    NOT NULL,
    nickname      TEXT    NOT NULL,
    avatar_url    TEXT    NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL
);

CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    conversation_id TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    sender_id       INTEGER NOT NULL,
    client_msg_id   TEXT    NOT NULL,
    content_type    TEXT    NOT NULL,
    content         TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    -- Per-conversation order, and the index history paging walks.
    UNIQUE (conversation_id, seq),
    -- Deduplication that survives the loss of the fast store.
    UNIQUE (sender_id, client_msg_id)
);
