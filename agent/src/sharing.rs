//! Sharing DEKs between users: seal a sharing DEK to a recipient's public key, and open a share
//! addressed to one of our keypairs into our keystore.
//!
//! Shares are HPKE (RFC 9180) DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM in auth mode
//! with the sender's keypair (`keyward_identity::SealedShare`). An opened DEK keeps its id, so
//! data the sender encrypted under it (whose Cryppo `ad` names that id) decrypts for the
//! recipient as it is. For Cryppo interop, a DEK sealed to an RSA public key is a Cryppo
//! `Rsa4096` string (RSA-OAEP, as Meeco's connections exchange keys); that format carries neither
//! the DEK's id nor its sender. Only DEKs created with purpose `sharing` are ever sealed: a
//! personal DEK never leaves its owner this way.

use crate::error::{AgentError, Defect, Existing, Problem, Unverified, WrongKey};
use crate::hierarchy::Hierarchy;
use crate::keystore::Purpose;
use crate::keystore::{KeyKind, KeyRecord};
use keyward_identity::share::{Dek, SealedShare, ShareError};
use keyward_identity::PublicKey;
use rand_core::OsRng;
use uuid::Uuid;
use zeroize::Zeroizing;

fn parse_key(arg: &'static str, text: &str) -> Result<PublicKey, AgentError> {
    PublicKey::parse(text).map_err(|e| AgentError::invalid(arg, Problem::NotPublicKey(e)))
}

impl Hierarchy {
    /// The plaintext of a sharing DEK, for sealing it to someone.
    fn sharing_dek_bytes(&self, rec: &KeyRecord) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        Self::require_active(rec)?;
        if rec.purpose != Some(Purpose::Sharing) {
            return Err(AgentError::WrongKey(WrongKey::PersonalDek { id: rec.id }));
        }
        let kek = self.parent_kek(rec)?;
        self.permit(rec, crate::limits::Usage::Share)?;
        let wrapped = self.wrapped(rec)?;
        self.with_recovery(|| Ok(self.kek_handle(&kek)?.export_dek(wrapped)?))
    }

    /// Seal a sharing DEK to `to` (did:key, PEM or JWK), authenticated by keypair `from`; to an
    /// RSA public key PEM, a Cryppo `Rsa4096` string.
    pub fn share_seal(
        &self,
        dek: &str,
        to: &str,
        from: Option<&str>,
    ) -> Result<String, AgentError> {
        self.root_record("share.seal")?;
        let rec = self.record(dek, KeyKind::Dek)?;
        let recipient = match PublicKey::parse(to) {
            Ok(k) => k,
            Err(p256) if to.contains("-----BEGIN") => {
                let raw = self.sharing_dek_bytes(&rec)?;
                let sealed = keyward_envelope::rsa::encrypt(to, &raw).map_err(|rsa| {
                    AgentError::invalid("to", Problem::NeitherP256NorRsa { p256, rsa })
                })?;
                tracing::info!(dek = %rec.id, "DEK sealed for sharing as Rsa4096");
                return Ok(sealed);
            }
            Err(e) => return Err(AgentError::invalid("to", Problem::NotPublicKey(e))),
        };
        let raw = self.sharing_dek_bytes(&rec)?;
        let sender_rec = self.choose_keypair(from)?;
        self.permit(&sender_rec, crate::limits::Usage::Share)?;
        let sender = self.unwrap_keypair(&sender_rec)?;
        let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
            let (len, expected) = (raw.len(), 32);
            AgentError::bad_record(rec.kind, rec.id, Defect::BadLength { len, expected })
        })?;
        let key = Dek::from_bytes(bytes);
        let share = SealedShare::seal(&sender, &recipient, &key, rec.id, "sharing", &mut OsRng)
            .map_err(AgentError::crypto("share.seal"))?;
        tracing::info!(dek = %rec.id, to = %recipient.to_did_key(), "DEK sealed for sharing");
        Ok(share.to_base64url())
    }

    /// Import a received DEK under a KEK with the given id.
    fn import_shared(
        &self,
        id: Uuid,
        dek: &[u8],
        kek: Option<&str>,
        label: String,
    ) -> Result<(), AgentError> {
        if self.ks.get(&id)?.is_some() {
            return Err(AgentError::AlreadyExists(Existing::KeyId { id }));
        }
        if dek == crate::hierarchy::integrity_binding() {
            // Wrapped under a KEK, this value would let whoever chose it compute a MAC key for
            // a keystore whose integrity records were swapped for that KEK's (hierarchy.rs).
            return Err(AgentError::invalid(
                "sealed",
                Problem::Reserved("this key value cannot be imported"),
            ));
        }
        let kek = self.choose_kek(kek)?;
        let w = self.with_recovery(|| Ok(self.kek_handle(&kek)?.wrap_secret(dek)?))?;
        let mut rec = KeyRecord::new(KeyKind::Dek, w.scheme.as_str());
        rec.id = id;
        rec.parent = Some(kek.id);
        rec.purpose = Some(Purpose::Sharing);
        rec.wrapped = Some(w.bytes);
        rec.label = Some(label);
        self.ks.insert(&rec)?;
        tracing::info!(dek = %rec.id, "shared DEK imported");
        Ok(())
    }

    /// Open a share and import its DEK under a KEK. A Keyward share must be addressed to one of
    /// our keypairs (and, with `from`, come from that sender); a Cryppo `Rsa4096` string must
    /// open with one of our RSA keypairs, and its DEK gets `id` or a new one.
    /// Returns the DEK id and the sender.
    pub fn share_open(
        &self,
        sealed: &str,
        kek: Option<&str>,
        from: Option<&str>,
        id: Option<&str>,
    ) -> Result<(String, String), AgentError> {
        self.root_record("share.open")?;
        let sealed = sealed.trim();
        if sealed.starts_with("Rsa4096.") {
            let id = match id {
                Some(i) => {
                    Uuid::parse_str(i).map_err(|_| AgentError::invalid("id", Problem::NotUuid))?
                }
                None => Uuid::new_v4(),
            };
            let dek = self.rsa_open(sealed)?;
            if dek.len() != 32 {
                return Err(AgentError::invalid(
                    "sealed",
                    Problem::KeyLength {
                        len: dek.len(),
                        expected: 32,
                    },
                ));
            }
            self.import_shared(id, &dek, kek, "shared as Rsa4096".into())?;
            return Ok((id.to_string(), "rsa4096 (unauthenticated)".into()));
        }
        let share = SealedShare::from_base64url(sealed)
            .map_err(|e| AgentError::invalid("sealed", Problem::NotSealedShare(e)))?;
        let expected = from.map(|f| parse_key("from", f)).transpose()?;
        let mine = self.keypair_by_key_id(share.recipient())?.ok_or_else(|| {
            AgentError::WrongKey(WrongKey::NotHeld {
                what: "share",
                key: *share.recipient(),
            })
        })?;
        self.permit(&mine, crate::limits::Usage::Decrypt)?;
        let me = self.unwrap_keypair(&mine)?;
        let opened = share.open(&me, expected.as_ref()).map_err(|e| match e {
            ShareError::UnexpectedSender { .. } | ShareError::DecryptFailed => {
                AgentError::VerifyFailed(Unverified::Share(e))
            }
            other => AgentError::invalid("sealed", Problem::NotSealedShare(other)),
        })?;
        if id.is_some_and(|i| !i.eq_ignore_ascii_case(&opened.dek_id.to_string())) {
            return Err(AgentError::invalid(
                "id",
                Problem::Conflicts(
                    "a Keyward share, which names its DEK's id (`id` is only for Rsa4096 shares)",
                ),
            ));
        }
        let sender = opened.sender.to_did_key();
        self.import_shared(
            opened.dek_id,
            opened.dek.as_bytes(),
            kek,
            format!("shared by {sender}"),
        )?;
        Ok((opened.dek_id.to_string(), sender))
    }
}
