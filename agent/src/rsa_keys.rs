//! RSA keypairs imported from PEM, for Cryppo `Rsa4096` shares (RSA-OAEP SHA-1, as Meeco's
//! connections exchange DEKs).
//!
//! An RSA private key is too long for AES-KWP on every token (SoftHSM's KWP is only exact for
//! 16/24/32-byte secrets), so it is stored as AES-256-GCM under its own DEK, and that DEK is
//! wrapped under the KEK like any other: `wrapped = wrapped DEK (40) ‖ IV (12) ‖ ciphertext ‖ tag`.
//! On a PKCS#11 root the GCM runs inside the token. The PEM is in agent memory only while a share
//! is opened (zeroized). This module must never return or log the private PEM.

use crate::error::{AgentError, Defect, Problem, WrongKey};
use crate::hierarchy::Hierarchy;
use crate::keystore::{KeyKind, KeyRecord, KeyState, SshFlags};
use keyward_envelope::rsa;
use rand_core::{OsRng, RngCore};
use uuid::Uuid;
use zeroize::Zeroizing;

/// Scheme of RSA keypairs: PEM under AES-256-GCM with a KEK-wrapped DEK.
pub const RSA_SCHEME: &str = "rsa-pem-gcm";
const WRAPPED_DEK_LEN: usize = 40;

fn aad(id: &Uuid) -> String {
    format!("keyward:rsa-key:{id}")
}

impl Hierarchy {
    /// Import an RSA private key (PKCS#1 or PKCS#8 PEM) under a KEK.
    pub fn keypair_import(
        &self,
        pem: &[u8],
        kek: Option<&str>,
        label: Option<String>,
    ) -> Result<Uuid, AgentError> {
        self.keypair_import_with_ssh(pem, kek, label, SshFlags::default())
    }

    /// [`Hierarchy::keypair_import`] with the keypair's SSH flags (`ssh-add` of an RSA key).
    pub(crate) fn keypair_import_with_ssh(
        &self,
        pem: &[u8],
        kek: Option<&str>,
        label: Option<String>,
        ssh: SshFlags,
    ) -> Result<Uuid, AgentError> {
        self.root_record("keypair.import")?;
        let text = std::str::from_utf8(pem)
            .map_err(|_| AgentError::invalid("pem", Problem::NotPemText))?;
        let public =
            rsa::public_pem(text).map_err(|e| AgentError::invalid("pem", Problem::NotRsaKey(e)))?;
        let kek = self.choose_kek(kek)?;
        let mut rec = KeyRecord::new(KeyKind::Keypair, RSA_SCHEME);
        let mut iv = [0u8; 12];
        OsRng.fill_bytes(&mut iv);
        let sealed = self.with_recovery(|| {
            let k = self.kek_handle(&kek)?;
            let dek = k.generate_dek()?;
            let ct = k.seal(&dek.bytes, &iv, aad(&rec.id).as_bytes(), pem)?;
            Ok([dek.bytes, iv.to_vec(), ct].concat())
        })?;
        rec.parent = Some(kek.id);
        rec.wrapped = Some(sealed);
        rec.public_key = Some(public.into_bytes());
        rec.algorithm = Some(crate::keystore::Algorithm::Rsa);
        rec.label = label;
        self.ks.insert_with_ssh_flags(&rec, ssh)?;
        tracing::info!(id = %rec.id, "RSA keypair imported");
        Ok(rec.id)
    }

    /// The private PEM of an RSA keypair, for one operation.
    pub(crate) fn rsa_private(&self, rec: &KeyRecord) -> Result<Zeroizing<String>, AgentError> {
        let kek = self.parent_kek(rec)?;
        let w = self.wrapped(rec)?;
        let truncated = || AgentError::bad_record(rec.kind, rec.id, Defect::Truncated);
        if w.len() < WRAPPED_DEK_LEN + 12 + 16 {
            return Err(truncated());
        }
        let (dek, rest) = w.split_at(WRAPPED_DEK_LEN);
        let (iv, ct) = rest.split_at(12);
        let iv: [u8; 12] = iv.try_into().map_err(|_| truncated())?;
        let pem = self.with_recovery(|| {
            Ok(self
                .kek_handle(&kek)?
                .open(dek, &iv, aad(&rec.id).as_bytes(), ct)?)
        })?;
        String::from_utf8(pem.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| AgentError::bad_record(rec.kind, rec.id, Defect::NotPem))
    }

    /// Open a Cryppo `Rsa4096` string with whichever of our RSA keypairs it was made for;
    /// returns the plaintext.
    pub(crate) fn rsa_open(&self, cryppo: &str) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        let mut tried = 0;
        for rec in self.ks.list(KeyKind::Keypair, None)? {
            if rec.scheme != RSA_SCHEME || rec.state == KeyState::Revoked {
                continue;
            }
            // Keys whose limits refuse `decrypt` (or that expired) are not tried; one that
            // asks for confirmation is confirmed before its plaintext is returned.
            if self
                .check_limits(&rec, crate::limits::Usage::Decrypt)
                .is_err()
            {
                continue;
            }
            tried += 1;
            let pem = self.rsa_private(&rec)?;
            if let Ok(pt) = rsa::decrypt(&pem, cryppo) {
                self.permit(&rec, crate::limits::Usage::Decrypt)?;
                return Ok(pt);
            }
        }
        Err(AgentError::WrongKey(if tried == 0 {
            WrongKey::NoRsaKeypair
        } else {
            WrongKey::NoRsaKeypairOpens { tried }
        }))
    }
}
