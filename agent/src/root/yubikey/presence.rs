//! Is the card still there? Asks pcscd for a reader's state (no APDU, so it never disturbs the
//! card or another program using it): present or not, and pcsc-lite's per-reader counter of
//! insertions and removals, which tells a card that was removed and reinserted since the last
//! contact from one that stayed.
//!
//! This module only observes; it must never open, reset or send anything to a card.

use std::ffi::CString;
use std::sync::Mutex;
use std::time::Duration;

use super::root::lock;

/// The last contact with the card.
pub(super) struct Seen {
    pub(super) reader: CString,
    pub(super) version: String,
    /// pcsc-lite's per-reader insert/remove counter when we last saw the card.
    pub(super) events: Option<u32>,
}

/// What pcscd says about the card last seen in a reader.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Still there, untouched since the last contact.
    Present,
    /// There, but removed and reinserted since.
    Reinserted,
    /// Not in its reader.
    Removed,
    /// pcscd did not answer.
    Unreachable(pcsc::Error),
}

/// A PC/SC context for presence checks, made on first use and again after pcscd restarts.
#[derive(Default)]
pub(super) struct Presence {
    ctx: Mutex<Option<pcsc::Context>>,
}

impl Presence {
    /// The reader's state from pcscd: (card present, event counter).
    pub(super) fn reader_state(&self, reader: &CString) -> Result<(bool, u32), pcsc::Error> {
        let mut ctx = lock(&self.ctx);
        for attempt in 0..2 {
            if ctx.is_none() {
                *ctx = Some(pcsc::Context::establish(pcsc::Scope::User)?);
            }
            let Some(c) = ctx.as_ref() else { continue };
            let mut rs = [pcsc::ReaderState::new(reader.clone(), pcsc::State::UNAWARE)];
            match c.get_status_change(Duration::ZERO, &mut rs) {
                Ok(()) => {
                    let st = rs[0].event_state();
                    let present = st.contains(pcsc::State::PRESENT)
                        && !st.intersects(pcsc::State::UNAVAILABLE | pcsc::State::UNKNOWN);
                    return Ok((present, rs[0].event_count()));
                }
                Err(pcsc::Error::UnknownReader) => return Ok((false, 0)),
                Err(e) if attempt == 1 => return Err(e),
                // pcscd restarted: a new context, once.
                Err(_) => *ctx = None,
            }
        }
        Err(pcsc::Error::NoService)
    }

    /// The event counter now, for a [`Seen`] after a contact (`None` if pcscd does not say).
    pub(super) fn events(&self, reader: &CString) -> Option<u32> {
        self.reader_state(reader).ok().map(|(_, n)| n)
    }

    /// Is the card last seen in `reader` (with counter `events`) still there, untouched?
    pub(super) fn check(&self, reader: &CString, events: Option<u32>) -> Verdict {
        match self.reader_state(reader) {
            Ok((true, n)) if events.is_none_or(|e| e == n) => Verdict::Present,
            Ok((true, _)) => Verdict::Reinserted,
            Ok((false, _)) => Verdict::Removed,
            Err(e) => Verdict::Unreachable(e),
        }
    }
}
