//! Process hardening at start-up: no core dumps, no ptrace by other processes of the same user.
//!
//! A core dump of a key agent would write PINs and unwrapped keys to disk. `PR_SET_DUMPABLE 0`
//! stops dumps and ptrace attach by unprivileged peers; `RLIMIT_CORE 0` also covers core handlers
//! that ignore the dumpable flag.

use thiserror::Error;

#[derive(Debug, Error)]
#[error("hardening step `{step}` failed: {source}")]
pub struct HardeningError {
    step: &'static str,
    source: nix::Error,
}

/// Disable core dumps for this process. Called once, first thing in `main`.
pub fn disable_core_dumps() -> Result<(), HardeningError> {
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0).map_err(
        |source| HardeningError {
            step: "setrlimit(RLIMIT_CORE, 0)",
            source,
        },
    )?;
    nix::sys::prctl::set_dumpable(false).map_err(|source| HardeningError {
        step: "prctl(PR_SET_DUMPABLE, 0)",
        source,
    })?;
    Ok(())
}
