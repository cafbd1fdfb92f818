//! The `devices` table on PostgreSQL (schema v11; `crate::devices` is the design), with the
//! same MAC bodies as SQLite (`device_body`). It must never write an enrolled row without its
//! MAC.

use super::{pg, pool_err, PgStore};
use crate::keystore::records::{device_body, device_verified, DeviceRow};
use crate::keystore::{KeystoreError, MacKey};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

const COLUMNS: &str =
    "id, state, public_key, token_serial, label, body, enrolled_by, signature, created, mac";

fn from_row(r: &tokio_postgres::Row) -> Result<(DeviceRow, Option<Vec<u8>>), KeystoreError> {
    const OP: &str = "read device";
    let id: String = r.try_get(0).map_err(pg(OP))?;
    let by: Option<String> = r.try_get(6).map_err(pg(OP))?;
    let created: i64 = r.try_get(8).map_err(pg(OP))?;
    let bad = |s: &str| KeystoreError::Tampered {
        id: s.to_string(),
        what: "device row: not a UUID".into(),
    };
    Ok((
        DeviceRow {
            id: Uuid::parse_str(&id).map_err(|_| bad(&id))?,
            state: r.try_get(1).map_err(pg(OP))?,
            public_key: r.try_get(2).map_err(pg(OP))?,
            token_serial: r.try_get(3).map_err(pg(OP))?,
            label: r.try_get(4).map_err(pg(OP))?,
            body: r.try_get(5).map_err(pg(OP))?,
            enrolled_by: match by {
                Some(b) => Some(Uuid::parse_str(&b).map_err(|_| bad(&b))?),
                None => None,
            },
            signature: r.try_get(7).map_err(pg(OP))?,
            created: created.max(0) as u64,
        },
        r.try_get(9).map_err(pg(OP))?,
    ))
}

/// `Keystore::rekey_integrity` (inside its transaction `c`): every enrolled row checked under
/// `old` (a row that does not verify aborts the rekey) and re-MAC'd under `new`. Requests are
/// left as they are: their MAC, if any, is never checked. Returns how many rows were re-MAC'd.
pub(super) async fn remac_devices<C: GenericClient>(
    c: &C,
    old: &MacKey,
    new: &MacKey,
) -> Result<usize, KeystoreError> {
    let rows = c
        .query(&format!("SELECT {COLUMNS} FROM devices"), &[])
        .await
        .map_err(pg("rekey: read devices"))?;
    let mut n = 0;
    for r in &rows {
        let (d, mac) = from_row(r)?;
        if d.state == "request" {
            continue;
        }
        let d = device_verified(Some(old), d, mac)?;
        c.execute(
            "UPDATE devices SET mac = $2, row_version = row_version + 1 WHERE id = $1",
            &[&d.id.to_string(), &new.tag(&device_body(&d))],
        )
        .await
        .map_err(pg("rekey: device"))?;
        n += 1;
    }
    Ok(n)
}

/// `keystore migrate`: every row in (created, id) order, enrolled rows checked under `key`.
pub(super) async fn read_devices<C: GenericClient>(
    c: &C,
    key: &MacKey,
) -> Result<Vec<DeviceRow>, KeystoreError> {
    let rows = c
        .query(&format!("SELECT {COLUMNS} FROM devices"), &[])
        .await
        .map_err(pg("migrate: read devices"))?;
    let mut out = rows
        .iter()
        .map(|r| {
            let (d, mac) = from_row(r)?;
            device_verified(Some(key), d, mac)
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by_key(|d| (d.created, d.id));
    Ok(out)
}

/// `keystore migrate`: write `d` (into an empty keystore), MAC'd under `key` as
/// [`PgStore::device_put`] does with the key loaded.
pub(super) async fn insert_device<C: GenericClient>(
    c: &C,
    key: &MacKey,
    d: &DeviceRow,
) -> Result<(), KeystoreError> {
    c.execute(
        &format!(
            "INSERT INTO devices ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ),
        &[
            &d.id.to_string(),
            &d.state,
            &d.public_key,
            &d.token_serial,
            &d.label,
            &d.body,
            &d.enrolled_by.map(|u| u.to_string()),
            &d.signature,
            &(d.created as i64),
            &key.tag(&device_body(d)),
        ],
    )
    .await
    .map_err(pg("migrate: write device"))?;
    Ok(())
}

impl PgStore {
    /// As `SqliteStore::device_put`.
    pub fn device_put(&self, d: &DeviceRow) -> Result<(), KeystoreError> {
        let key = self.key();
        if d.state != "request" && key.is_none() {
            return Err(KeystoreError::Corrupt {
                id: d.id.to_string(),
                what: "an enrolled device row needs the MAC key".into(),
            });
        }
        let mac = key.map(|k| k.tag(&device_body(d)));
        let d = d.clone();
        self.run(move |sh| async move {
            const OP: &str = "write device";
            let c = sh.pool.get().await.map_err(pool_err(OP))?;
            c.execute(
                &format!(
                    "INSERT INTO devices ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                     ON CONFLICT (identity, id) DO UPDATE SET state = excluded.state,
                        public_key = excluded.public_key, token_serial = excluded.token_serial,
                        label = excluded.label, body = excluded.body,
                        enrolled_by = excluded.enrolled_by, signature = excluded.signature,
                        created = excluded.created, mac = excluded.mac,
                        row_version = devices.row_version + 1"
                ),
                &[
                    &d.id.to_string(),
                    &d.state,
                    &d.public_key,
                    &d.token_serial,
                    &d.label,
                    &d.body,
                    &d.enrolled_by.map(|u| u.to_string()),
                    &d.signature,
                    &(d.created as i64),
                    &mac,
                ],
            )
            .await
            .map_err(pg(OP))?;
            Ok(())
        })
    }

    pub fn device_get(&self, id: &Uuid) -> Result<Option<DeviceRow>, KeystoreError> {
        let key = self.key();
        let id = id.to_string();
        self.run(move |sh| async move {
            const OP: &str = "read device";
            let c = sh.pool.get().await.map_err(pool_err(OP))?;
            let row = c
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM devices WHERE id = $1"),
                    &[&id],
                )
                .await
                .map_err(pg(OP))?;
            row.map(|r| {
                let (d, mac) = from_row(&r)?;
                device_verified(key.as_deref(), d, mac)
            })
            .transpose()
        })
    }

    pub fn devices(&self) -> Result<Vec<DeviceRow>, KeystoreError> {
        let key = self.key();
        self.run(move |sh| async move {
            const OP: &str = "read devices";
            let c = sh.pool.get().await.map_err(pool_err(OP))?;
            let rows = c
                .query(
                    &format!("SELECT {COLUMNS} FROM devices ORDER BY created, id"),
                    &[],
                )
                .await
                .map_err(pg(OP))?;
            rows.iter()
                .map(|r| {
                    let (d, mac) = from_row(r)?;
                    device_verified(key.as_deref(), d, mac)
                })
                .collect()
        })
    }

    pub fn device_delete(&self, id: &Uuid) -> Result<bool, KeystoreError> {
        let id = id.to_string();
        self.run(move |sh| async move {
            const OP: &str = "delete device";
            let c = sh.pool.get().await.map_err(pool_err(OP))?;
            let n = c
                .execute("DELETE FROM devices WHERE id = $1", &[&id])
                .await
                .map_err(pg(OP))?;
            Ok(n > 0)
        })
    }
}
