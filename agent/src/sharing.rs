//! Sharing DEKs between users: seal a sharing DEK to a recipient's public key, and open a share
//! addressed to one of our keypairs into our keystore.
//!
//! Shares are HPKE (RFC 9180) DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM in auth mode
//! with the sender's keypair (`keyward_identity::SealedShare`). An opened DEK keeps its id, so
//! data the sender encrypted under it (whose Cryppo `ad` names that id) decrypts for the
//! recipient as it is. Only DEKs created with purpose `sharing` are ever sealed: a personal DEK
//! never leaves its owner this way.

use crate::error::AgentError;
use crate::hierarchy::Hierarchy;
use crate::keystore::{KeyKind, KeyRecord};
use keyward_identity::share::{Dek, SealedShare, ShareError};
use keyward_identity::PublicKey;
use keyward_proto::ops::Purpose;
use rand_core::OsRng;

fn parse_key(what: &str, text: &str) -> Result<PublicKey, AgentError> {
    PublicKey::parse(text).map_err(|e| AgentError::InvalidArgs(format!("{what}: {e}")))
}

impl Hierarchy {
    /// Seal a sharing DEK to `to` (did:key, PEM or JWK), authenticated by keypair `from`.
    pub fn share_seal(
        &self,
        dek: &str,
        to: &str,
        from: Option<&str>,
    ) -> Result<String, AgentError> {
        self.root_record("share.seal")?;
        let recipient = parse_key("recipient", to)?;
        let rec = self.record(dek, KeyKind::Dek)?;
        Self::require_active(&rec)?;
        if rec.purpose != Some(Purpose::Sharing) {
            return Err(AgentError::WrongKey(format!(
                "DEK {dek} is a personal DEK: only DEKs created with --purpose sharing are sealed to others"
            )));
        }
        let sender_rec = self.choose_keypair(from)?;
        let sender = self.unwrap_keypair(&sender_rec)?;
        let kek = self.parent_kek(&rec)?;
        let wrapped = self.wrapped(&rec)?;
        let raw = self.with_recovery(|| Ok(self.kek_handle(&kek)?.export_dek(wrapped)?))?;
        let bytes: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| AgentError::Internal(format!("DEK {dek} is not 32 bytes")))?;
        let key = Dek::from_bytes(bytes);
        let share = SealedShare::seal(&sender, &recipient, &key, rec.id, "sharing", &mut OsRng)
            .map_err(|e| AgentError::Internal(format!("share.seal: {e}")))?;
        tracing::info!(dek = %rec.id, to = %recipient.to_did_key(), "DEK sealed for sharing");
        Ok(share.to_base64url())
    }

    /// Open a share addressed to one of our keypairs and import its DEK under a KEK.
    /// Returns the DEK id and the sender's did:key.
    pub fn share_open(
        &self,
        sealed: &str,
        kek: Option<&str>,
        from: Option<&str>,
    ) -> Result<(String, String), AgentError> {
        self.root_record("share.open")?;
        let share = SealedShare::from_base64url(sealed)
            .map_err(|e| AgentError::InvalidArgs(format!("not a sealed share: {e}")))?;
        let expected = from.map(|f| parse_key("expected sender", f)).transpose()?;
        let mine = self.keypair_by_key_id(share.recipient())?.ok_or_else(|| {
            AgentError::WrongKey(format!(
                "the share is sealed to key {}, which this agent does not hold",
                share.recipient()
            ))
        })?;
        let me = self.unwrap_keypair(&mine)?;
        let opened = share.open(&me, expected.as_ref()).map_err(|e| match e {
            ShareError::UnexpectedSender { .. } | ShareError::DecryptFailed => {
                AgentError::VerifyFailed(format!("share.open: {e}"))
            }
            other => AgentError::InvalidArgs(format!("share.open: {other}")),
        })?;
        if self.ks.get(&opened.dek_id)?.is_some() {
            return Err(AgentError::AlreadyExists(format!(
                "a key with id {} exists already in this keystore",
                opened.dek_id
            )));
        }
        let kek = self.choose_kek(kek)?;
        let w = self
            .with_recovery(|| Ok(self.kek_handle(&kek)?.wrap_secret(opened.dek.as_bytes())?))?;
        let mut rec = KeyRecord::new(KeyKind::Dek, w.scheme);
        rec.id = opened.dek_id;
        rec.parent = Some(kek.id);
        rec.purpose = Some(Purpose::Sharing);
        rec.wrapped = Some(w.bytes);
        let sender = opened.sender.to_did_key();
        rec.label = Some(format!("shared by {sender}"));
        self.ks.insert(&rec)?;
        tracing::info!(dek = %rec.id, from = %sender, "shared DEK imported");
        Ok((rec.id.to_string(), sender))
    }
}
