-- The authority for seq allocation: one counter row per conversation, locked
-- and advanced by the same transaction that stores the messages
-- (Store::append_messages), so a crash never leaves a gap. Backfilled from
-- the messages already stored.
CREATE TABLE conversation_seqs (
    conversation_id VARBINARY(64)   NOT NULL,
    last_seq        BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (conversation_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

INSERT INTO conversation_seqs (conversation_id, last_seq)
SELECT conversation_id, MAX(seq) FROM messages GROUP BY conversation_id;
