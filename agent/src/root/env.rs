//! The environment PKCS#11 modules read (`[root.env]`, e.g. `SOFTHSM2_CONF`): applied once, at
//! start-up, before any thread exists, for every root the process will use; never later.
//!
//! `std::env::set_var` is only sound while no other thread reads the environment, and a module
//! reads its variables once, at `C_Initialize` (SoftHSM: `SOFTHSM2_CONF`), which happens once per
//! process for all the roots on it. So `keywardd` merges the `env` of every root in its
//! configuration ([`crate::config::Config::root_env`], which refuses two roots that disagree on a
//! variable) and calls [`apply_at_startup`] before it starts a thread. Building a PKCS#11 root
//! afterwards only checks ([`check_applied`]) that its `env` is what the process has: a root whose
//! `env` asks for something else is refused with `RootError::Config`, never applied.
//!
//! This module must never call `set_var` anywhere but in [`apply_at_startup`].

use super::RootError;
use std::collections::BTreeMap;

/// Set every variable of `env` in the process environment.
///
/// Call it once, at start-up, before any thread exists (`keywardd`'s `main` does, right after
/// reading the configuration). Test harnesses call it before they build roots, with the same
/// values every time.
pub fn apply_at_startup(env: &BTreeMap<String, String>) {
    for (k, v) in env {
        if std::env::var(k).ok().as_deref() != Some(v.as_str()) {
            std::env::set_var(k, v);
        }
    }
}

/// `Ok` when every variable of `env` has that value in the process environment; else a
/// `RootError::Config` naming the variable: the environment is applied only at start-up.
pub fn check_applied(env: &BTreeMap<String, String>) -> Result<(), RootError> {
    for (k, v) in env {
        match std::env::var(k) {
            Ok(have) if have == *v => {}
            have => {
                return Err(RootError::Config(format!(
                    "[root.env] {k} = {v:?} is not the process's environment ({}): the \
                     environment of every root is applied once, at start-up; put this root in \
                     the agent's configuration (`[root]` or `[[extra_root]]`) and restart it",
                    match have {
                        Ok(h) => format!("it has {k} = {h:?}"),
                        Err(_) => format!("{k} is unset"),
                    }
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_env_that_was_not_applied_is_refused() {
        let mut env = BTreeMap::new();
        env.insert(
            "KEYWARD_ENV_TEST_UNSET_VARIABLE".to_string(),
            "x".to_string(),
        );
        match check_applied(&env) {
            Err(RootError::Config(m)) => {
                assert!(m.contains("KEYWARD_ENV_TEST_UNSET_VARIABLE"), "{m}");
                assert!(m.contains("is unset"), "{m}");
            }
            other => panic!("want Config, got {other:?}"),
        }
        assert!(check_applied(&BTreeMap::new()).is_ok());
    }
}
