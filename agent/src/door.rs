//! The operations the PKCS#11 module (`pkcs11-shim`) needs beyond the rest of the protocol: the
//! root's id, ECDSA over a caller's digest, raw AES-256-GCM under a DEK with the caller's IV, AAD
//! and tag length, ECDH with a keypair, and random bytes.
//!
//! Policy is the hierarchy's: the same active/retired/revoked rules as `sign`, `encrypt` and
//! `decrypt`, and the DEK stays wherever its KEK keeps it (inside the token on PKCS#11 roots).
//! This module must never return key material: a shared ECDH secret is the one secret it gives,
//! and only to the caller that names its own keypair and a peer.

use crate::error::{AgentError, DecryptFailure, Defect, Problem, WrongKey};
use crate::hierarchy::Hierarchy;
use crate::keystore::{Algorithm, KeyKind, KeyState};
use keyward_identity::PublicKey;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

/// The GCM tag is 16 bytes; the caller may ask for a shorter one (PKCS#11 `ulTagBits`).
const FULL_TAG: usize = 16;
/// Shortest tag accepted (32 bits, NIST SP 800-38D's floor for special uses).
const MIN_TAG: usize = 4;

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// ECDSA's reading of a digest of any length as a P-256 scalar input: the leftmost 32 bytes, or
/// the digest left-padded with zeros (the same integer).
pub fn digest_to_32(digest: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if digest.len() >= 32 {
        out.copy_from_slice(&digest[..32]);
    } else {
        out[32 - digest.len()..].copy_from_slice(digest);
    }
    out
}

impl Hierarchy {
    /// The root's keystore id (once initialized): stable for the root's life.
    pub fn root_id(&self) -> Result<Option<String>, AgentError> {
        Ok(self.ks.root()?.map(|r| r.id.to_string()))
    }

    /// ECDSA P-256 over a caller's digest: raw r‖s. The per-signature path of the PKCS#11
    /// module's `C_Sign`: the keypair's checks run against the in-memory copy of its record
    /// (dropped whenever the keystore's generation moves) and a software key signs from the one
    /// key cache, so a signature costs no keystore read, no record MAC and no unwrap once the key
    /// is cached; a token keypair signs with its cached object handle (`root/pkcs11/keypair.rs`).
    pub fn sign_digest(&self, key: &str, digest: &[u8]) -> Result<Vec<u8>, AgentError> {
        self.require_unlocked("sign.digest")?;
        if digest.is_empty() || digest.len() > 64 {
            return Err(AgentError::invalid(
                "digest",
                Problem::OutOfRange {
                    min: 1,
                    max: 64,
                    unit: "bytes",
                },
            ));
        }
        let rec = self.keypair_for_use(key)?;
        Self::require_active(&rec)?;
        self.permit(&rec, crate::limits::Usage::Sign)?;
        let digest = digest_to_32(digest);
        if crate::keypairs::on_token(&rec) {
            let locator = rec
                .locator
                .as_deref()
                .ok_or_else(|| AgentError::bad_record(rec.kind, rec.id, Defect::NoLocator))?;
            return self.token_sign(locator, &digest);
        }
        Self::require_p256(&rec)?;
        let sig = self
            .cached_key(&rec)?
            .key()
            .sign_prehash(&digest)
            .map_err(AgentError::crypto("sign.digest"))?;
        Ok(sig.to_vec())
    }

    fn gcm_params(iv: &[u8], tag_len: u8) -> Result<(&[u8; 12], usize), AgentError> {
        let iv: &[u8; 12] = iv
            .try_into()
            .map_err(|_| AgentError::invalid("iv", Problem::Length { expected: 12 }))?;
        let tag_len = usize::from(tag_len);
        if !(MIN_TAG..=FULL_TAG).contains(&tag_len) {
            return Err(AgentError::invalid(
                "tag_len",
                Problem::OutOfRange {
                    min: MIN_TAG as u64,
                    max: FULL_TAG as u64,
                    unit: "bytes",
                },
            ));
        }
        Ok((iv, tag_len))
    }

    /// Raw AES-256-GCM seal under a DEK: ciphertext ‖ the tag's first `tag_len` bytes.
    pub fn gcm_seal(
        &self,
        dek_id: &str,
        iv: &[u8],
        aad: &[u8],
        tag_len: u8,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, AgentError> {
        let (iv, tag_len) = Self::gcm_params(iv, tag_len)?;
        if plaintext.len() > keyward_proto::MAX_PLAINTEXT {
            return Err(AgentError::TooLarge {
                op: "gcm.seal",
                len: plaintext.len(),
                max: keyward_proto::MAX_PLAINTEXT,
            });
        }
        let (dek, kek) = self.active_dek("gcm.seal", dek_id)?;
        let (_, wrapped) = self.dek_newest(&dek)?;
        let wrapped = &wrapped[..];
        let mut out =
            self.with_recovery(|| Ok(self.kek_handle(&kek)?.seal(wrapped, iv, aad, plaintext)?))?;
        out.truncate(plaintext.len() + tag_len);
        Ok(out)
    }

    /// Raw AES-256-GCM open under a DEK of ciphertext ‖ tag (`tag_len` bytes). A shortened tag is
    /// checked by recomputing the full one: GCM's keystream is the same for the same key and IV,
    /// so sealing the ciphertext gives the plaintext, and sealing that gives the full tag.
    pub fn gcm_open(
        &self,
        dek_id: &str,
        iv: &[u8],
        aad: &[u8],
        tag_len: u8,
        ct_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        let (iv, tag_len) = Self::gcm_params(iv, tag_len)?;
        if ct_tag.len() < tag_len {
            return Err(AgentError::DecryptFailed(DecryptFailure::ShorterThanTag));
        }
        self.require_unlocked("gcm.open")?;
        let dek = self.record_for_use(dek_id, KeyKind::Dek)?;
        // A retired DEK still decrypts what it encrypted; a revoked one does nothing.
        if dek.state == KeyState::Revoked {
            return Err(AgentError::KeyInactive {
                kind: dek.kind,
                id: dek.id,
                state: dek.state,
            });
        }
        let kek = self.parent_kek_for_use(&dek)?;
        self.permit(&dek, crate::limits::Usage::Decrypt)?;
        // PKCS#11 has no place for a DEK version: the newest is tried first, then each older
        // one down to the minimum (ARCHITECTURE.md, "DEK versions").
        let mut last = None;
        for v in (Self::min_version(&dek)..=dek.version).rev() {
            let wrapped = self.dek_version_wrapped(&dek, v)?;
            match self.gcm_open_one(&kek, &wrapped, iv, aad, tag_len, ct_tag) {
                Err(
                    e @ (AgentError::Root(crate::root::RootError::DecryptFailed { .. })
                    | AgentError::DecryptFailed(DecryptFailure::Authentication)),
                ) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or(AgentError::DecryptFailed(DecryptFailure::Authentication)))
    }

    fn gcm_open_one(
        &self,
        kek: &crate::keystore::KeyRecord,
        wrapped: &[u8],
        iv: &[u8; 12],
        aad: &[u8],
        tag_len: usize,
        ct_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        if tag_len == FULL_TAG {
            return self
                .with_recovery(|| Ok(self.kek_handle(kek)?.open(wrapped, iv, aad, ct_tag)?));
        }
        let (ct, tag) = ct_tag.split_at(ct_tag.len() - tag_len);
        let k = self.with_recovery(|| self.kek_handle(kek))?;
        let mut pt = Zeroizing::new(k.seal(wrapped, iv, b"", ct)?);
        pt.truncate(ct.len());
        let again = k.seal(wrapped, iv, aad, &pt)?;
        if again.len() != ct.len() + FULL_TAG
            || !ct_eq(&again[..ct.len()], ct)
            || !ct_eq(&again[ct.len()..ct.len() + tag_len], tag)
        {
            return Err(AgentError::DecryptFailed(DecryptFailure::Authentication));
        }
        Ok(pt)
    }

    /// ECDH (P-256, no KDF) of a wrapped keypair with a peer's SEC1 point: the shared x.
    pub fn keypair_ecdh(&self, key: &str, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        self.root_record("keypair.ecdh")?;
        let rec = self.record(key, KeyKind::Keypair)?;
        Self::require_active(&rec)?;
        if let Some(alg) = rec.algorithm.filter(|a| *a != Algorithm::P256) {
            return Err(AgentError::WrongKey(WrongKey::NotP256 { id: rec.id, alg }));
        }
        let peer = PublicKey::from_sec1_bytes(peer)
            .map_err(|e| AgentError::invalid("peer", Problem::NotP256Point(e)))?;
        self.permit(&rec, crate::limits::Usage::Derive)?;
        let local = self.unwrap_keypair(&rec)?;
        let shared = local.diffie_hellman(&peer);
        Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
    }

    /// `len` bytes from the operating system's CSPRNG.
    pub fn random(&self, len: u32) -> Result<Vec<u8>, AgentError> {
        if len > keyward_proto::ops::MAX_RANDOM {
            return Err(AgentError::TooLarge {
                op: "random",
                len: len as usize,
                max: keyward_proto::ops::MAX_RANDOM as usize,
            });
        }
        let mut out = vec![0u8; len as usize];
        OsRng.fill_bytes(&mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::digest_to_32;

    #[test]
    fn digests_read_as_ecdsa_reads_them() {
        let d = [7u8; 20];
        let x = digest_to_32(&d);
        assert_eq!(&x[..12], &[0u8; 12]);
        assert_eq!(&x[12..], &d);
        let long: Vec<u8> = (0..48).collect();
        assert_eq!(&digest_to_32(&long)[..], &long[..32]);
    }
}
