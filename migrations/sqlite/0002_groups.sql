-- Groups and their memberships (embedded mode). The same logical schema as
-- migrations/mysql/0002_groups.sql. Ids are snowflakes stored as INTEGER
-- (u64 bit-cast to i64, as in 0001). `chat_groups`, not `groups`: GROUPS is
-- a reserved word in MySQL 8, and both engines keep the same table names.
CREATE TABLE chat_groups (
    id         INTEGER PRIMARY KEY,
    -- Up to 64 characters; the caller validates the length.
    name       TEXT    NOT NULL,
    owner_id   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

-- No foreign key to chat_groups: the store keeps memberships and their group
-- consistent in its transactions (as 0001 declares none either).
CREATE TABLE group_members (
    group_id  INTEGER NOT NULL,
    user_id   INTEGER NOT NULL,
    -- GroupRole::as_str: 'owner', 'admin' or 'member'.
    role      TEXT    NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at INTEGER NOT NULL,
    -- One membership per user and group; a group's members in user order.
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;

-- "My groups": a user's memberships in group order.
CREATE INDEX idx_group_members_user ON group_members (user_id, group_id);
