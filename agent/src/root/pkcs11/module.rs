//! The PKCS#11 modules this process has loaded: one [`Module`] per module path, shared by every
//! [`super::conn::Connection`] (one per root: a token or slot told apart by its URI).
//!
//! A module is loaded (`dlopen`) once and initialized (`C_Initialize`) once per *generation*.
//! Re-initializing it (`C_Finalize` + `C_Initialize`, what heals SoftHSM after its token files
//! vanished) ends a generation: every session and object handle of the old one is gone, for every
//! connection, and the module may hand out the same handle numbers again. So every call into the
//! library goes through [`Module::enter`] with the generation its handles belong to: a call from
//! an older generation fails with `Stale` (the hierarchy's recovery then logs in again with the
//! PIN it holds) instead of reaching a handle that now belongs to another root.
//!
//! [`Module::enter`] also holds the module's gate for reading while the call runs, and
//! [`Module::finalize`] takes it for writing: no call of any connection is inside the library
//! when it is finalized (PKCS#11 leaves that undefined; SoftHSM crashed on it under load). A
//! thread already inside the gate of a module enters it again without waiting (a per-thread
//! note), so nested calls cannot deadlock behind a waiting finalize.
//!
//! This module must never log in, open sessions or touch objects: it only loads, initializes,
//! finalizes and counts generations.

use super::error::ck;
use crate::root::RootError;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};

/// One loaded PKCS#11 module, shared by every connection to its tokens.
pub(crate) struct Module {
    path: String,
    ctx: Pkcs11,
    /// Read: a call is inside the library. Write: `C_Initialize` / `C_Finalize`.
    gate: RwLock<()>,
    /// Bumped by every `C_Finalize` (changed only under the gate's write lock).
    generation: AtomicU64,
    initialized: AtomicBool,
}

thread_local! {
    /// The modules (by address) whose gate this thread holds for reading.
    static INSIDE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// A call inside the library: the gate held for reading (unless this thread already held it).
pub(crate) struct Inside<'a> {
    module: &'a Module,
    read: Option<RwLockReadGuard<'a, ()>>,
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        if self.read.is_some() {
            let me = self.module.key();
            INSIDE.with(|v| {
                let mut v = v.borrow_mut();
                if let Some(i) = v.iter().rposition(|k| *k == me) {
                    v.remove(i);
                }
            });
        }
    }
}

impl Inside<'_> {
    /// The module's context, for calls that take no session (slot and token info).
    pub(crate) fn ctx(&self) -> &Pkcs11 {
        &self.module.ctx
    }
}

/// The process's modules by path.
fn registry() -> &'static Mutex<BTreeMap<String, Arc<Module>>> {
    static MODULES: OnceLock<Mutex<BTreeMap<String, Arc<Module>>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// The module at `path`, loaded on first use and shared afterwards. A module that fails to load
/// is not remembered: the next use tries again.
pub(crate) fn module(path: &str, op: &'static str) -> Result<Arc<Module>, RootError> {
    let key = registry_key(path);
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = reg.get(&key) {
        return Ok(m.clone());
    }
    let ctx = Pkcs11::new(path)
        .map_err(|e| RootError::unavailable(op, format!("loading {path}: {e}")))?;
    let m = Arc::new(Module {
        path: path.to_string(),
        ctx,
        gate: RwLock::new(()),
        generation: AtomicU64::new(0),
        initialized: AtomicBool::new(false),
    });
    reg.insert(key, m.clone());
    Ok(m)
}

/// The module at `path` if this process loaded it.
pub(crate) fn loaded(path: &str) -> Option<Arc<Module>> {
    let key = registry_key(path);
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned()
}

/// The registry's key for a module path: the file it resolves to (two spellings of one path,
/// or a symlink, are one loaded library and must be one module), else the path as given (a
/// bare `libfoo.so` the loader finds).
pub(crate) fn registry_key(path: &str) -> String {
    std::fs::canonicalize(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_string())
}

impl Module {
    fn key(&self) -> usize {
        self as *const Module as usize
    }

    fn held_by_this_thread(&self) -> bool {
        let me = self.key();
        INSIDE.with(|v| v.borrow().contains(&me))
    }

    /// The current generation (changes only when the module is finalized).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether handles of `generation` are still valid: the module is initialized and was not
    /// re-initialized since.
    pub(crate) fn is_current(&self, generation: u64) -> bool {
        self.initialized.load(Ordering::SeqCst) && self.generation() == generation
    }

    /// Enter the library for a call on handles of `generation`: `Stale` when the module was
    /// re-initialized (or finalized) since.
    pub(crate) fn enter(&self, generation: u64, op: &'static str) -> Result<Inside<'_>, RootError> {
        let read = if self.held_by_this_thread() {
            None
        } else {
            let g = self.gate.read().unwrap_or_else(|p| p.into_inner());
            let me = self.key();
            INSIDE.with(|v| v.borrow_mut().push(me));
            Some(g)
        };
        let inside = Inside { module: self, read };
        if !self.is_current(generation) {
            return Err(RootError::stale(
                op,
                format!(
                    "the PKCS#11 module {} was re-initialized: this root's sessions are gone",
                    self.path
                ),
            ));
        }
        Ok(inside)
    }

    /// Initialize the module unless it is: returns the generation handles opened now belong to.
    pub(crate) fn initialize(&self, op: &'static str) -> Result<u64, RootError> {
        if self.initialized.load(Ordering::SeqCst) {
            return Ok(self.generation());
        }
        if self.held_by_this_thread() {
            return Err(RootError::stale(
                op,
                "the module is not initialized and this thread is inside a call",
            ));
        }
        let _w = self.gate.write().unwrap_or_else(|p| p.into_inner());
        if !self.initialized.load(Ordering::SeqCst) {
            match self
                .ctx
                .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            {
                Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
                Err(e) => return Err(ck(op, "C_Initialize")(e)),
            }
            self.initialized.store(true, Ordering::SeqCst);
        }
        Ok(self.generation())
    }

    /// Finalize the module if `generation` is still the current one (else another connection
    /// did already, and the module must not be finalized under the sessions opened since).
    /// Waits until no call of any connection is inside the library. Returns whether it
    /// finalized.
    pub(crate) fn finalize(&self, generation: u64) -> bool {
        if self.held_by_this_thread() {
            tracing::error!(
                module = %self.path,
                "not finalizing the PKCS#11 module from inside one of its calls"
            );
            return false;
        }
        let _w = self.gate.write().unwrap_or_else(|p| p.into_inner());
        if self.generation() != generation || !self.initialized.load(Ordering::SeqCst) {
            return false;
        }
        let _ = self.ctx.clone().finalize();
        self.initialized.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        tracing::info!(module = %self.path, generation = generation + 1, "PKCS#11 module finalized; every root on it re-opens its sessions");
        true
    }
}
