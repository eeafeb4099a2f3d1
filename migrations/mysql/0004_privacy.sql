-- Privacy (issue #9, items 14-15). The same logical schema as
-- migrations/sqlite/0004_privacy.sql. Both columns have a constant default,
-- so MariaDB 10.3+ and MySQL 8 add them instantly (no table rebuild).
--
-- Group history from join: a member reads a group's messages only after
-- `join_seq`, the conversation's last seq when they were added (0 for the
-- members a group is created with, and for every membership that predates
-- this migration), unless the group was created with
-- history_visible_to_new_members = 1. Removing a member deletes the row, so
-- re-adding one records a new join_seq.
ALTER TABLE chat_groups ADD COLUMN history_visible_to_new_members BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE group_members ADD COLUMN join_seq BIGINT UNSIGNED NOT NULL DEFAULT 0;
-- Presence privacy needs no new index: "do a and b share a conversation"
-- is one primary-key lookup in conversation_seqs (their 1:1 id) or one
-- walk of a's memberships (idx_group_members_user) probing the
-- (group_id, user_id) primary key for b.
