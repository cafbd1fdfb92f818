//! Passphrases a person can write down: 30 characters of Crockford base32 in six groups of five
//! (150 bits from the OS's random source), e.g. `7KQ2M-XW9TD-...`. Crockford's alphabet has no
//! I, L, O or U, so nothing reads ambiguously when copied by hand.

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Bits of entropy in a generated passphrase (30 characters of 5 bits).
pub const BITS: u32 = 150;
const _: () = assert!(BITS >= 128, "a root passphrase needs at least 128 bits");

/// A fresh passphrase of [`BITS`] bits.
pub fn generate() -> Zeroizing<String> {
    let mut raw = Zeroizing::new([0u8; 30]);
    OsRng.fill_bytes(raw.as_mut());
    let mut s = Zeroizing::new(String::with_capacity(35));
    for (i, b) in raw.iter().enumerate() {
        if i > 0 && i % 5 == 0 {
            s.push('-');
        }
        // 32 divides 256, so taking 5 bits of a uniform byte is uniform.
        s.push(ALPHABET[(b & 31) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_uniqueness() {
        let a = generate();
        let b = generate();
        assert_ne!(*a, *b);
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(groups.len(), 6);
        assert!(groups.iter().all(|g| g.len() == 5));
        assert!(a
            .chars()
            .filter(|c| *c != '-')
            .all(|c| ALPHABET.contains(&(c as u8))));
    }
}
