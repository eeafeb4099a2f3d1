-- The authority for seq allocation: one counter row per conversation, locked
-- and advanced by the same transaction that stores the messages
-- (Store::append_messages), so a crash never leaves a gap. Backfilled from
-- the messages already stored.
CREATE TABLE conversation_seqs (
    conversation_id TEXT    NOT NULL PRIMARY KEY,
    last_seq        INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO conversation_seqs (conversation_id, last_seq)
SELECT conversation_id, MAX(seq) FROM messages GROUP BY conversation_id;
