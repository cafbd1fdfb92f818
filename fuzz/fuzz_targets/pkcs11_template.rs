//! The PKCS#11 module's attribute handling (`keyward_pkcs11`): `C_GetAttributeValue` over a
//! whole template (`objects::read_template`), `C_FindObjectsInit` matching (`Object::matches`),
//! what the module accepts in key-creation templates (`template::*`), and certificate parsing
//! (`Cert::parse`). The input is decoded into an object and templates by a small byte reader.
//!
//! Invariants checked (a violation is a crash):
//! - `read_template` answers every entry; a copied value fits the caller's buffer; a length is
//!   given only for a NULL buffer; the call's return value is the first entry's error, or OK;
//! - no private key, DEK or sensitive derived secret ever yields `CKA_VALUE`, and a
//!   non-sensitive derived secret yields exactly its value;
//! - an object matches a template of its own attribute values, and no longer when one value
//!   changes or names an attribute it does not have;
//! - an accepted key-generation template never asks for a session, non-sensitive or extractable
//!   key; an accepted key pair's curve fits the mechanism; a derived secret is 1..=32 bytes and
//!   readable only when the template said `CKA_SENSITIVE = FALSE`;
//! - a parsed certificate keeps its DER exactly and parses again to the same fields.
#![no_main]

use cryptoki_sys::*;
use keyward_pkcs11::objects::{self, read_template, Cert, Curve, Kind, Limits, Object, Read, Value};
use keyward_pkcs11::template;
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

/// Attribute types the module knows, so most picks hit real code paths.
const TYPES: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CLASS, CKA_TOKEN, CKA_PRIVATE, CKA_LABEL, CKA_VALUE, CKA_VALUE_LEN, CKA_ID,
    CKA_KEY_TYPE, CKA_SIGN, CKA_VERIFY, CKA_DERIVE, CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP,
    CKA_UNWRAP, CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE,
    CKA_EC_PARAMS, CKA_EC_POINT, CKA_PUBLIC_KEY_INFO, CKA_SUBJECT, CKA_ISSUER,
    CKA_SERIAL_NUMBER, CKA_CERTIFICATE_TYPE, CKA_MODIFIABLE, CKA_DESTROYABLE, CKA_LOCAL,
    CKA_KEY_GEN_MECHANISM, CKA_START_DATE, CKA_TRUSTED, CKA_ALWAYS_AUTHENTICATE,
];

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.byte() as usize).min(max).min(self.0.len());
        let (v, rest) = self.0.split_at(n);
        self.0 = rest;
        v.to_vec()
    }
    /// A value of up to 64 KiB (a two-byte length): certificates.
    fn long_bytes(&mut self) -> Vec<u8> {
        let n = (usize::from(self.byte()) << 8 | usize::from(self.byte())).min(self.0.len());
        let (v, rest) = self.0.split_at(n);
        self.0 = rest;
        v.to_vec()
    }
    fn attr_type(&mut self) -> CK_ATTRIBUTE_TYPE {
        let b = self.byte();
        if b < 240 {
            TYPES[b as usize % TYPES.len()]
        } else {
            CK_ULONG::from(self.byte()) << 8 | CK_ULONG::from(self.byte())
        }
    }
    /// A value, often a well-formed one for the type.
    fn value(&mut self, t: CK_ATTRIBUTE_TYPE) -> Vec<u8> {
        match self.byte() % 4 {
            0 => objects::bool_(self.byte() & 1 == 1),
            1 => objects::ulong(CK_ULONG::from(self.byte())),
            2 if t == CKA_EC_PARAMS => [
                objects::P256_PARAMS,
                objects::ED25519_PARAMS,
                objects::ED25519_OID,
            ][self.byte() as usize % 3]
                .to_vec(),
            _ => self.bytes(80),
        }
    }
    fn template(&mut self) -> Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)> {
        let n = self.byte() % 8;
        (0..n)
            .map(|_| {
                let t = self.attr_type();
                let v = self.value(t);
                (t, v)
            })
            .collect()
    }
    fn object(&mut self) -> Object {
        let curve = |b: u8| if b & 1 == 0 { Curve::P256 } else { Curve::Ed25519 };
        let kind = match self.byte() % 6 {
            0 => Kind::Private(curve(self.byte())),
            1 => Kind::Public(curve(self.byte())),
            2 => Kind::Dek {
                exportable: self.byte() & 1 == 1,
            },
            3 => match Cert::parse(&self.long_bytes()) {
                Some(c) => Kind::Cert(c),
                None => Kind::Dek { exportable: false },
            },
            _ => Kind::Derived {
                value: Zeroizing::new(self.bytes(32)),
                sensitive: self.byte() & 1 == 1,
                session: CK_ULONG::from(self.byte()),
            },
        };
        Object {
            kind,
            key_id: String::from_utf8_lossy(&self.bytes(36)).into_owned(),
            ck_id: self.bytes(16),
            label: String::from_utf8_lossy(&self.bytes(32)).into_owned(),
            public: self.bytes(65),
            on_token: self.byte() & 1 == 1,
            limits: {
                let bits = self.byte();
                Limits {
                    no_sign: bits & 1 != 0,
                    no_encrypt: bits & 2 != 0,
                    no_decrypt: bits & 4 != 0,
                    no_derive: bits & 8 != 0,
                    end_date: (bits & 16 != 0).then(|| *b"20300101"),
                }
            },
        }
    }
}

/// Whether the object is a sensitive derived secret (its value must never be read).
fn sensitive_derived(o: &Object) -> bool {
    matches!(
        o.kind,
        Kind::Derived {
            sensitive: true,
            ..
        }
    )
}

fn check_reads(o: &Object, reads: &[(CK_ATTRIBUTE_TYPE, Option<usize>)]) {
    let (out, rv) = read_template(o, reads);
    assert_eq!(out.len(), reads.len(), "every entry answered");
    let mut first_err = None;
    for ((t, cap), r) in reads.iter().zip(&out) {
        match r {
            Read::Len(_) => assert!(cap.is_none(), "a length for a non-NULL buffer"),
            Read::Copy(v) => {
                let cap = cap.expect("a copy into a NULL buffer");
                assert!(v.len() <= cap, "copied {} into {cap}", v.len());
            }
            Read::Unavailable(e) => {
                first_err.get_or_insert(*e);
            }
        }
        let secret_kind = matches!(o.kind, Kind::Private(_) | Kind::Dek { .. })
            || sensitive_derived(o);
        if let (Kind::Derived { value, sensitive: false, .. }, true, Read::Copy(v)) =
            (&o.kind, *t == CKA_VALUE, r)
        {
            assert_eq!(v.as_slice(), value.as_slice(), "a derived secret's value");
        }
        if *t == CKA_VALUE && secret_kind {
            assert!(
                matches!(r, Read::Unavailable(CKR_ATTRIBUTE_SENSITIVE)),
                "CKA_VALUE of a secret object was readable"
            );
        }
    }
    assert_eq!(rv, first_err.unwrap_or(CKR_OK), "the call's return value");
}

fn check_matches(o: &Object, types: &[CK_ATTRIBUTE_TYPE]) {
    let mut own = Vec::new();
    let mut foreign = None;
    for t in types {
        match o.attr(*t) {
            Value::Bytes(v) => own.push((*t, v)),
            _ => foreign = Some(*t),
        }
    }
    assert!(o.matches(&own), "an object matches its own values");
    if let Some((t, v)) = own.first() {
        let mut changed = own.clone();
        let mut w = v.clone();
        w.push(0);
        changed[0] = (*t, w);
        assert!(!o.matches(&changed), "matched a changed value");
    }
    if let Some(t) = foreign {
        let mut with = own.clone();
        with.push((t, Vec::new()));
        assert!(!o.matches(&with), "matched an attribute it does not have");
    }
}

fn check_creation(t: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)], other: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)], m: u8) {
    let asks_weak = |t: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]| {
        template::flag(t, CKA_TOKEN) == Ok(Some(false))
            || template::flag(t, CKA_SENSITIVE) == Ok(Some(false))
            || template::flag(t, CKA_EXTRACTABLE) == Ok(Some(true))
    };
    if let Ok(label) = template::secret_key_gen(t) {
        assert!(!asks_weak(t), "accepted a weak DEK template");
        assert_eq!(label, template::label(t).ok().flatten());
    }
    let mech = if m & 1 == 0 {
        CKM_EC_KEY_PAIR_GEN
    } else {
        CKM_EC_EDWARDS_KEY_PAIR_GEN
    };
    if let Ok((curve, _)) = template::key_pair_gen(mech, other, t) {
        assert!(!asks_weak(t), "accepted a weak private key template");
        assert_eq!(curve == Curve::Ed25519, mech == CKM_EC_EDWARDS_KEY_PAIR_GEN);
    }
    if let Ok(d) = template::derived_secret(t) {
        assert!((1..=32).contains(&d.len));
        if !d.sensitive {
            assert_eq!(template::flag(t, CKA_SENSITIVE), Ok(Some(false)));
            assert_ne!(template::flag(t, CKA_EXTRACTABLE), Ok(Some(false)));
        }
        assert_ne!(template::flag(t, CKA_TOKEN), Ok(Some(true)));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(c) = Cert::parse(data) {
        assert_eq!(c.der, data, "a certificate keeps its DER");
        assert_eq!(Cert::parse(&c.der), Some(c), "parses again the same");
    }
    let mut r = Reader(data);
    let o = r.object();
    let n = r.byte() % 12;
    let reads: Vec<_> = (0..n)
        .map(|_| {
            let t = r.attr_type();
            let cap = match r.byte() % 3 {
                0 => None,
                _ => Some(r.byte() as usize),
            };
            (t, cap)
        })
        .collect();
    check_reads(&o, &reads);
    let types: Vec<_> = reads.iter().map(|(t, _)| *t).collect();
    check_matches(&o, &types);
    let t = r.template();
    let other = r.template();
    let m = r.byte();
    check_creation(&t, &other, m);
});
