//! The recovery secret as 24 BIP39 English words, and back.
//!
//! 256 bits of entropy plus an 8-bit SHA-256 checksum make 24 words of 11
//! bits (BIP39). Only the English list is compiled in, and exactly 24 words
//! are accepted: a 12-word phrase is a valid BIP39 mnemonic but not a Keyward
//! recovery phrase. Words are matched case-insensitively after splitting on
//! whitespace (the English list is lower-case ASCII).
//!
//! This module must never log, print or write the words or the secret, never
//! return an error that contains a word (errors carry only positions), and
//! never keep them outside zeroizing buffers. (The `bip39` crate's parser uses
//! a few stack arrays of its own that it does not zeroize; see the crate docs.)

use zeroize::Zeroizing;

use crate::secret::{RecoverySecret, SECRET_LEN};

/// Number of words in a recovery phrase.
pub const WORD_COUNT: usize = 24;
/// Longest phrase accepted, in bytes (24 words of at most 8 letters, with
/// generous room for whitespace), so a huge input is refused before any work.
pub const MAX_PHRASE_LEN: usize = 1024;

/// Errors reading a recovery phrase. None of them carries a word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WordsError {
    /// The phrase does not have exactly 24 words.
    #[error("a recovery phrase has {WORD_COUNT} words, this one has {found}")]
    WrongWordCount {
        /// Number of words found.
        found: usize,
    },
    /// A word is not in the BIP39 English list.
    #[error("word {position} of the recovery phrase is not a BIP39 English word")]
    UnknownWord {
        /// 1-based position of the first unknown word.
        position: usize,
    },
    /// Every word is known but the checksum does not match: a word is wrong
    /// or two words are swapped.
    #[error("the recovery phrase's checksum does not match (a word is wrong or out of order)")]
    BadChecksum,
    /// The phrase is longer than [`MAX_PHRASE_LEN`] bytes.
    #[error("the recovery phrase is longer than {MAX_PHRASE_LEN} bytes")]
    TooLong,
    /// Any other refusal of the BIP39 library.
    #[error("the recovery phrase is not valid BIP39: {0}")]
    Invalid(&'static str),
}

/// The 24 words of `secret`, space-separated, in a zeroizing string.
pub fn to_words(secret: &RecoverySecret) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(WORD_COUNT * 9));
    match bip39::Mnemonic::from_entropy_in(bip39::Language::English, secret.as_bytes()) {
        Ok(m) => {
            for (i, w) in m.words().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(w);
            }
        }
        // 32 bytes is a valid BIP39 entropy length: this arm cannot be reached.
        Err(_) => unreachable_entropy(),
    }
    out
}

#[cold]
fn unreachable_entropy() {
    debug_assert!(false, "32 bytes is a valid BIP39 entropy length");
}

/// Reads a 24-word English phrase back into the secret.
///
/// Checks, in order: length, word count, each word against the list (the
/// first unknown word's position is reported), then the checksum.
pub fn from_words(phrase: &str) -> Result<RecoverySecret, WordsError> {
    if phrase.len() > MAX_PHRASE_LEN {
        return Err(WordsError::TooLong);
    }
    let found = phrase.split_whitespace().count();
    if found != WORD_COUNT {
        return Err(WordsError::WrongWordCount { found });
    }
    let lower = Zeroizing::new(phrase.to_ascii_lowercase());
    let mnemonic = bip39::Mnemonic::parse_in_normalized(bip39::Language::English, &lower).map_err(
        |e| match e {
            bip39::Error::BadWordCount(found) => WordsError::WrongWordCount { found },
            bip39::Error::UnknownWord(i) => WordsError::UnknownWord { position: i + 1 },
            bip39::Error::InvalidChecksum => WordsError::BadChecksum,
            bip39::Error::BadEntropyBitCount(_) => WordsError::Invalid("bad entropy length"),
            _ => WordsError::Invalid("rejected by the BIP39 parser"),
        },
    )?;
    let (mut entropy, len) = mnemonic.to_entropy_array();
    let result = if len == SECRET_LEN {
        let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
        bytes.copy_from_slice(&entropy[..SECRET_LEN]);
        Ok(RecoverySecret::from_bytes(*bytes))
    } else {
        Err(WordsError::Invalid("bad entropy length"))
    };
    zeroize::Zeroize::zeroize(&mut entropy);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    // BIP39 reference vector (trezor/python-mnemonic vectors.json): 0x00 * 32.
    const ZERO_WORDS: &str = "abandon abandon abandon abandon abandon abandon abandon abandon \
        abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon \
        abandon abandon abandon abandon art";
    // ... and 0x7f * 32.
    const SEVEN_F_WORDS: &str = "legal winner thank year wave sausage worth useful legal winner \
        thank year wave sausage worth useful legal winner thank year wave sausage worth title";

    #[test]
    fn reference_vectors_encode_and_decode() {
        let zero = RecoverySecret::from_bytes([0; 32]);
        assert_eq!(
            to_words(&zero).as_str(),
            ZERO_WORDS.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        assert_eq!(from_words(ZERO_WORDS).unwrap(), zero);
        let sf = RecoverySecret::from_bytes([0x7f; 32]);
        assert_eq!(
            to_words(&sf).as_str(),
            SEVEN_F_WORDS
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
        assert_eq!(from_words(SEVEN_F_WORDS).unwrap(), sf);
    }

    #[test]
    fn random_round_trip() {
        for _ in 0..50 {
            let s = RecoverySecret::generate(&mut rand_core::OsRng);
            let w = to_words(&s);
            assert_eq!(w.split(' ').count(), WORD_COUNT);
            assert_eq!(from_words(&w).unwrap(), s);
        }
    }

    #[test]
    fn case_and_whitespace_are_tolerated() {
        let messy = format!("  {}\n", ZERO_WORDS.to_uppercase().replace(' ', "\t "));
        assert_eq!(
            from_words(&messy).unwrap(),
            RecoverySecret::from_bytes([0; 32])
        );
    }

    #[test]
    fn wrong_word_count_is_typed() {
        let twelve = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
            abandon abandon about";
        // A valid 12-word BIP39 mnemonic is still not a recovery phrase.
        assert_eq!(
            from_words(twelve),
            Err(WordsError::WrongWordCount { found: 12 })
        );
        let w: Vec<&str> = ZERO_WORDS.split_whitespace().collect();
        assert_eq!(
            from_words(&w[..23].join(" ")),
            Err(WordsError::WrongWordCount { found: 23 })
        );
        let mut more = w.clone();
        more.push("abandon");
        assert_eq!(
            from_words(&more.join(" ")),
            Err(WordsError::WrongWordCount { found: 25 })
        );
        assert_eq!(from_words(""), Err(WordsError::WrongWordCount { found: 0 }));
    }

    #[test]
    fn unknown_word_is_typed_with_its_position() {
        let mut w: Vec<&str> = ZERO_WORDS.split_whitespace().collect();
        w[6] = "keyward";
        let err = from_words(&w.join(" ")).unwrap_err();
        assert_eq!(err, WordsError::UnknownWord { position: 7 });
        // The error never carries the word itself.
        assert!(!err.to_string().contains("keyward"));
    }

    #[test]
    fn bad_checksum_is_typed() {
        // Last word "art" -> "abandon": every word known, checksum wrong.
        let mut w: Vec<&str> = ZERO_WORDS.split_whitespace().collect();
        w[23] = "abandon";
        assert_eq!(from_words(&w.join(" ")), Err(WordsError::BadChecksum));
        // Two different words swapped.
        let s = RecoverySecret::from_bytes(core::array::from_fn(|i| i as u8 * 7));
        let words = to_words(&s);
        let mut v: Vec<&str> = words.split(' ').collect();
        let (i, j) = (0..24)
            .flat_map(|i| (0..24).map(move |j| (i, j)))
            .find(|&(i, j)| v[i] != v[j])
            .unwrap();
        v.swap(i, j);
        // A swap is caught by the 8-bit checksum (or, 1 time in 256, decodes to
        // another secret): it never yields the original.
        match from_words(&v.join(" ")) {
            Err(e) => assert_eq!(e, WordsError::BadChecksum),
            Ok(other) => assert_ne!(other, s),
        }
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let huge = "abandon ".repeat(200);
        assert_eq!(from_words(&huge), Err(WordsError::TooLong));
    }
}
