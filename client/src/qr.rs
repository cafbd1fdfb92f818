//! The recovery words as a QR code drawn in the terminal (`keyward recovery create --qr`), with
//! the `qrcode` crate (no image support compiled in).
//!
//! The words are the text of the code, so a phone or a paper scanner reads back exactly what
//! `recovery restore --words-file` takes. This module must never write the code anywhere but the
//! string it returns. Residual copies it cannot reach: `qrcode` keeps the encoded bits in its own
//! (not zeroized) buffers until they are dropped; the returned drawing is zeroized by the caller.

use crate::cli::Failure;
use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};
use zeroize::Zeroizing;

/// The QR code of `text` as half-block characters (two modules per character cell), dark on
/// light with the quiet zone, error correction level M.
pub fn render(text: &str) -> Result<Zeroizing<String>, Failure> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|e| format!("drawing the QR code: {e}"))?;
    Ok(Zeroizing::new(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_square_of_half_blocks() {
        let words = "abandon ".repeat(23) + "art";
        let Ok(q) = render(&words) else {
            panic!("rendering failed")
        };
        let lines: Vec<&str> = q.lines().collect();
        // 24 words (~170 bytes) at level M: version 8 or so, 49+ modules plus the quiet zone.
        assert!(lines.len() > 20, "{}", lines.len());
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width));
        assert!(q.chars().all(|c| " ▀▄█\n".contains(c)));
    }
}
