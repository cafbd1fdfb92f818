//! Keypairs: P-256 keys for signing, key agreement and identity (did:key).
//!
//! The private half is generated in the agent, wrapped under a KEK at once (AES-KWP, inside the
//! token for a PKCS#11 root) and stored wrapped; it is unwrapped into memory only for the one
//! operation that needs it and zeroized when that ends (`LocalKey` wipes on drop). This module
//! must never return or log a private key.

use crate::error::{AgentError, Choice, Defect, Internal, Missing, Problem, WrongKey};
use crate::hierarchy::Hierarchy;
use crate::key_cache::{Key, Pinned};
use crate::keystore::{Algorithm, KeyKind, KeyRecord, KeyState};
use crate::keystore::{Cursor, ListFilter, Page, PageSize};
use crate::root::Scheme;
use keyward_identity::ecdsa::{SignError, Signer};
use keyward_identity::ed25519::Ed25519Key;
use keyward_identity::p256::ecdsa::Signature;
use keyward_identity::{ecdsa, LocalKey, PublicKey, SigEncoding};

use rand_core::OsRng;
use std::sync::Arc;
use uuid::Uuid;
use zeroize::Zeroizing;

/// A keypair whose private key is a token object: signs through the root.
struct TokenSigner<'h> {
    h: &'h Hierarchy,
    locator: String,
    public: PublicKey,
}

impl Signer for TokenSigner<'_> {
    fn public_key(&self) -> PublicKey {
        self.public
    }

    fn sign_prehash(&self, digest: &[u8; 32]) -> Result<Signature, SignError> {
        let raw = self
            .h
            .token_sign(&self.locator, digest)
            .map_err(|e| SignError::Backend(Box::new(e)))?;
        Signature::from_slice(&raw).map_err(|e| SignError::Backend(Box::new(e)))
    }
}

/// A software keypair, signing with its cached key (`key_cache.rs`).
struct SoftSigner {
    key: Arc<Pinned>,
    public: PublicKey,
}

impl Signer for SoftSigner {
    fn public_key(&self) -> PublicKey {
        self.public
    }

    fn sign_prehash(&self, digest: &[u8; 32]) -> Result<Signature, SignError> {
        let raw = self
            .key
            .key()
            .sign_prehash(digest)
            .map_err(|e| SignError::Backend(Box::new(e)))?;
        Signature::from_slice(&raw).map_err(|e| SignError::Backend(Box::new(e)))
    }
}

/// A keypair whose private key is a token object.
pub(crate) fn on_token(rec: &KeyRecord) -> bool {
    Scheme::parse(&rec.scheme).is_ok_and(Scheme::is_token_keypair)
}

impl Hierarchy {
    /// Something that signs with this keypair: the token, or the cached key in memory.
    pub(crate) fn signer(&self, rec: &KeyRecord) -> Result<Box<dyn Signer + '_>, AgentError> {
        if on_token(rec) {
            return Ok(Box::new(TokenSigner {
                h: self,
                locator: rec
                    .locator
                    .clone()
                    .ok_or_else(|| AgentError::bad_record(rec.kind, rec.id, Defect::NoLocator))?,
                public: Self::public_of(rec)?,
            }));
        }
        Self::require_p256(rec)?;
        Ok(Box::new(SoftSigner {
            key: self.cached_key(rec)?,
            public: Self::public_of(rec)?,
        }))
    }

    /// ECDSA in the token with a token keypair (the object named by `locator`): raw r‖s. When
    /// the root reports stale handles (module re-initialized, token reset) it logs in again and
    /// signs once more; a token that is gone is `token_unavailable`.
    pub(crate) fn token_sign(
        &self,
        locator: &str,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, AgentError> {
        self.with_recovery(|| {
            Ok(self
                .root
                .require_token_keypairs("sign with token key")?
                .sign(locator, digest)?)
        })
    }

    /// The private half of a P-256 keypair as a `LocalKey` (ECDH, HPKE), in memory for as long as
    /// the caller holds it: the scalar of the cached key.
    pub(crate) fn unwrap_keypair(&self, rec: &KeyRecord) -> Result<LocalKey, AgentError> {
        Self::require_p256(rec)?;
        if on_token(rec) {
            return Err(AgentError::WrongKey(WrongKey::OnToken { id: rec.id }));
        }
        let bad = || AgentError::bad_record(rec.kind, rec.id, Defect::NotP256Scalar);
        let key = self.cached_key(rec)?;
        let scalar = key.key().p256_scalar().map_err(|_| bad())?;
        let bytes: &[u8; 32] = scalar.as_ref().try_into().map_err(|_| bad())?;
        LocalKey::from_bytes(bytes).map_err(|_| bad())
    }

    /// A software keypair's key, parsed into the object that signs: from the one key cache
    /// (`key_cache.rs`), or unwrapped by its KEK, parsed, and then cached until the agent locks.
    pub(crate) fn cached_key(&self, rec: &KeyRecord) -> Result<Arc<Pinned>, AgentError> {
        if let Some(k) = self.key_cache.get(&rec.id) {
            return Ok(k);
        }
        if on_token(rec) {
            return Err(AgentError::WrongKey(WrongKey::OnToken { id: rec.id }));
        }
        let epoch = self.key_cache.epoch();
        let bad = || AgentError::bad_record(rec.kind, rec.id, Defect::NotP256Scalar);
        let key = match rec.algorithm {
            Some(Algorithm::Rsa) => {
                let pem = self.rsa_private(rec)?;
                Key::Rsa(
                    keyward_envelope::rsa::signing_key(&pem)
                        .map_err(|e| AgentError::crypto("rsa key")(e))?,
                )
            }
            Some(Algorithm::Ed25519) => {
                Key::Ed25519(Ed25519Key::from_bytes(&*self.keypair_secret(rec)?))
            }
            None | Some(Algorithm::P256) => {
                let bytes = self.keypair_secret(rec)?;
                let local = LocalKey::from_bytes(&bytes).map_err(|_| bad())?;
                let point = local.public_key().verifying_key().to_encoded_point(false);
                Key::p256(bytes.as_slice(), point.as_bytes()).map_err(|_| bad())?
            }
        };
        let key = Arc::new(Pinned::new(key));
        self.key_cache.insert(epoch, rec.id, key.clone());
        Ok(key)
    }

    /// A software keypair's 32-byte secret (P-256 scalar or Ed25519 seed), unwrapped by its KEK.
    fn keypair_secret(&self, rec: &KeyRecord) -> Result<Zeroizing<[u8; 32]>, AgentError> {
        let kek = self.parent_kek(rec)?;
        let wrapped = self.wrapped(rec)?;
        let secret = self.with_recovery(|| Ok(self.kek_handle(&kek)?.export_dek(wrapped)?))?;
        let bytes: &[u8; 32] = secret.as_slice().try_into().map_err(|_| {
            let (len, expected) = (secret.len(), 32);
            AgentError::bad_record(rec.kind, rec.id, Defect::BadLength { len, expected })
        })?;
        Ok(Zeroizing::new(*bytes))
    }

    /// The keypair `id` for a use, from the in-memory copy of its record while the keystore's
    /// generation has not moved (`key_cache.rs`), else read (MAC-checked) and copied.
    pub(crate) fn keypair_for_use(&self, id: &str) -> Result<Arc<KeyRecord>, AgentError> {
        let uuid = Uuid::parse_str(id).map_err(|_| {
            AgentError::NotFound(Missing::NotAnId {
                kind: KeyKind::Keypair,
                given: id.to_string(),
            })
        })?;
        self.keypair_copy(&uuid)
    }

    /// [`Hierarchy::keypair_for_use`] by id.
    pub(crate) fn keypair_copy(&self, id: &Uuid) -> Result<Arc<KeyRecord>, AgentError> {
        self.record_copy(id, KeyKind::Keypair)
    }

    /// Refuse keypairs that are not P-256 where only P-256 works (HPKE, COSE ES256, ECDH).
    pub(crate) fn require_p256(rec: &KeyRecord) -> Result<(), AgentError> {
        match rec.algorithm {
            None | Some(Algorithm::P256) => Ok(()),
            Some(alg) => Err(AgentError::WrongKey(WrongKey::NotP256 { id: rec.id, alg })),
        }
    }

    /// The public key a keypair record holds.
    pub(crate) fn public_of(rec: &KeyRecord) -> Result<PublicKey, AgentError> {
        Self::require_p256(rec)?;
        rec.public_key
            .as_deref()
            .and_then(|b| PublicKey::from_sec1_bytes(b).ok())
            .ok_or_else(|| AgentError::bad_record(rec.kind, rec.id, Defect::NoPublicKey))
    }

    /// Wrap `key` under `kek` and describe it as a new keypair record (not yet stored).
    pub(crate) fn keypair_record(
        &self,
        key: &LocalKey,
        kek: &KeyRecord,
    ) -> Result<KeyRecord, AgentError> {
        let scalar = key.to_bytes();
        let w = self.with_recovery(|| Ok(self.kek_handle(kek)?.wrap_secret(scalar.as_ref())?))?;
        let mut rec = KeyRecord::new(KeyKind::Keypair, w.scheme.as_str());
        rec.parent = Some(kek.id);
        rec.wrapped = Some(w.bytes);
        rec.public_key = Some(key.public_key().to_sec1_compressed().to_vec());
        rec.algorithm = Some(Algorithm::P256);
        Ok(rec)
    }

    pub fn keypair_create(
        &self,
        kek: Option<&str>,
        label: Option<String>,
        on_token: bool,
        alg: Option<Algorithm>,
    ) -> Result<Uuid, AgentError> {
        let none = crate::limits::LimitsRequest::default();
        self.keypair_create_limited(kek, label, on_token, alg, &none)
    }

    /// `keypair_create` with usage limits (`limits.rs`).
    pub fn keypair_create_limited(
        &self,
        kek: Option<&str>,
        label: Option<String>,
        on_token: bool,
        alg: Option<Algorithm>,
        limits: &crate::limits::LimitsRequest,
    ) -> Result<Uuid, AgentError> {
        let root = self.root_record("keypair.create")?;
        let (limits, _) = Self::limits_for_new(KeyKind::Keypair, false, limits)?;
        let mut rec = if alg == Some(Algorithm::Ed25519) {
            if on_token {
                return Err(AgentError::invalid(
                    "on_token",
                    Problem::Conflicts(
                        "`alg` ed25519: token keypairs are P-256 (Ed25519 keys live wrapped under a KEK)",
                    ),
                ));
            }
            let kek = self.choose_kek(kek)?;
            let key = Ed25519Key::generate(&mut OsRng);
            let seed = key.to_bytes();
            let w =
                self.with_recovery(|| Ok(self.kek_handle(&kek)?.wrap_secret(seed.as_ref())?))?;
            let mut rec = KeyRecord::new(KeyKind::Keypair, w.scheme.as_str());
            rec.parent = Some(kek.id);
            rec.wrapped = Some(w.bytes);
            rec.public_key = Some(key.public_key().to_bytes().to_vec());
            rec.algorithm = Some(Algorithm::Ed25519);
            rec
        } else if let Some(other) = alg.filter(|a| *a != Algorithm::P256) {
            return Err(AgentError::invalid(
                "alg",
                Problem::UnsupportedAlgorithm(other),
            ));
        } else if on_token {
            let name = label.clone().unwrap_or_else(|| "keyward keypair".into());
            let made = self.with_recovery(|| {
                Ok(self
                    .root
                    .require_token_keypairs("keypair.create --on-token")?
                    .generate(&name)?)
            })?;
            let mut rec = KeyRecord::new(KeyKind::Keypair, made.scheme.as_str());
            rec.parent = Some(root.id);
            rec.locator = Some(made.locator);
            rec.public_key = Some(
                PublicKey::from_p256(made.public)
                    .to_sec1_compressed()
                    .to_vec(),
            );
            rec.algorithm = Some(Algorithm::P256);
            rec
        } else {
            let kek = self.choose_kek(kek)?;
            let key = LocalKey::generate(&mut OsRng);
            self.keypair_record(&key, &kek)?
        };
        rec.label = label;
        rec.usage = limits.map(|l| l.bits());
        rec.not_after = limits.and_then(|l| l.not_after);
        self.ks.insert(&rec)?;
        tracing::info!(id = %rec.id, "keypair created");
        Ok(rec.id)
    }

    pub fn keypair_list(&self) -> Result<Vec<KeyRecord>, AgentError> {
        Ok(self.ks.list(KeyKind::Keypair, None)?)
    }

    /// One page of the keypairs (`keypair.list`; node keys included, as in the full list).
    pub fn keypair_page(
        &self,
        after: Option<&Cursor>,
        size: &PageSize,
    ) -> Result<Page, AgentError> {
        Ok(self
            .ks
            .page(&ListFilter::Kind(KeyKind::Keypair), after, size)?)
    }

    pub fn keypair_show(&self, id: &str) -> Result<KeyRecord, AgentError> {
        self.record(id, KeyKind::Keypair)
    }

    /// Set (or with `None` remove) a keypair's X.509 certificate (DER). The certificate must
    /// parse and carry the keypair's own public key; the agent does not check who signed it.
    pub fn keypair_cert_set(
        &self,
        id: &str,
        cert: Option<Vec<u8>>,
    ) -> Result<KeyRecord, AgentError> {
        let rec = self.record(id, KeyKind::Keypair)?;
        if let Some(der) = &cert {
            certificate_matches(&rec, der)?;
        }
        if !self.ks.set_certificate(&rec.id, cert)? {
            return Err(AgentError::NotFound(Missing::Key {
                kind: KeyKind::Keypair,
                id: rec.id,
            }));
        }
        tracing::info!(id = %rec.id, "keypair certificate set");
        self.record(id, KeyKind::Keypair)
    }

    /// Delete a keypair (and, for a token keypair, its token objects). Refused for a keypair
    /// that has vouched for any key: the chain's history needs its public key to verify, so such
    /// a keypair is revoked, never deleted. The record goes first and the token objects after, so
    /// a refusal never loses key material.
    pub fn keypair_delete(&self, id: &str) -> Result<Uuid, AgentError> {
        let rec = self.record(id, KeyKind::Keypair)?;
        let vouched = self
            .ks
            .list(KeyKind::Keypair, None)?
            .into_iter()
            .filter(|k| k.issuer == Some(rec.id))
            .count();
        if vouched > 0 {
            return Err(AgentError::WrongKey(WrongKey::VouchedFor {
                id: rec.id,
                count: vouched,
            }));
        }
        // Recovery shares held for others are sealed to this keypair (recovery.rs).
        let shares = self.held_shares_of(&rec.id)?;
        if shares > 0 {
            return Err(AgentError::WrongKey(WrongKey::HoldsRecoveryShares {
                id: rec.id,
                count: shares,
            }));
        }
        if on_token(&rec) {
            // Its objects can only be destroyed while logged in: check before touching anything.
            self.root_record("keypair.delete")?;
        }
        self.ks.delete(&rec.id)?;
        self.key_cache.remove(&rec.id);
        if on_token(&rec) {
            let locator = rec.locator.as_deref().unwrap_or_default();
            self.with_recovery(|| {
                Ok(self
                    .root
                    .require_token_keypairs("delete token key")?
                    .delete(locator)?)
            })
            .map_err(|e| match e {
                AgentError::Root(source) => {
                    AgentError::Internal(Internal::TokenCleanup { id: rec.id, source })
                }
                other => other,
            })?;
        }
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
            .filter(|k| {
                k.state == KeyState::Active
                    && k.name.is_none()
                    && matches!(k.algorithm, None | Some(Algorithm::P256))
            })
            .collect();
        match own.len() {
            1 => Ok(own.remove(0)),
            0 => Err(AgentError::NotFound(Missing::NoneToChoose {
                what: Choice::Keypair,
            })),
            count => Err(AgentError::Ambiguous {
                what: Choice::Keypair,
                count,
            }),
        }
    }

    /// The active keypair whose public key has this key id, if this agent holds it.
    pub(crate) fn keypair_by_key_id(
        &self,
        kid: &keyward_identity::KeyId,
    ) -> Result<Option<KeyRecord>, AgentError> {
        for k in self.ks.list(KeyKind::Keypair, None)? {
            if k.state != KeyState::Revoked
                && matches!(k.algorithm, None | Some(Algorithm::P256))
                && Self::public_of(&k)?.key_id() == *kid
            {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// ECDSA P-256 / SHA-256 over `data`: DER, or raw r‖s (Ed25519 keypairs: 64 bytes). The
    /// checks run against the in-memory copy of the record and the key comes from the one key
    /// cache, as for `sign.digest` (`door.rs`).
    pub fn sign(&self, key: &str, data: &[u8], raw: bool) -> Result<Vec<u8>, AgentError> {
        self.require_unlocked("sign")?;
        let rec = self.keypair_for_use(key)?;
        Self::require_active(&rec)?;
        self.permit(&rec, crate::limits::Usage::Sign)?;
        if rec.algorithm == Some(Algorithm::Ed25519) {
            let key = self.cached_key(&rec)?;
            let Key::Ed25519(k) = key.key() else {
                return Err(AgentError::bad_record(
                    rec.kind,
                    rec.id,
                    Defect::NotP256Scalar,
                ));
            };
            // Ed25519 signatures are 64 bytes in every encoding.
            return Ok(k.sign(data).to_vec());
        }
        let enc = if raw {
            SigEncoding::Raw
        } else {
            SigEncoding::Der
        };
        let sig = self.sign_p256_checked(&rec, data, "sign")?;
        Ok(ecdsa::encode_signature(&sig, enc))
    }

    /// ECDSA P-256 over SHA-256(`data`) by keypair `rec` (in the token, or with its cached key),
    /// checked against the keypair's public key before it is returned, so a faulty signature is
    /// never released. The check runs in aws-lc, 5.5x cheaper than RustCrypto's `p256`, which
    /// it replaced (61–65 µs against 342–367 µs side by side, on a loaded machine): that check
    /// was most of the request. Used by `sign` and the SSH door's token keys.
    pub(crate) fn sign_p256_checked(
        &self,
        rec: &KeyRecord,
        data: &[u8],
        op: &'static str,
    ) -> Result<Signature, AgentError> {
        use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
        let signer = self.signer(rec)?;
        let digest = ecdsa::sha256(data);
        let sig = signer
            .sign_prehash(&digest)
            .map_err(AgentError::crypto(op))?;
        let point = signer.public_key().verifying_key().to_encoded_point(false);
        let checked =
            aws_lc_rs::digest::Digest::import_less_safe(&digest, &aws_lc_rs::digest::SHA256)
                .and_then(|d| {
                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point.as_bytes())
                        .verify_digest(&d, &sig.to_bytes())
                });
        if checked.is_err() {
            return Err(AgentError::crypto(op)(SignError::SelfCheckFailed));
        }
        Ok(sig)
    }
}

/// Largest certificate a keypair may carry.
const MAX_CERT: usize = 16 * 1024;

/// Whether `der` is an X.509 certificate for `rec`'s public key.
fn certificate_matches(rec: &KeyRecord, der: &[u8]) -> Result<(), AgentError> {
    use x509_cert::der::Decode;
    if der.len() > MAX_CERT {
        return Err(AgentError::TooLarge {
            op: "keypair.cert.set",
            len: der.len(),
            max: MAX_CERT,
        });
    }
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| AgentError::invalid("cert", Problem::NotCertificate(e)))?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let in_cert = spki.subject_public_key.raw_bytes();
    let ours = rec.public_key.as_deref().unwrap_or_default();
    let same = match rec.algorithm {
        Some(Algorithm::Ed25519) => in_cert == ours,
        Some(Algorithm::P256) | None => {
            match (
                keyward_identity::p256::PublicKey::from_sec1_bytes(in_cert),
                keyward_identity::p256::PublicKey::from_sec1_bytes(ours),
            ) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
        }
        Some(Algorithm::Rsa) => {
            return Err(AgentError::invalid("id", Problem::NoCertificateForRsa))
        }
    };
    if same {
        Ok(())
    } else {
        Err(AgentError::WrongKey(WrongKey::CertificateMismatch {
            id: rec.id,
        }))
    }
}
