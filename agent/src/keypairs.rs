//! Keypairs: P-256 keys for signing, key agreement and identity (did:key).
//!
//! The private half is generated in the agent, wrapped under a KEK at once (AES-KWP, inside the
//! token for a PKCS#11 root) and stored wrapped; it is unwrapped into memory only for the one
//! operation that needs it and zeroized when that ends (`LocalKey` wipes on drop). This module
//! must never return or log a private key.

use crate::error::AgentError;
use crate::hierarchy::Hierarchy;
use crate::keystore::{KeyKind, KeyRecord, KeyState};
use keyward_identity::{ecdsa, LocalKey, PublicKey, SigEncoding};
use keyward_proto::ops::KeyInfo;
use rand_core::OsRng;
use uuid::Uuid;

impl Hierarchy {
    /// The private half of a keypair, in memory for as long as the caller holds it.
    pub(crate) fn unwrap_keypair(&self, rec: &KeyRecord) -> Result<LocalKey, AgentError> {
        let kek = self.parent_kek(rec)?;
        let wrapped = self.wrapped(rec)?;
        let secret = self.with_recovery(|| Ok(self.kek_handle(&kek)?.export_dek(wrapped)?))?;
        let bytes: &[u8; 32] = secret.as_slice().try_into().map_err(|_| {
            AgentError::Internal(format!("keypair {} is not a P-256 scalar", rec.id))
        })?;
        LocalKey::from_bytes(bytes)
            .map_err(|_| AgentError::Internal(format!("keypair {} is not a P-256 scalar", rec.id)))
    }

    /// The public key a keypair record holds.
    pub(crate) fn public_of(rec: &KeyRecord) -> Result<PublicKey, AgentError> {
        rec.public_key
            .as_deref()
            .and_then(|b| PublicKey::from_sec1_bytes(b).ok())
            .ok_or_else(|| {
                AgentError::Internal(format!("keypair {} has no readable public key", rec.id))
            })
    }

    /// Wrap `key` under `kek` and describe it as a new keypair record (not yet stored).
    pub(crate) fn keypair_record(
        &self,
        key: &LocalKey,
        kek: &KeyRecord,
    ) -> Result<KeyRecord, AgentError> {
        let scalar = key.to_bytes();
        let w = self.with_recovery(|| Ok(self.kek_handle(kek)?.wrap_secret(scalar.as_ref())?))?;
        let mut rec = KeyRecord::new(KeyKind::Keypair, w.scheme);
        rec.parent = Some(kek.id);
        rec.wrapped = Some(w.bytes);
        rec.public_key = Some(key.public_key().to_sec1_compressed().to_vec());
        Ok(rec)
    }

    pub fn keypair_create(
        &self,
        kek: Option<&str>,
        label: Option<String>,
    ) -> Result<Uuid, AgentError> {
        self.root_record("keypair.create")?;
        let kek = self.choose_kek(kek)?;
        let key = LocalKey::generate(&mut OsRng);
        let mut rec = self.keypair_record(&key, &kek)?;
        rec.label = label;
        self.ks.insert(&rec)?;
        tracing::info!(id = %rec.id, "keypair created");
        Ok(rec.id)
    }

    pub fn keypair_list(&self) -> Result<Vec<KeyInfo>, AgentError> {
        Ok(self
            .ks
            .list(KeyKind::Keypair, None)?
            .iter()
            .map(KeyRecord::info)
            .collect())
    }

    pub fn keypair_show(&self, id: &str) -> Result<KeyInfo, AgentError> {
        Ok(self.record(id, KeyKind::Keypair)?.info())
    }

    /// Delete a keypair. Refused while it vouches for node keys (revoke or delete those first).
    pub fn keypair_delete(&self, id: &str) -> Result<Uuid, AgentError> {
        let rec = self.record(id, KeyKind::Keypair)?;
        let vouched = self
            .ks
            .list(KeyKind::Keypair, None)?
            .into_iter()
            .filter(|k| k.issuer == Some(rec.id) && k.state == KeyState::Active)
            .count();
        if vouched > 0 {
            return Err(AgentError::WrongKey(format!(
                "keypair {id} vouches for {vouched} active node key(s): revoke them first"
            )));
        }
        self.ks.delete(&rec.id)?;
        tracing::info!(id = %rec.id, "keypair deleted");
        Ok(rec.id)
    }

    /// An active keypair by id, or the only active keypair that is not a node key.
    pub(crate) fn choose_keypair(&self, id: Option<&str>) -> Result<KeyRecord, AgentError> {
        if let Some(id) = id {
            let k = self.record(id, KeyKind::Keypair)?;
            Self::require_active(&k)?;
            return Ok(k);
        }
        let mut own: Vec<_> = self
            .ks
            .list(KeyKind::Keypair, None)?
            .into_iter()
            .filter(|k| k.state == KeyState::Active && k.name.is_none())
            .collect();
        match own.len() {
            1 => Ok(own.remove(0)),
            0 => Err(AgentError::NotFound {
                kind: "keypair",
                id: "(none exists: create one with `keyward keypair create`)".into(),
            }),
            n => Err(AgentError::Ambiguous(format!("{n} keypairs: name one"))),
        }
    }

    /// The active keypair whose public key has this key id, if this agent holds it.
    pub(crate) fn keypair_by_key_id(
        &self,
        kid: &keyward_identity::KeyId,
    ) -> Result<Option<KeyRecord>, AgentError> {
        for k in self.ks.list(KeyKind::Keypair, None)? {
            if k.state != KeyState::Revoked && Self::public_of(&k)?.key_id() == *kid {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// ECDSA P-256 / SHA-256 over `data`: DER, or raw r‖s.
    pub fn sign(&self, key: &str, data: &[u8], raw: bool) -> Result<Vec<u8>, AgentError> {
        self.root_record("sign")?;
        let rec = self.record(key, KeyKind::Keypair)?;
        Self::require_active(&rec)?;
        let local = self.unwrap_keypair(&rec)?;
        let enc = if raw {
            SigEncoding::Raw
        } else {
            SigEncoding::Der
        };
        ecdsa::sign(&local, data, enc).map_err(|e| AgentError::Internal(format!("sign: {e}")))
    }
}
