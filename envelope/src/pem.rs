//! Minimal PEM decoding for RSA keys (`RSA PRIVATE KEY`, `PRIVATE KEY`, `RSA PUBLIC KEY`,
//! `PUBLIC KEY`). Only unencrypted PEM is read; the DER inside is handed to aws-lc-rs, which
//! does all ASN.1 parsing.
//!
//! This module must never log or keep key bytes outside `Zeroizing`, and never panic.

use zeroize::Zeroizing;

use crate::b64;
use crate::error::{Error, Result};

/// Decode the first PEM block; returns its label and DER bytes.
pub(crate) fn decode(pem: &str) -> Result<(String, Zeroizing<Vec<u8>>)> {
    let mut lines = pem.lines().map(str::trim);
    let label = loop {
        match lines.next() {
            None => return Err(Error::Key("no PEM BEGIN line")),
            Some(l) => {
                if let Some(label) = l
                    .strip_prefix("-----BEGIN ")
                    .and_then(|r| r.strip_suffix("-----"))
                {
                    break label.to_owned();
                }
            }
        }
    };
    let end = format!("-----END {label}-----");
    let mut body = Zeroizing::new(String::new());
    loop {
        match lines.next() {
            None => return Err(Error::Key("no PEM END line")),
            Some(l) if l == end => break,
            Some(l) if l.contains(':') => {
                return Err(Error::Key("encrypted or annotated PEM is not supported"))
            }
            Some(l) => body.push_str(l),
        }
    }
    let der = b64::decode_standard(&body).map_err(|_| Error::Key("invalid base64 in PEM"))?;
    Ok((label, Zeroizing::new(der)))
}
