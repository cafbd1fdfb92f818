//! The PostgreSQL keystore's schema: SQLite's migrations (`keystore.rs` `MIGRATIONS`), step for
//! step with the same version numbers, in PostgreSQL's types (`BYTEA`, `BIGINT`, `TEXT`,
//! `BOOLEAN`), and what a shared database adds: every row carries `identity` (filled by the
//! server from the role mapping, never sent by the client) and `row_version` (optimistic
//! concurrency), and every table has `ENABLE` + `FORCE ROW LEVEL SECURITY` with one policy:
//! `identity = keyward_identity()`, the identity that `keyward_roles` maps `current_user` to.
//! Tables whose changes invalidate caches fire `NOTIFY keyward` with an empty payload
//! (notifications bypass row-level security: they name nothing).
//!
//! It must never scope rows by anything the client can set (a GUC, an application name, a
//! column value it sends): only `current_user`, through a table its role cannot write. Steps are
//! append-only, like SQLite's.

/// Row-level security and the change notification for one table.
fn scoped(table: &str, notify: bool) -> String {
    let mut s = format!(
        "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
         ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
         CREATE POLICY {table}_own ON {table}
            USING (identity = keyward_identity())
            WITH CHECK (identity = keyward_identity());
        "
    );
    if notify {
        s.push_str(&format!(
            "CREATE TRIGGER {table}_notify AFTER INSERT OR UPDATE OR DELETE ON {table}
                FOR EACH STATEMENT EXECUTE FUNCTION keyward_notify();
            "
        ));
    }
    s
}

/// The columns every scoped row starts with.
const SCOPE: &str = "identity TEXT COLLATE \"C\" NOT NULL DEFAULT keyward_identity(),
        row_version BIGINT NOT NULL DEFAULT 1";

/// Entry `n` takes the schema from version `n` to `n + 1` (as SQLite's `MIGRATIONS`).
pub fn migrations() -> Vec<String> {
    let kinds = |k: &str| format!("CHECK (kind IN ({k}))");
    vec![
        // v1: keys and agent metadata; the role → identity mapping and its function; the
        // change notification.
        format!(
            "CREATE TABLE keyward_roles (
                role        TEXT COLLATE \"C\" PRIMARY KEY,
                identity    TEXT COLLATE \"C\" NOT NULL
             );
             ALTER TABLE keyward_roles ENABLE ROW LEVEL SECURITY;
             CREATE POLICY keyward_roles_own ON keyward_roles FOR SELECT
                USING (role = current_user);
             CREATE FUNCTION keyward_identity() RETURNS TEXT LANGUAGE sql STABLE
                AS $$ SELECT identity FROM keyward_roles WHERE role = current_user $$;
             CREATE FUNCTION keyward_notify() RETURNS trigger LANGUAGE plpgsql
                AS $$ BEGIN PERFORM pg_notify('keyward', ''); RETURN NULL; END $$;
             CREATE TABLE keys (
                {SCOPE},
                id          TEXT COLLATE \"C\" NOT NULL,
                kind        TEXT NOT NULL CONSTRAINT keys_kind {},
                label       TEXT,
                parent      TEXT COLLATE \"C\",
                scheme      TEXT NOT NULL,
                wrapped     BYTEA,
                public_key  BYTEA,
                locator     TEXT,
                purpose     TEXT CHECK (purpose IS NULL OR purpose IN ('personal', 'sharing')),
                exportable  BOOLEAN NOT NULL DEFAULT false,
                version     BIGINT NOT NULL DEFAULT 1,
                created     BIGINT NOT NULL,
                rotated     BIGINT,
                state       TEXT NOT NULL DEFAULT 'active'
                            CHECK (state IN ('active', 'retired', 'revoked')),
                PRIMARY KEY (identity, id),
                FOREIGN KEY (identity, parent) REFERENCES keys (identity, id)
             );
             CREATE INDEX keys_by_parent ON keys (identity, parent);
             CREATE INDEX keys_by_kind ON keys (identity, kind);
             CREATE TABLE meta (
                {SCOPE},
                name        TEXT COLLATE \"C\" NOT NULL,
                value       TEXT NOT NULL,
                PRIMARY KEY (identity, name)
             );
             {}{}",
            kinds("'root', 'kek', 'dek', 'keypair'"),
            scoped("keys", true),
            scoped("meta", false),
        ),
        // v2: secrets, node names, issuers and statements; revocations.
        format!(
            "ALTER TABLE keys DROP CONSTRAINT keys_kind;
             ALTER TABLE keys ADD CONSTRAINT keys_kind {};
             ALTER TABLE keys ADD COLUMN name TEXT,
                ADD COLUMN issuer TEXT COLLATE \"C\",
                ADD COLUMN statement BYTEA,
                ADD FOREIGN KEY (identity, issuer) REFERENCES keys (identity, id);
             CREATE UNIQUE INDEX keys_by_node_name ON keys (identity, name)
                WHERE name IS NOT NULL AND state = 'active';
             CREATE TABLE revocations (
                {SCOPE},
                id          TEXT COLLATE \"C\" NOT NULL,
                revoked     TEXT COLLATE \"C\" NOT NULL,
                issuer      TEXT COLLATE \"C\" NOT NULL,
                statement   BYTEA NOT NULL,
                created     BIGINT NOT NULL,
                PRIMARY KEY (identity, id)
             );
             {}",
            kinds("'root', 'kek', 'dek', 'keypair', 'secret'"),
            scoped("revocations", true),
        ),
        // v3: a keypair's algorithm.
        "ALTER TABLE keys ADD COLUMN algorithm TEXT;
         UPDATE keys SET algorithm = 'rsa' WHERE kind = 'keypair' AND scheme = 'rsa-pem-gcm';
         UPDATE keys SET algorithm = 'p256' WHERE kind = 'keypair' AND algorithm IS NULL;"
            .to_string(),
        // v4: record integrity (MACs) and the integrity kind. A PostgreSQL keystore never held
        // rows from before v4, so there is no trust-on-upgrade marker to leave.
        format!(
            "ALTER TABLE keys DROP CONSTRAINT keys_kind;
             ALTER TABLE keys ADD CONSTRAINT keys_kind {};
             ALTER TABLE keys ADD COLUMN mac BYTEA;
             ALTER TABLE revocations ADD COLUMN mac BYTEA;",
            kinds("'root', 'kek', 'dek', 'keypair', 'secret', 'integrity'"),
        ),
        // v5: SSH-agent flags.
        "ALTER TABLE keys ADD COLUMN ssh BIGINT NOT NULL DEFAULT 0;".to_string(),
        // v6: a keypair's certificate.
        "ALTER TABLE keys ADD COLUMN certificate BYTEA;".to_string(),
        // v7: DEK versions, the minimum version, and the KEK rotation journal.
        format!(
            "CREATE TABLE key_versions (
                {SCOPE},
                key         TEXT COLLATE \"C\" NOT NULL,
                version     BIGINT NOT NULL CHECK (version >= 2),
                wrapped     BYTEA NOT NULL,
                created     BIGINT NOT NULL,
                mac         BYTEA,
                PRIMARY KEY (identity, key, version),
                FOREIGN KEY (identity, key) REFERENCES keys (identity, id)
             );
             ALTER TABLE keys ADD COLUMN min_version BIGINT;
             CREATE TABLE kek_rotations (
                {SCOPE},
                kek         TEXT COLLATE \"C\" NOT NULL,
                wrapped     BYTEA NOT NULL,
                scheme      TEXT NOT NULL,
                started     BIGINT NOT NULL,
                mac         BYTEA,
                PRIMARY KEY (identity, kek),
                FOREIGN KEY (identity, kek) REFERENCES keys (identity, id)
             );
             CREATE TABLE kek_rotation_items (
                {SCOPE},
                kek         TEXT COLLATE \"C\" NOT NULL,
                key         TEXT COLLATE \"C\" NOT NULL,
                version     BIGINT NOT NULL,
                wrapped     BYTEA NOT NULL,
                mac         BYTEA,
                PRIMARY KEY (identity, key, version),
                FOREIGN KEY (identity, kek) REFERENCES kek_rotations (identity, kek),
                FOREIGN KEY (identity, key) REFERENCES keys (identity, id)
             );
             {}{}{}",
            scoped("key_versions", true),
            scoped("kek_rotations", true),
            scoped("kek_rotation_items", false),
        ),
        // v8: indexes for paged lists, in list order.
        "CREATE INDEX keys_page_by_kind ON keys (identity, kind, created, id);
         CREATE INDEX keys_page_by_parent ON keys (identity, parent, kind, created, id);
         CREATE INDEX keys_page_nodes ON keys (identity, created, id)
            WHERE kind = 'keypair' AND name IS NOT NULL;"
            .to_string(),
        // v9: several roots per KEK.
        format!(
            "CREATE TABLE kek_wraps (
                {SCOPE},
                kek         TEXT COLLATE \"C\" NOT NULL,
                root        TEXT COLLATE \"C\" NOT NULL,
                scheme      TEXT NOT NULL,
                wrapped     BYTEA NOT NULL,
                created     BIGINT NOT NULL,
                mac         BYTEA,
                PRIMARY KEY (identity, kek, root),
                FOREIGN KEY (identity, kek) REFERENCES keys (identity, id) ON DELETE CASCADE,
                FOREIGN KEY (identity, root) REFERENCES keys (identity, id) ON DELETE CASCADE
             );
             CREATE INDEX kek_wraps_by_root ON kek_wraps (identity, root);
             CREATE TABLE kek_rotation_wraps (
                {SCOPE},
                kek         TEXT COLLATE \"C\" NOT NULL,
                root        TEXT COLLATE \"C\" NOT NULL,
                scheme      TEXT NOT NULL,
                wrapped     BYTEA NOT NULL,
                mac         BYTEA,
                PRIMARY KEY (identity, kek, root),
                FOREIGN KEY (identity, kek) REFERENCES kek_rotations (identity, kek)
                    ON DELETE CASCADE,
                FOREIGN KEY (identity, root) REFERENCES keys (identity, id) ON DELETE CASCADE
             );
             {}{}",
            scoped("kek_wraps", true),
            scoped("kek_rotation_wraps", false),
        ),
        // v10: usage limits.
        "ALTER TABLE keys ADD COLUMN usage BIGINT;
         ALTER TABLE keys ADD COLUMN not_after BIGINT;"
            .to_string(),
        // v11: devices (`crate::devices`): enrolled devices and enrollment requests.
        format!(
            "CREATE TABLE devices (
                {SCOPE},
                id           TEXT COLLATE \"C\" NOT NULL,
                state        TEXT NOT NULL CHECK (state IN ('request', 'enrolled')),
                public_key   BYTEA NOT NULL,
                token_serial TEXT,
                label        TEXT,
                body         BYTEA NOT NULL,
                enrolled_by  TEXT,
                signature    BYTEA,
                created      BIGINT NOT NULL,
                mac          BYTEA,
                PRIMARY KEY (identity, id)
             );
             {}",
            scoped("devices", true),
        ),
    ]
}
