//! The objects the token shows: the agent's keypairs (a private and a public object sharing one
//! `CKA_ID`, and the keypair's X.509 certificate when one is set, with the same `CKA_ID`), its
//! DEKs (AES secret keys), and the session's derived secrets; and their attributes, read the way
//! `C_GetAttributeValue` and `C_FindObjectsInit` need them.
//!
//! Attribute values are encoded here once (booleans as one byte, `CK_ULONG`s in native order, EC
//! parameters and points in DER). This module must never yield a private or secret key's value:
//! those attributes read as sensitive, whatever the template asked, except a derived session
//! secret whose creator asked for `CKA_SENSITIVE = FALSE`.

use cryptoki_sys::*;
use zeroize::Zeroizing;

/// `CKA_EC_PARAMS` of P-256: the OID 1.2.840.10045.3.1.7.
pub const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `CKA_EC_PARAMS` of Ed25519 as pkcs11-tool 0.23 and SoftHSM write it: PrintableString.
pub const ED25519_PARAMS: &[u8] = b"\x13\x0cedwards25519";
/// The same curve by OID 1.3.101.112, accepted in key generation templates.
pub const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Which curve a keypair is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    Ed25519,
}

/// What an object is. (No `Debug`: a derived secret's value must never be printed.)
#[derive(Clone, PartialEq, Eq)]
pub enum Kind {
    Private(Curve),
    Public(Curve),
    /// A DEK: AES-256, used inside the agent.
    Dek {
        exportable: bool,
    },
    /// A keypair's X.509 certificate (`CKC_X_509`): public, like the public key.
    Cert(Cert),
    /// A secret made by `C_DeriveKey` in this session; the value lives in the module.
    Derived {
        value: Zeroizing<Vec<u8>>,
        sensitive: bool,
        session: CK_SESSION_HANDLE,
    },
}

/// A certificate's DER and the fields PKCS#11 shows separately, each DER-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    pub der: Vec<u8>,
    pub subject: Vec<u8>,
    pub issuer: Vec<u8>,
    pub serial: Vec<u8>,
}

impl Cert {
    /// Parse a certificate; `None` if it is not X.509 DER.
    pub fn parse(der: &[u8]) -> Option<Cert> {
        use x509_cert::der::{Decode, Encode};
        let c = x509_cert::Certificate::from_der(der).ok()?;
        let tbs = &c.tbs_certificate;
        Some(Cert {
            der: der.to_vec(),
            subject: tbs.subject.to_der().ok()?,
            issuer: tbs.issuer.to_der().ok()?,
            serial: tbs.serial_number.to_der().ok()?,
        })
    }
}

/// One object.
#[derive(Clone, PartialEq, Eq)]
pub struct Object {
    pub kind: Kind,
    /// The agent's id of the key (a UUID), for calls; empty for derived secrets.
    pub key_id: String,
    /// `CKA_ID`: the UUID's 16 bytes, shared by a keypair's two halves.
    pub ck_id: Vec<u8>,
    pub label: String,
    /// Keypairs: P-256 uncompressed SEC1 point (65 bytes), or the Ed25519 key (32 bytes).
    pub public: Vec<u8>,
    /// The private key lives on the token (`pkcs11-token` scheme): never extractable, no ECDH.
    pub on_token: bool,
    /// The key's usage limits as the agent reported them (`KeyInfo::usage`, `not_after`).
    pub limits: Limits,
}

/// What a key's usage limits refuse, shown as `CKA_SIGN`, `CKA_ENCRYPT`, `CKA_DECRYPT`,
/// `CKA_DERIVE` and `CKA_END_DATE`. The default (an agent before limits) refuses nothing. The
/// agent enforces the limits itself; the module only refuses early, at `C_*Init`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub no_sign: bool,
    pub no_encrypt: bool,
    pub no_decrypt: bool,
    pub no_derive: bool,
    /// `CKA_END_DATE` (`CK_DATE`, `YYYYMMDD`) from the key's not-after.
    pub end_date: Option<[u8; 8]>,
}

/// One attribute as read for a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bytes(Vec<u8>),
    /// The object has it, but it may not leave (`CKR_ATTRIBUTE_SENSITIVE`).
    Sensitive,
    /// The object has no such attribute (`CKR_ATTRIBUTE_TYPE_INVALID`).
    Invalid,
}

pub fn ulong(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

pub fn bool_(v: bool) -> Vec<u8> {
    vec![if v { CK_TRUE } else { CK_FALSE }]
}

/// Read a `CK_ULONG` attribute value a caller gave.
pub fn as_ulong(v: &[u8]) -> Option<CK_ULONG> {
    Some(CK_ULONG::from_ne_bytes(v.try_into().ok()?))
}

/// Read a `CK_BBOOL` attribute value a caller gave.
pub fn as_bool(v: &[u8]) -> Option<bool> {
    match v {
        [b] => Some(*b != CK_FALSE),
        _ => None,
    }
}

/// A DER OCTET STRING around `point` (`CKA_EC_POINT`).
pub fn octet_string(point: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    if point.len() < 0x80 {
        out.push(point.len() as u8);
    } else {
        out.push(0x81);
        out.push(point.len() as u8);
    }
    out.extend_from_slice(point);
    out
}

/// The raw point from a `CKA_EC_POINT` or ECDH public data: a DER OCTET STRING or the raw point.
pub fn unwrap_point(v: &[u8]) -> &[u8] {
    match v {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => rest,
        [0x04, 0x81, len, rest @ ..] if usize::from(*len) == rest.len() => rest,
        _ => v,
    }
}

impl Object {
    pub fn class(&self) -> CK_OBJECT_CLASS {
        match self.kind {
            Kind::Private(_) => CKO_PRIVATE_KEY,
            Kind::Public(_) => CKO_PUBLIC_KEY,
            Kind::Cert(_) => CKO_CERTIFICATE,
            Kind::Dek { .. } | Kind::Derived { .. } => CKO_SECRET_KEY,
        }
    }

    /// Visible only after login (`CKA_PRIVATE`).
    pub fn is_private(&self) -> bool {
        !matches!(self.kind, Kind::Public(_) | Kind::Cert(_))
    }

    pub fn is_token(&self) -> bool {
        !matches!(self.kind, Kind::Derived { .. })
    }

    pub fn curve(&self) -> Option<Curve> {
        match self.kind {
            Kind::Private(c) | Kind::Public(c) => Some(c),
            _ => None,
        }
    }

    pub fn can_sign(&self) -> bool {
        matches!(self.kind, Kind::Private(_)) && !self.limits.no_sign
    }

    pub fn can_derive(&self) -> bool {
        matches!(self.kind, Kind::Private(Curve::P256)) && !self.on_token && !self.limits.no_derive
    }

    /// A DEK's `CKA_ENCRYPT` (`encrypt`) or `CKA_DECRYPT` (`!encrypt`).
    pub fn can_crypt(&self, encrypt: bool) -> bool {
        matches!(self.kind, Kind::Dek { .. })
            && !(if encrypt {
                self.limits.no_encrypt
            } else {
                self.limits.no_decrypt
            })
    }

    fn ec_params(&self) -> Option<&'static [u8]> {
        Some(match self.curve()? {
            Curve::P256 => P256_PARAMS,
            Curve::Ed25519 => ED25519_PARAMS,
        })
    }

    fn spki(&self) -> Option<Vec<u8>> {
        let prefix = match self.curve()? {
            Curve::P256 => P256_SPKI_PREFIX,
            Curve::Ed25519 => ED25519_SPKI_PREFIX,
        };
        Some([prefix, &self.public].concat())
    }

    /// One attribute's value as the spec would have it read.
    pub fn attr(&self, t: CK_ATTRIBUTE_TYPE) -> Value {
        use Value::*;
        let common = match t {
            CKA_CLASS => Some(ulong(self.class())),
            CKA_TOKEN => Some(bool_(self.is_token())),
            CKA_PRIVATE => Some(bool_(self.is_private())),
            CKA_MODIFIABLE | CKA_COPYABLE => Some(bool_(false)),
            CKA_DESTROYABLE => Some(bool_(!matches!(
                self.kind,
                Kind::Dek { .. } | Kind::Cert(_)
            ))),
            CKA_LABEL => Some(self.label.as_bytes().to_vec()),
            _ => None,
        };
        if let Some(v) = common {
            return Bytes(v);
        }
        if let Kind::Cert(c) = &self.kind {
            return match t {
                CKA_CERTIFICATE_TYPE => Bytes(ulong(CKC_X_509)),
                CKA_TRUSTED => Bytes(bool_(false)),
                CKA_CERTIFICATE_CATEGORY => Bytes(ulong(CK_CERTIFICATE_CATEGORY_UNSPECIFIED)),
                CKA_JAVA_MIDP_SECURITY_DOMAIN => Bytes(ulong(0)),
                CKA_START_DATE | CKA_END_DATE | CKA_URL => Bytes(Vec::new()),
                CKA_HASH_OF_SUBJECT_PUBLIC_KEY | CKA_HASH_OF_ISSUER_PUBLIC_KEY => Bytes(Vec::new()),
                CKA_ID => Bytes(self.ck_id.clone()),
                CKA_SUBJECT => Bytes(c.subject.clone()),
                CKA_ISSUER => Bytes(c.issuer.clone()),
                CKA_SERIAL_NUMBER => Bytes(c.serial.clone()),
                CKA_VALUE => Bytes(c.der.clone()),
                _ => Invalid,
            };
        }
        // Key attributes, common to every object here (they are all keys).
        let key = match t {
            CKA_ID => Some(self.ck_id.clone()),
            CKA_START_DATE => Some(Vec::new()),
            CKA_END_DATE => Some(self.limits.end_date.map(Vec::from).unwrap_or_default()),
            CKA_LOCAL => Some(bool_(!matches!(self.kind, Kind::Derived { .. }))),
            CKA_KEY_GEN_MECHANISM => Some(ulong(match &self.kind {
                Kind::Private(Curve::P256) | Kind::Public(Curve::P256) => CKM_EC_KEY_PAIR_GEN,
                Kind::Private(Curve::Ed25519) | Kind::Public(Curve::Ed25519) => {
                    CKM_EC_EDWARDS_KEY_PAIR_GEN
                }
                Kind::Dek { .. } => CKM_AES_KEY_GEN,
                Kind::Derived { .. } | Kind::Cert(_) => CK_UNAVAILABLE_INFORMATION,
            })),
            CKA_KEY_TYPE => Some(ulong(match &self.kind {
                Kind::Private(Curve::P256) | Kind::Public(Curve::P256) => CKK_EC,
                Kind::Private(Curve::Ed25519) | Kind::Public(Curve::Ed25519) => CKK_EC_EDWARDS,
                Kind::Dek { .. } => CKK_AES,
                Kind::Derived { .. } | Kind::Cert(_) => CKK_GENERIC_SECRET,
            })),
            CKA_DERIVE => Some(bool_(self.can_derive())),
            _ => None,
        };
        if let Some(v) = key {
            return Bytes(v);
        }
        match &self.kind {
            Kind::Private(_) => match t {
                CKA_SIGN => Bytes(bool_(self.can_sign())),
                CKA_SIGN_RECOVER
                | CKA_DECRYPT
                | CKA_UNWRAP
                | CKA_ALWAYS_AUTHENTICATE
                | CKA_WRAP_WITH_TRUSTED => Bytes(bool_(false)),
                CKA_SENSITIVE | CKA_ALWAYS_SENSITIVE => Bytes(bool_(true)),
                CKA_EXTRACTABLE => Bytes(bool_(false)),
                CKA_NEVER_EXTRACTABLE => Bytes(bool_(self.on_token)),
                CKA_SUBJECT => Bytes(Vec::new()),
                CKA_EC_PARAMS => self.ec_params().map_or(Invalid, |p| Bytes(p.to_vec())),
                CKA_PUBLIC_KEY_INFO => self.spki().map_or(Invalid, Bytes),
                CKA_VALUE => Sensitive,
                _ => Invalid,
            },
            Kind::Public(_) => match t {
                CKA_VERIFY => Bytes(bool_(true)),
                CKA_VERIFY_RECOVER | CKA_ENCRYPT | CKA_WRAP | CKA_TRUSTED => Bytes(bool_(false)),
                CKA_SUBJECT => Bytes(Vec::new()),
                CKA_EC_PARAMS => self.ec_params().map_or(Invalid, |p| Bytes(p.to_vec())),
                CKA_EC_POINT => Bytes(octet_string(&self.public)),
                CKA_PUBLIC_KEY_INFO => self.spki().map_or(Invalid, Bytes),
                _ => Invalid,
            },
            Kind::Dek { exportable } => match t {
                CKA_ENCRYPT => Bytes(bool_(self.can_crypt(true))),
                CKA_DECRYPT => Bytes(bool_(self.can_crypt(false))),
                CKA_SIGN
                | CKA_VERIFY
                | CKA_WRAP
                | CKA_UNWRAP
                | CKA_TRUSTED
                | CKA_WRAP_WITH_TRUSTED => Bytes(bool_(false)),
                CKA_SENSITIVE | CKA_ALWAYS_SENSITIVE => Bytes(bool_(true)),
                CKA_EXTRACTABLE => Bytes(bool_(false)),
                CKA_NEVER_EXTRACTABLE => Bytes(bool_(!exportable)),
                CKA_VALUE_LEN => Bytes(ulong(32)),
                CKA_VALUE => Sensitive,
                _ => Invalid,
            },
            Kind::Cert(_) => Invalid,
            Kind::Derived {
                value, sensitive, ..
            } => match t {
                CKA_ENCRYPT
                | CKA_DECRYPT
                | CKA_SIGN
                | CKA_VERIFY
                | CKA_WRAP
                | CKA_UNWRAP
                | CKA_TRUSTED
                | CKA_WRAP_WITH_TRUSTED => Bytes(bool_(false)),
                CKA_SENSITIVE | CKA_ALWAYS_SENSITIVE => Bytes(bool_(*sensitive)),
                CKA_EXTRACTABLE => Bytes(bool_(!sensitive)),
                CKA_NEVER_EXTRACTABLE => Bytes(bool_(*sensitive)),
                CKA_VALUE_LEN => Bytes(ulong(value.len() as CK_ULONG)),
                CKA_VALUE if *sensitive => Sensitive,
                CKA_VALUE => Bytes(value.to_vec()),
                _ => Invalid,
            },
        }
    }

    /// Whether every attribute of a search template has this value here.
    pub fn matches(&self, template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> bool {
        template
            .iter()
            .all(|(t, want)| matches!(self.attr(*t), Value::Bytes(v) if &v == want))
    }
}

/// What one entry of a `C_GetAttributeValue` template gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The caller asked for the length only (NULL `pValue`).
    Len(usize),
    /// Copy this into the caller's buffer.
    Copy(Vec<u8>),
    /// Length `CK_UNAVAILABLE_INFORMATION`, with this error for the whole call.
    Unavailable(CK_RV),
}

/// `C_GetAttributeValue` over a whole template: `(type, buffer capacity or None for NULL)`
/// entries in, what each gets and the call's return value out. Every entry is processed, as the
/// spec says; the return value is the first of sensitive, invalid, too small that applied.
pub fn read_template(
    obj: &Object,
    template: &[(CK_ATTRIBUTE_TYPE, Option<usize>)],
) -> (Vec<Read>, CK_RV) {
    let mut rv = CKR_OK;
    let mut note = |e: CK_RV| {
        if rv == CKR_OK {
            rv = e;
        }
    };
    let reads = template
        .iter()
        .map(|(t, cap)| match (obj.attr(*t), cap) {
            (Value::Sensitive, _) => {
                note(CKR_ATTRIBUTE_SENSITIVE);
                Read::Unavailable(CKR_ATTRIBUTE_SENSITIVE)
            }
            (Value::Invalid, _) => {
                note(CKR_ATTRIBUTE_TYPE_INVALID);
                Read::Unavailable(CKR_ATTRIBUTE_TYPE_INVALID)
            }
            (Value::Bytes(v), None) => Read::Len(v.len()),
            (Value::Bytes(v), Some(cap)) if v.len() <= *cap => Read::Copy(v),
            (Value::Bytes(_), Some(_)) => {
                note(CKR_BUFFER_TOO_SMALL);
                Read::Unavailable(CKR_BUFFER_TOO_SMALL)
            }
        })
        .collect();
    (reads, rv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dek() -> Object {
        Object {
            kind: Kind::Dek { exportable: false },
            key_id: "k".into(),
            ck_id: vec![1; 16],
            label: "d".into(),
            public: vec![],
            on_token: false,
            limits: Limits::default(),
        }
    }

    #[test]
    fn template_reads_follow_the_spec() {
        let (r, rv) = read_template(
            &dek(),
            &[
                (CKA_CLASS, None),
                (CKA_VALUE, Some(32)),
                (CKA_EC_POINT, Some(10)),
                (CKA_LABEL, Some(0)),
                (CKA_ID, Some(16)),
            ],
        );
        assert_eq!(rv, CKR_ATTRIBUTE_SENSITIVE);
        assert_eq!(r[0], Read::Len(std::mem::size_of::<CK_ULONG>()));
        assert_eq!(r[1], Read::Unavailable(CKR_ATTRIBUTE_SENSITIVE));
        assert_eq!(r[2], Read::Unavailable(CKR_ATTRIBUTE_TYPE_INVALID));
        assert_eq!(r[3], Read::Unavailable(CKR_BUFFER_TOO_SMALL));
        assert_eq!(r[4], Read::Copy(vec![1; 16]));
    }

    #[test]
    fn usage_limits_show_as_attributes() {
        let mut d = dek();
        assert_eq!(d.attr(CKA_ENCRYPT), Value::Bytes(bool_(true)));
        assert_eq!(d.attr(CKA_END_DATE), Value::Bytes(Vec::new()));
        d.limits = Limits {
            no_encrypt: true,
            end_date: Some(*b"20310506"),
            ..Limits::default()
        };
        assert_eq!(d.attr(CKA_ENCRYPT), Value::Bytes(bool_(false)));
        assert_eq!(d.attr(CKA_DECRYPT), Value::Bytes(bool_(true)));
        assert_eq!(d.attr(CKA_END_DATE), Value::Bytes(b"20310506".to_vec()));
        assert!(!d.can_crypt(true) && d.can_crypt(false));
        let mut k = dek();
        k.kind = Kind::Private(Curve::P256);
        assert!(k.can_sign() && k.can_derive());
        k.limits.no_sign = true;
        k.limits.no_derive = true;
        assert!(!k.can_sign() && !k.can_derive());
        assert_eq!(k.attr(CKA_SIGN), Value::Bytes(bool_(false)));
        assert_eq!(k.attr(CKA_DERIVE), Value::Bytes(bool_(false)));
    }

    #[test]
    fn points_wrap_and_unwrap() {
        let p = vec![4u8; 65];
        assert_eq!(unwrap_point(&octet_string(&p)), &p[..]);
        assert_eq!(unwrap_point(&p), &p[..]);
        assert_eq!(&octet_string(&p)[..2], &[0x04, 0x41]);
    }
}
