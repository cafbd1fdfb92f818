//! `PgStore`'s record methods beyond the basic ones (`postgres.rs`): usage limits, minimum
//! versions, revocation of a tree, the cluster-root replacement and SSH flags, mirroring
//! `Keystore`'s. Read-modify-write calls whose change is computed by the caller
//! (`update_limits`) read the row with its `row_version`, run the change on the caller's thread
//! and write back only if the row is unchanged: otherwise `Conflict`.
//!
//! Like the rest of the backend it must never write a row without MACing it (while the key is
//! loaded) and never widen a query beyond what row-level security gives this role.

use super::{
    get_key, insert_key, insert_revocation, pg, pool_err, put_metas, set_state, update_key, PgStore,
};
use crate::keystore::{KeyKind, KeyRecord, KeyState, KeystoreError, Revocation, SshFlags};
use uuid::Uuid;

impl PgStore {
    /// The row and its version, checked while the MAC key is loaded.
    fn read_row(&self, id: &Uuid) -> Result<Option<(KeyRecord, i64)>, KeystoreError> {
        let key = self.key();
        let id = *id;
        self.run(move |sh| async move {
            let c = sh.pool.get().await.map_err(pool_err("read key"))?;
            get_key(&c, key.as_deref(), &id).await
        })
    }

    /// Write a changed row back if its version is still `rv` (else `Conflict`).
    fn write_row(&self, r: KeyRecord, rv: i64, op: &'static str) -> Result<(), KeystoreError> {
        let key = self.key();
        self.run(move |sh| async move {
            let c = sh.pool.get().await.map_err(pool_err(op))?;
            update_key(&c, key.as_deref(), &r, rv, op).await
        })?;
        self.changed();
        Ok(())
    }

    /// Change a key's usage limits and `exportable`, as [`crate::keystore::Keystore::update_limits`]:
    /// `change` sees the row as it is and answers the new values, or refuses. A row changed by
    /// another agent between the read and the write is `Conflict`.
    pub fn update_limits<E: From<KeystoreError>>(
        &self,
        id: &Uuid,
        change: impl FnOnce(&KeyRecord) -> Result<(Option<u32>, Option<u64>, bool), E>,
    ) -> Result<Option<KeyRecord>, E> {
        let Some((mut r, rv)) = self.read_row(id)? else {
            return Ok(None);
        };
        let (usage, not_after, exportable) = change(&r)?;
        r.usage = usage;
        r.not_after = not_after;
        r.exportable = exportable;
        self.write_row(r.clone(), rv, "set limits")?;
        Ok(Some(r))
    }

    /// Set a key's minimum version, re-MACing the row. Returns the record as it was before, or
    /// `None` when there is no such key.
    pub fn set_min_version(&self, id: &Uuid, min: u32) -> Result<Option<KeyRecord>, KeystoreError> {
        let Some((before, rv)) = self.read_row(id)? else {
            return Ok(None);
        };
        let mut r = before.clone();
        r.min_version = Some(min);
        self.write_row(r, rv, "set min version")?;
        Ok(Some(before))
    }

    /// Revoke key `id` and its children that are not revoked yet, in one transaction. Returns
    /// the ids revoked (`id` first; empty when there is no such key).
    pub fn revoke_tree(&self, id: &Uuid) -> Result<Vec<Uuid>, KeystoreError> {
        let key = self.key();
        let id = *id;
        let ids = self.run(move |sh| async move {
            let key = key.as_deref();
            let mut c = sh.pool.get().await.map_err(pool_err("revoke"))?;
            let tx = c.transaction().await.map_err(pg("begin revoke"))?;
            if get_key(&tx, key, &id).await?.is_none() {
                return Ok(Vec::new());
            }
            let mut ids = vec![id];
            let children = super::query_keys(
                &tx,
                key,
                "read children",
                "parent = $1 AND state != 'revoked'",
                &[&id.to_string()],
            )
            .await?;
            ids.extend(children.into_iter().map(|(r, _)| r.id));
            for i in &ids {
                set_state(&tx, key, i, KeyState::Revoked).await?;
            }
            tx.commit().await.map_err(pg("commit revoke"))?;
            Ok(ids)
        })?;
        self.changed();
        Ok(ids)
    }

    /// Replace the cluster root in one transaction, as
    /// [`crate::keystore::Keystore::replace_root`]: old root → `state`, new root inserted,
    /// revocation kept, each child re-issued (issuer and statement, re-MAC'd), `metas` written.
    pub fn replace_root(
        &self,
        old: &Uuid,
        state: KeyState,
        new: &KeyRecord,
        revocation: Option<&Revocation>,
        children: &[(Uuid, Vec<u8>)],
        metas: &[(&str, Option<&str>)],
    ) -> Result<(), KeystoreError> {
        let key = self.key();
        let (old, new, revocation, children) =
            (*old, new.clone(), revocation.cloned(), children.to_vec());
        let metas: Vec<(String, Option<String>)> = metas
            .iter()
            .map(|(n, v)| (n.to_string(), v.map(str::to_string)))
            .collect();
        self.run(move |sh| async move {
            let key = key.as_deref();
            let mut c = sh.pool.get().await.map_err(pool_err("replace root"))?;
            let tx = c.transaction().await.map_err(pg("begin replace root"))?;
            set_state(&tx, key, &old, state).await?;
            insert_key(&tx, key, &new).await?;
            if let Some(r) = &revocation {
                insert_revocation(&tx, key, r).await?;
            }
            for (id, statement) in children {
                let Some((mut r, rv)) = get_key(&tx, key, &id).await? else {
                    continue;
                };
                r.issuer = Some(new.id);
                r.statement = Some(statement);
                update_key(&tx, key, &r, rv, "re-issue a child of the cluster root").await?;
            }
            put_metas(&tx, &metas).await?;
            tx.commit().await.map_err(pg("commit replace root"))
        })?;
        self.changed();
        Ok(())
    }

    /// The SSH flags of every active keypair that has any.
    pub fn ssh_flags(&self) -> Result<Vec<(Uuid, SshFlags)>, KeystoreError> {
        Ok(self
            .list(KeyKind::Keypair, None)?
            .into_iter()
            .filter(|r| r.ssh.0 != 0 && r.state == KeyState::Active)
            .map(|r| (r.id, r.ssh))
            .collect())
    }

    /// Set a keypair's SSH flags, re-MACing the row; false when there is no such keypair.
    pub fn set_ssh_flags(&self, id: &Uuid, flags: SshFlags) -> Result<bool, KeystoreError> {
        let Some((mut r, rv)) = self.read_row(id)? else {
            return Ok(false);
        };
        if r.kind != KeyKind::Keypair {
            return Ok(false);
        }
        r.ssh = flags;
        self.write_row(r, rv, "set ssh flags")?;
        Ok(true)
    }

    /// Insert a keypair with its SSH flags.
    pub fn insert_with_ssh_flags(
        &self,
        r: &KeyRecord,
        flags: SshFlags,
    ) -> Result<(), KeystoreError> {
        let mut r = r.clone();
        r.ssh = flags;
        self.insert(&r)
    }
}
