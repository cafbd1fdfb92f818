//! What the module accepts in the attribute templates a caller gives to create a key
//! (`C_GenerateKey`, `C_GenerateKeyPair`, `C_DeriveKey`): pure functions from a decoded template
//! to the request the module makes, or the `CKR_*` refusal. Kept apart from `token` (which talks
//! to the agent) so that the fuzz target `pkcs11_template` can run them on any input.
//!
//! A template is `(type, value)` pairs as the caller wrote them; when a type appears more than
//! once, the last one counts. This module must never accept a template that asks for a key the
//! agent will not make: a session-only (`CKA_TOKEN = FALSE`), non-sensitive or extractable
//! DEK or private key is refused with `CKR_TEMPLATE_INCONSISTENT`, never silently made otherwise.

use crate::objects::{self, as_bool, as_ulong, Curve};
use cryptoki_sys::*;

/// `CK_RV` on refusal.
pub type R<T> = Result<T, CK_RV>;

/// The last value of `a` in `t`.
pub fn get(t: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)], a: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
    t.iter()
        .rev()
        .find(|(k, _)| *k == a)
        .map(|(_, v)| v.as_slice())
}

/// A `CK_BBOOL` attribute: absent, or its value (`CKR_ATTRIBUTE_VALUE_INVALID` unless one byte).
pub fn flag(t: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)], a: CK_ATTRIBUTE_TYPE) -> R<Option<bool>> {
    get(t, a)
        .map(|v| as_bool(v).ok_or(CKR_ATTRIBUTE_VALUE_INVALID))
        .transpose()
}

/// `CKA_LABEL` as UTF-8 (`CKR_ATTRIBUTE_VALUE_INVALID` otherwise).
pub fn label(t: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> R<Option<String>> {
    get(t, CKA_LABEL)
        .map(|v| String::from_utf8(v.to_vec()).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID))
        .transpose()
}

/// The curve a key generation template's `CKA_EC_PARAMS` names.
pub fn curve_of_params(p: &[u8]) -> R<Curve> {
    if p == objects::P256_PARAMS || p == b"\x13\x0aprime256v1" {
        Ok(Curve::P256)
    } else if p == objects::ED25519_PARAMS || p == objects::ED25519_OID {
        Ok(Curve::Ed25519)
    } else {
        Err(CKR_CURVE_NOT_SUPPORTED)
    }
}

/// The agent's keys are token objects, sensitive and never extractable: a template asking
/// otherwise is refused.
fn persistent_sensitive(t: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> R<()> {
    if flag(t, CKA_TOKEN)? == Some(false)
        || flag(t, CKA_SENSITIVE)? == Some(false)
        || flag(t, CKA_EXTRACTABLE)? == Some(true)
    {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    Ok(())
}

/// `C_GenerateKey` (`CKM_AES_KEY_GEN`): an AES-256 DEK. Its label, if the template gives one.
pub fn secret_key_gen(t: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> R<Option<String>> {
    if let Some(len) = get(t, CKA_VALUE_LEN) {
        if as_ulong(len) != Some(32) {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
    }
    persistent_sensitive(t)?;
    label(t)
}

/// `C_GenerateKeyPair` with mechanism `kind` (`CKM_EC_KEY_PAIR_GEN` or
/// `CKM_EC_EDWARDS_KEY_PAIR_GEN`): the curve the public template names, and the label (the
/// private template's, else the public one's).
pub fn key_pair_gen(
    kind: CK_MECHANISM_TYPE,
    public: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)],
    private: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)],
) -> R<(Curve, Option<String>)> {
    if kind != CKM_EC_KEY_PAIR_GEN && kind != CKM_EC_EDWARDS_KEY_PAIR_GEN {
        return Err(CKR_MECHANISM_INVALID);
    }
    let params = get(public, CKA_EC_PARAMS).ok_or(CKR_TEMPLATE_INCOMPLETE)?;
    let curve = curve_of_params(params)?;
    if (curve == Curve::Ed25519) != (kind == CKM_EC_EDWARDS_KEY_PAIR_GEN) {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    persistent_sensitive(private)?;
    let label = match label(private)? {
        Some(l) => Some(l),
        None => label(public)?,
    };
    Ok((curve, label))
}

/// What a `C_DeriveKey` (ECDH) template asks for the derived session secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    /// Bytes of the shared secret kept (1..=32; default 32).
    pub len: usize,
    /// Whether `CKA_VALUE` may be read: sensitive unless the template says `CKA_SENSITIVE =
    /// FALSE` (and does not say `CKA_EXTRACTABLE = FALSE`).
    pub sensitive: bool,
    pub label: String,
}

/// `C_DeriveKey`'s template: a session object only (`CKA_TOKEN = TRUE` is refused).
pub fn derived_secret(t: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> R<Derived> {
    if flag(t, CKA_TOKEN)? == Some(true) {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    let len = match get(t, CKA_VALUE_LEN) {
        Some(v) => match as_ulong(v) {
            Some(n @ 1..=32) => n as usize,
            _ => return Err(CKR_ATTRIBUTE_VALUE_INVALID),
        },
        None => 32,
    };
    let sensitive =
        flag(t, CKA_SENSITIVE)?.unwrap_or(true) || flag(t, CKA_EXTRACTABLE)? == Some(false);
    Ok(Derived {
        len,
        sensitive,
        label: label(t)?.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{bool_, ulong};

    #[test]
    fn the_last_value_of_a_repeated_type_counts() {
        let t = vec![(CKA_LABEL, b"a".to_vec()), (CKA_LABEL, b"b".to_vec())];
        assert_eq!(label(&t), Ok(Some("b".into())));
    }

    #[test]
    fn extractable_or_session_keys_are_refused() {
        for bad in [
            (CKA_TOKEN, bool_(false)),
            (CKA_SENSITIVE, bool_(false)),
            (CKA_EXTRACTABLE, bool_(true)),
        ] {
            assert_eq!(
                secret_key_gen(std::slice::from_ref(&bad)),
                Err(CKR_TEMPLATE_INCONSISTENT)
            );
            let public = vec![(CKA_EC_PARAMS, objects::P256_PARAMS.to_vec())];
            assert_eq!(
                key_pair_gen(CKM_EC_KEY_PAIR_GEN, &public, &[bad]),
                Err(CKR_TEMPLATE_INCONSISTENT)
            );
        }
        assert_eq!(
            secret_key_gen(&[(CKA_VALUE_LEN, ulong(16))]),
            Err(CKR_TEMPLATE_INCONSISTENT)
        );
        assert_eq!(
            secret_key_gen(&[(CKA_TOKEN, vec![1, 0])]),
            Err(CKR_ATTRIBUTE_VALUE_INVALID)
        );
    }

    #[test]
    fn key_pair_curve_must_match_the_mechanism() {
        let ed = vec![(CKA_EC_PARAMS, objects::ED25519_OID.to_vec())];
        assert_eq!(
            key_pair_gen(CKM_EC_KEY_PAIR_GEN, &ed, &[]),
            Err(CKR_TEMPLATE_INCONSISTENT)
        );
        assert_eq!(
            key_pair_gen(CKM_EC_EDWARDS_KEY_PAIR_GEN, &ed, &[]),
            Ok((Curve::Ed25519, None))
        );
        assert_eq!(
            key_pair_gen(CKM_EC_KEY_PAIR_GEN, &[], &[]),
            Err(CKR_TEMPLATE_INCOMPLETE)
        );
    }

    #[test]
    fn derived_secrets_are_sensitive_unless_asked() {
        assert!(derived_secret(&[]).unwrap().sensitive);
        let open = vec![(CKA_SENSITIVE, bool_(false))];
        assert!(!derived_secret(&open).unwrap().sensitive);
        let both = vec![
            (CKA_SENSITIVE, bool_(false)),
            (CKA_EXTRACTABLE, bool_(false)),
        ];
        assert!(derived_secret(&both).unwrap().sensitive);
        assert_eq!(
            derived_secret(&[(CKA_VALUE_LEN, ulong(33))]),
            Err(CKR_ATTRIBUTE_VALUE_INVALID)
        );
        assert_eq!(
            derived_secret(&[(CKA_TOKEN, bool_(true))]),
            Err(CKR_TEMPLATE_INCONSISTENT)
        );
    }
}
