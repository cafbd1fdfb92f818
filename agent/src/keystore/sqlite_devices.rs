//! The `devices` table on SQLite (schema v11; `crate::devices` is the design): enrolled devices
//! and enrollment requests. Enrolled rows are MAC'd (`device_body`); a request is written by a
//! device that has no MAC key yet and is checked by the handshake instead. It must never write
//! an enrolled row without its MAC.

use super::{sql, SqliteStore};
use crate::keystore::records::{device_body, device_verified, DeviceRow};
use crate::keystore::{KeystoreError, MacKey};
use rusqlite::{params, Connection, OptionalExtension, Row};
use uuid::Uuid;

/// The schema step (v11). `IF NOT EXISTS`, so the step is the same whatever number it gets.
pub(super) const MIGRATION_V11: &str = "CREATE TABLE IF NOT EXISTS devices (
        id           TEXT PRIMARY KEY,
        state        TEXT NOT NULL CHECK (state IN ('request', 'enrolled')),
        public_key   BLOB NOT NULL,
        token_serial TEXT,
        label        TEXT,
        body         BLOB NOT NULL,
        enrolled_by  TEXT,
        signature    BLOB,
        created      INTEGER NOT NULL,
        mac          BLOB
     );";

const COLUMNS: &str =
    "id, state, public_key, token_serial, label, body, enrolled_by, signature, created, mac";

/// A row as read: the record (id and signer not parsed yet), its MAC, its id and signer text.
type RawDevice = (DeviceRow, Option<Vec<u8>>, String, Option<String>);

fn from_row(r: &Row<'_>) -> rusqlite::Result<RawDevice> {
    let id: String = r.get(0)?;
    let by: Option<String> = r.get(6)?;
    let created: i64 = r.get(8)?;
    Ok((
        DeviceRow {
            id: Uuid::nil(),
            state: r.get(1)?,
            public_key: r.get(2)?,
            token_serial: r.get(3)?,
            label: r.get(4)?,
            body: r.get(5)?,
            enrolled_by: None,
            signature: r.get(7)?,
            created: created.max(0) as u64,
        },
        r.get(9)?,
        id,
        by,
    ))
}

fn parse((mut d, mac, id, by): RawDevice) -> Result<(DeviceRow, Option<Vec<u8>>), KeystoreError> {
    let bad = |s: &str| KeystoreError::Tampered {
        id: s.to_string(),
        what: "device row: not a UUID".into(),
    };
    d.id = Uuid::parse_str(&id).map_err(|_| bad(&id))?;
    d.enrolled_by = match by {
        Some(b) => Some(Uuid::parse_str(&b).map_err(|_| bad(&b))?),
        None => None,
    };
    Ok((d, mac))
}

/// `Keystore::rekey_integrity`: every enrolled row checked under `old` (a row that does not
/// verify aborts the rekey) and re-MAC'd under `new`. Requests are left as they are: their MAC,
/// if any, is never checked (the handshake checks them). Returns how many rows were re-MAC'd.
pub(super) fn remac_devices(
    conn: &Connection,
    old: &MacKey,
    new: &MacKey,
) -> Result<usize, KeystoreError> {
    const OP: &str = "rekey: read devices";
    let mut st = conn
        .prepare(&format!("SELECT {COLUMNS} FROM devices"))
        .map_err(sql(OP))?;
    let raw = st
        .query_map([], from_row)
        .map_err(sql(OP))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql(OP))?;
    drop(st);
    let mut n = 0;
    for r in raw {
        let (d, mac) = parse(r)?;
        if d.state == "request" {
            continue;
        }
        let d = device_verified(Some(old), d, mac)?;
        conn.execute(
            "UPDATE devices SET mac = ?2 WHERE id = ?1",
            params![d.id.to_string(), new.tag(&device_body(&d))],
        )
        .map_err(sql("rekey: device"))?;
        n += 1;
    }
    Ok(n)
}

/// `keystore migrate`: every row in (created, id) order, enrolled rows checked under `key`.
pub(super) fn read_devices(
    conn: &Connection,
    key: &MacKey,
) -> Result<Vec<DeviceRow>, KeystoreError> {
    const OP: &str = "migrate: read devices";
    let mut st = conn
        .prepare(&format!("SELECT {COLUMNS} FROM devices"))
        .map_err(sql(OP))?;
    let raw = st
        .query_map([], from_row)
        .map_err(sql(OP))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql(OP))?;
    let mut out = raw
        .into_iter()
        .map(|r| {
            let (d, mac) = parse(r)?;
            device_verified(Some(key), d, mac)
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by_key(|d| (d.created, d.id));
    Ok(out)
}

/// `keystore migrate`: write `d` (into an empty keystore), MAC'd under `key` as
/// [`SqliteStore::device_put`] does with the key loaded.
pub(super) fn insert_device(
    conn: &Connection,
    key: &MacKey,
    d: &DeviceRow,
) -> Result<(), KeystoreError> {
    write_device(
        conn,
        "INSERT",
        d,
        Some(key.tag(&device_body(d))),
        "migrate: write device",
    )
}

/// Write one `devices` row with `mac` (`verb`: `INSERT`, or `INSERT OR REPLACE`).
fn write_device(
    conn: &Connection,
    verb: &str,
    d: &DeviceRow,
    mac: Option<Vec<u8>>,
    op: &'static str,
) -> Result<(), KeystoreError> {
    conn.execute(
        &format!(
            "{verb} INTO devices ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ),
        params![
            d.id.to_string(),
            d.state,
            d.public_key,
            d.token_serial,
            d.label,
            d.body,
            d.enrolled_by.map(|u| u.to_string()),
            d.signature,
            d.created as i64,
            mac
        ],
    )
    .map_err(sql(op))?;
    Ok(())
}

impl SqliteStore {
    /// Insert or replace a `devices` row, MAC'd when the MAC key is loaded (an enrolled row
    /// needs it).
    pub fn device_put(&self, d: &DeviceRow) -> Result<(), KeystoreError> {
        let key = self.key();
        if d.state != "request" && key.is_none() {
            return Err(KeystoreError::Corrupt {
                id: d.id.to_string(),
                what: "an enrolled device row needs the MAC key".into(),
            });
        }
        let mac = key.map(|k| k.tag(&device_body(d)));
        write_device(&self.lock(), "INSERT OR REPLACE", d, mac, "write device")
    }

    /// One `devices` row (enrolled rows checked while the MAC key is loaded).
    pub fn device_get(&self, id: &Uuid) -> Result<Option<DeviceRow>, KeystoreError> {
        let raw = self
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM devices WHERE id = ?1"),
                [id.to_string()],
                from_row,
            )
            .optional()
            .map_err(sql("read device"))?;
        let key = self.key();
        raw.map(|r| {
            let (d, mac) = parse(r)?;
            device_verified(key.as_deref(), d, mac)
        })
        .transpose()
    }

    /// Every `devices` row in (created, id) order, enrolled rows checked.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, KeystoreError> {
        let conn = self.lock();
        let mut st = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM devices ORDER BY created, id"
            ))
            .map_err(sql("read devices"))?;
        let raw = st
            .query_map([], from_row)
            .map_err(sql("read devices"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql("read devices"))?;
        drop(st);
        drop(conn);
        let key = self.key();
        raw.into_iter()
            .map(|r| {
                let (d, mac) = parse(r)?;
                device_verified(key.as_deref(), d, mac)
            })
            .collect()
    }

    pub fn device_delete(&self, id: &Uuid) -> Result<bool, KeystoreError> {
        let n = self
            .lock()
            .execute("DELETE FROM devices WHERE id = ?1", [id.to_string()])
            .map_err(sql("delete device"))?;
        Ok(n > 0)
    }
}
