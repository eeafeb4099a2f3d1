-- Groups and their memberships (cluster mode). The same logical schema as
-- migrations/sqlite/0002_groups.sql; ids are BIGINT UNSIGNED (the full u64
-- range). `chat_groups`, not `groups`: GROUPS is a reserved word in MySQL 8
-- (not in MariaDB), and both engines keep the same table names. Written for
-- MariaDB 10.11 and MySQL 8 alike: no utf8mb4_0900_* collations.
CREATE TABLE chat_groups (
    id         BIGINT UNSIGNED NOT NULL,
    -- Up to 64 characters of utf8mb4; the caller validates the length.
    name       VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    owner_id   BIGINT UNSIGNED NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- No foreign key to chat_groups: the store keeps memberships and their group
-- consistent in its transactions (each locks the group row first), and
-- 20,000-row membership inserts skip the per-row FK checks.
CREATE TABLE group_members (
    group_id  BIGINT UNSIGNED NOT NULL,
    user_id   BIGINT UNSIGNED NOT NULL,
    -- GroupRole::as_str: 'owner', 'admin' or 'member' (CHECK enforced by
    -- MariaDB 10.2+ and MySQL 8.0.16+).
    role      VARCHAR(8) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    joined_at BIGINT NOT NULL,
    -- One membership per user and group; a group's members in user order.
    PRIMARY KEY (group_id, user_id),
    -- "My groups": a user's memberships in group order.
    KEY idx_group_members_user (user_id, group_id),
    CONSTRAINT chk_group_members_role CHECK (role IN ('owner', 'admin', 'member'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
