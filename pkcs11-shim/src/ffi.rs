//! The C face of the module: every exported PKCS#11 function, and the only `unsafe` code in the
//! crate. Each function is wrapped in `catch_unwind` (a panic becomes `CKR_GENERAL_ERROR` and
//! never unwinds into C), checks its pointers for NULL, turns C arguments into plain Rust values,
//! calls the safe core in `token.rs`, and writes results back under the two-call length
//! convention. This module must never decide anything about keys, sessions or the agent, never
//! keep a pointer past the call that gave it, and never write more than a caller said its buffer
//! holds.
#![allow(unsafe_code, non_snake_case)]

use crate::objects::Read;
use crate::token::{self, Mech, Out, Template, R};
use cryptoki_sys::*;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run one exported function's body: a panic becomes `CKR_GENERAL_ERROR`.
fn guard(f: impl FnOnce() -> R<()>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(rv)) => rv,
        Err(_) => CKR_GENERAL_ERROR,
    }
}

fn nonnull<T>(p: *const T) -> R<()> {
    if p.is_null() {
        Err(CKR_ARGUMENTS_BAD)
    } else {
        Ok(())
    }
}

/// # Safety
/// `p` must be NULL (then `len` must be 0) or point to `len` readable bytes for the call.
// SAFETY: callers uphold the contract above (PKCS#11 gives buffers with their lengths).
unsafe fn bytes<'a>(p: *const CK_BYTE, len: CK_ULONG) -> R<&'a [u8]> {
    if p.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(CKR_ARGUMENTS_BAD)
        };
    }
    // SAFETY: non-NULL and, per the contract, `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len as usize) })
}

/// # Safety
/// `p` must be NULL (with `n` 0) or point to `n` `CK_ATTRIBUTE`s whose values are readable.
// SAFETY: callers uphold the contract above.
unsafe fn template(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> R<Template> {
    if p.is_null() {
        return if n == 0 {
            Ok(Vec::new())
        } else {
            Err(CKR_ARGUMENTS_BAD)
        };
    }
    // SAFETY: non-NULL and `n` entries, per the contract.
    let attrs = unsafe { std::slice::from_raw_parts(p, n as usize) };
    attrs
        .iter()
        // SAFETY: each value pointer comes with its length from the caller.
        .map(|a| {
            Ok((
                a.type_,
                // SAFETY: the value pointer comes with its length from the caller.
                unsafe { bytes(a.pValue as *const u8, a.ulValueLen) }?.to_vec(),
            ))
        })
        .collect()
}

/// # Safety
/// `p` must point to a `CK_MECHANISM` whose parameter, if any, is readable at its length.
// SAFETY: callers uphold the contract above; each parameter struct is read only when its
// length is exactly that struct's size.
unsafe fn mechanism(p: *const CK_MECHANISM) -> R<Mech> {
    nonnull(p)?;
    // SAFETY: non-NULL, per the contract a valid CK_MECHANISM.
    let m = unsafe { &*p };
    let param_is = |size: usize| !m.pParameter.is_null() && m.ulParameterLen as usize == size;
    Ok(match m.mechanism {
        CKM_AES_GCM => {
            if !param_is(std::mem::size_of::<CK_GCM_PARAMS>()) {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            // SAFETY: the parameter is a CK_GCM_PARAMS (checked size), its buffers readable.
            unsafe {
                let g = &*(m.pParameter as *const CK_GCM_PARAMS);
                Mech::Gcm {
                    iv: bytes(g.pIv, g.ulIvLen)?.to_vec(),
                    aad: bytes(g.pAAD, g.ulAADLen)?.to_vec(),
                    tag_bits: g.ulTagBits,
                }
            }
        }
        CKM_ECDH1_DERIVE => {
            if !param_is(std::mem::size_of::<CK_ECDH1_DERIVE_PARAMS>()) {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            // SAFETY: the parameter is a CK_ECDH1_DERIVE_PARAMS (checked size).
            unsafe {
                let e = &*(m.pParameter as *const CK_ECDH1_DERIVE_PARAMS);
                Mech::Ecdh {
                    kdf: e.kdf,
                    shared: bytes(e.pSharedData, e.ulSharedDataLen)?.to_vec(),
                    public: bytes(e.pPublicData, e.ulPublicDataLen)?.to_vec(),
                }
            }
        }
        CKM_EDDSA if param_is(std::mem::size_of::<CK_EDDSA_PARAMS>()) => {
            // SAFETY: the parameter is a CK_EDDSA_PARAMS (checked size).
            unsafe {
                let e = &*(m.pParameter as *const CK_EDDSA_PARAMS);
                Mech::Eddsa {
                    prehash: e.phFlag != CK_FALSE,
                    context: bytes(e.pContextData, e.ulContextDataLen)?.to_vec(),
                }
            }
        }
        other => Mech::Plain(other),
    })
}

/// Write an output under the two-call convention.
/// # Safety
/// `plen` must be valid; `p` NULL or writable for `*plen` bytes.
// SAFETY: callers uphold the contract above.
unsafe fn write_out(out: Out, p: *mut CK_BYTE, plen: *mut CK_ULONG) -> R<()> {
    // SAFETY: plen checked non-NULL by the caller before the operation ran.
    unsafe {
        match out {
            Out::Need(n) => {
                *plen = n as CK_ULONG;
                Ok(())
            }
            Out::TooSmall(n) => {
                *plen = n as CK_ULONG;
                Err(CKR_BUFFER_TOO_SMALL)
            }
            Out::Done(v) => {
                std::ptr::copy_nonoverlapping(v.as_ptr(), p, v.len());
                *plen = v.len() as CK_ULONG;
                Ok(())
            }
        }
    }
}

/// The capacity a caller offers: None for a NULL buffer (a length query).
/// # Safety
/// `plen` must be valid for reads.
// SAFETY: callers uphold the contract above.
unsafe fn capacity(p: *const CK_BYTE, plen: *const CK_ULONG) -> R<Option<usize>> {
    nonnull(plen)?;
    // SAFETY: non-NULL, per the contract readable.
    Ok((!p.is_null()).then(|| unsafe { *plen } as usize))
}

fn module() -> R<std::sync::Arc<token::Module>> {
    token::module()
}

// ---- general purpose ---------------------------------------------------------------------------

extern "C" fn C_Initialize(args: *mut c_void) -> CK_RV {
    guard(|| {
        if !args.is_null() {
            // SAFETY: a non-NULL argument is a CK_C_INITIALIZE_ARGS, per the spec.
            let a = unsafe { &*(args as *const CK_C_INITIALIZE_ARGS) };
            if !a.pReserved.is_null() {
                return Err(CKR_ARGUMENTS_BAD);
            }
            let given = [
                a.CreateMutex.is_some(),
                a.DestroyMutex.is_some(),
                a.LockMutex.is_some(),
                a.UnlockMutex.is_some(),
            ];
            if given.iter().any(|g| *g) && !given.iter().all(|g| *g) {
                return Err(CKR_ARGUMENTS_BAD);
            }
            // Caller callbacks or CKF_OS_LOCKING_OK: this module always uses the OS's locks,
            // which the spec allows when the flag is set and which serve callers either way.
        }
        token::initialize()
    })
}

extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    guard(|| {
        if !reserved.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        token::finalize()
    })
}

extern "C" fn C_GetInfo(info: *mut CK_INFO) -> CK_RV {
    guard(|| {
        module()?;
        nonnull(info)?;
        // SAFETY: non-NULL, a caller's CK_INFO.
        unsafe { *info = token::info() };
        Ok(())
    })
}

/// The PKCS#11 2.40 entry point (OpenSSH uses only this).
#[no_mangle]
pub extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guard(|| {
        nonnull(list)?;
        // SAFETY: non-NULL; the list is a static that lives as long as the library.
        unsafe { *list = &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST };
        Ok(())
    })
}

const INTERFACE_NAME: &[u8] = b"PKCS 11\0";

/// A `CK_INTERFACE` in a static: its pointers name other statics and are never written through.
struct Interface(CK_INTERFACE);
// SAFETY: the pointers inside point to immutable statics; sharing them between threads is safe.
unsafe impl Sync for Interface {}

static INTERFACES: [Interface; 2] = [
    Interface(CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTION_LIST_3_0 as *const CK_FUNCTION_LIST_3_0 as *mut c_void,
        flags: 0,
    }),
    Interface(CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut c_void,
        flags: 0,
    }),
];

/// PKCS#11 3.0: the interfaces, "PKCS 11" 3.0 first, then 2.40.
#[no_mangle]
pub extern "C" fn C_GetInterfaceList(list: *mut CK_INTERFACE, count: *mut CK_ULONG) -> CK_RV {
    guard(|| {
        nonnull(count)?;
        // SAFETY: count non-NULL; list NULL (a length query) or room for *count interfaces.
        unsafe {
            if list.is_null() {
                *count = INTERFACES.len() as CK_ULONG;
                return Ok(());
            }
            if (*count as usize) < INTERFACES.len() {
                *count = INTERFACES.len() as CK_ULONG;
                return Err(CKR_BUFFER_TOO_SMALL);
            }
            for (i, itf) in INTERFACES.iter().enumerate() {
                std::ptr::write(list.add(i), CK_INTERFACE { ..itf.0 });
            }
            *count = INTERFACES.len() as CK_ULONG;
        }
        Ok(())
    })
}

/// PKCS#11 3.0: one interface by name ("PKCS 11" or NULL) and version (3.0, 2.40 or NULL).
#[no_mangle]
pub extern "C" fn C_GetInterface(
    name: *mut CK_UTF8CHAR,
    version: *mut CK_VERSION,
    out: *mut *mut CK_INTERFACE,
    flags: CK_FLAGS,
) -> CK_RV {
    guard(|| {
        nonnull(out)?;
        if flags != 0 {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // The interface returned is a static; `out` was checked non-NULL above.
        // SAFETY: name is NULL or a NUL-terminated string, version NULL or a CK_VERSION (spec).
        unsafe {
            if !name.is_null() {
                let n = std::ffi::CStr::from_ptr(name as *const std::ffi::c_char);
                if n.to_bytes_with_nul() != INTERFACE_NAME {
                    return Err(CKR_ARGUMENTS_BAD);
                }
            }
            let pick = if version.is_null() {
                0
            } else {
                match ((*version).major, (*version).minor) {
                    (3, 0) => 0,
                    (2, 40) => 1,
                    _ => return Err(CKR_ARGUMENTS_BAD),
                }
            };
            *out = &INTERFACES[pick].0 as *const CK_INTERFACE as *mut CK_INTERFACE;
        }
        Ok(())
    })
}

// ---- slots and tokens --------------------------------------------------------------------------

extern "C" fn C_GetSlotList(
    _present: CK_BBOOL,
    list: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        nonnull(count)?;
        let slots = m.slot_list();
        // SAFETY: count non-NULL; list NULL or room for *count slot ids.
        unsafe {
            if list.is_null() {
                *count = slots.len() as CK_ULONG;
                return Ok(());
            }
            if (*count as usize) < slots.len() {
                *count = slots.len() as CK_ULONG;
                return Err(CKR_BUFFER_TOO_SMALL);
            }
            std::ptr::copy_nonoverlapping(slots.as_ptr(), list, slots.len());
            *count = slots.len() as CK_ULONG;
        }
        Ok(())
    })
}

extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    guard(|| {
        let m = module()?;
        nonnull(info)?;
        let i = m.slot_info(slot)?;
        // SAFETY: non-NULL, a caller's CK_SLOT_INFO.
        unsafe { *info = i };
        Ok(())
    })
}

extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    guard(|| {
        let m = module()?;
        nonnull(info)?;
        let i = m.token_info(slot)?;
        // SAFETY: non-NULL, a caller's CK_TOKEN_INFO.
        unsafe { *info = i };
        Ok(())
    })
}

extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    list: *mut CK_MECHANISM_TYPE,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        nonnull(count)?;
        let mechs = m.mechanism_list(slot)?;
        // SAFETY: count non-NULL; list NULL or room for *count entries.
        unsafe {
            if list.is_null() {
                *count = mechs.len() as CK_ULONG;
                return Ok(());
            }
            if (*count as usize) < mechs.len() {
                *count = mechs.len() as CK_ULONG;
                return Err(CKR_BUFFER_TOO_SMALL);
            }
            std::ptr::copy_nonoverlapping(mechs.as_ptr(), list, mechs.len());
            *count = mechs.len() as CK_ULONG;
        }
        Ok(())
    })
}

extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    t: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        nonnull(info)?;
        m.mechanism_list(slot)?;
        let i = token::mechanism_info(t)?;
        // SAFETY: non-NULL, a caller's CK_MECHANISM_INFO.
        unsafe { *info = i };
        Ok(())
    })
}

// ---- sessions and login ------------------------------------------------------------------------

extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _app: *mut c_void,
    _notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        nonnull(session)?;
        let h = m.open_session(slot, flags)?;
        // SAFETY: non-NULL, a caller's handle.
        unsafe { *session = h };
        Ok(())
    })
}

extern "C" fn C_CloseSession(h: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| module()?.close_session(h))
}

extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    guard(|| module()?.close_all_sessions(slot))
}

extern "C" fn C_GetSessionInfo(h: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO) -> CK_RV {
    guard(|| {
        let m = module()?;
        nonnull(info)?;
        let i = m.session_info(h)?;
        // SAFETY: non-NULL, a caller's CK_SESSION_INFO.
        unsafe { *info = i };
        Ok(())
    })
}

extern "C" fn C_Login(
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        if pin.is_null() {
            // A NULL PIN: the protected authentication path (the agent's own prompt).
            return m.login(h, user, None);
        }
        // SAFETY: the PIN is non-NULL and, per the contract, `len` readable bytes.
        let pin = zeroize::Zeroizing::new(unsafe { bytes(pin, len) }?.to_vec());
        m.login(h, user, Some(&pin))
    })
}

extern "C" fn C_Logout(h: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| module()?.logout(h))
}

// ---- objects -----------------------------------------------------------------------------------

extern "C" fn C_DestroyObject(h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE) -> CK_RV {
    guard(|| module()?.destroy(h, obj))
}

extern "C" fn C_GetObjectSize(
    h: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
    size: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        nonnull(size)?;
        let s = m.object_size(h, obj)?;
        // SAFETY: non-NULL, a caller's CK_ULONG.
        unsafe { *size = s };
        Ok(())
    })
}

extern "C" fn C_GetAttributeValue(
    h: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        if n > 0 {
            nonnull(t)?;
        }
        // Each attribute's pValue is written only within the ulValueLen its caller gave.
        // SAFETY: t points to n attributes whose pValue buffers hold ulValueLen bytes, or NULL.
        unsafe {
            let attrs = if n == 0 {
                &mut [][..]
            } else {
                std::slice::from_raw_parts_mut(t, n as usize)
            };
            let asked: Vec<_> = attrs
                .iter()
                .map(|a| {
                    (
                        a.type_,
                        (!a.pValue.is_null()).then_some(a.ulValueLen as usize),
                    )
                })
                .collect();
            let (reads, rv) = m.get_attributes(h, obj, &asked)?;
            for (a, r) in attrs.iter_mut().zip(reads) {
                match r {
                    Read::Len(len) => a.ulValueLen = len as CK_ULONG,
                    Read::Copy(v) => {
                        std::ptr::copy_nonoverlapping(v.as_ptr(), a.pValue as *mut u8, v.len());
                        a.ulValueLen = v.len() as CK_ULONG;
                    }
                    Read::Unavailable(_) => a.ulValueLen = CK_UNAVAILABLE_INFORMATION,
                }
            }
            if rv == CKR_OK {
                Ok(())
            } else {
                Err(rv)
            }
        }
    })
}

extern "C" fn C_FindObjectsInit(h: CK_SESSION_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: t is NULL with n 0, or n readable attributes.
        let t = unsafe { template(t, n) }?;
        m.find_init(h, t)
    })
}

extern "C" fn C_FindObjects(
    h: CK_SESSION_HANDLE,
    out: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        nonnull(count)?;
        if max > 0 {
            nonnull(out)?;
        }
        let found = m.find(h, max as usize)?;
        // SAFETY: out has room for max handles (found.len() <= max); count non-NULL.
        unsafe {
            std::ptr::copy_nonoverlapping(found.as_ptr(), out, found.len());
            *count = found.len() as CK_ULONG;
        }
        Ok(())
    })
}

extern "C" fn C_FindObjectsFinal(h: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| module()?.find_final(h))
}

// ---- encryption (AES-GCM) ----------------------------------------------------------------------

extern "C" fn C_EncryptInit(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: mech is a caller's CK_MECHANISM (checked for NULL inside).
        let mech = unsafe { mechanism(mech) }?;
        m.crypt_init(h, mech, key, true)
    })
}

extern "C" fn C_DecryptInit(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: mech is a caller's CK_MECHANISM (checked for NULL inside).
        let mech = unsafe { mechanism(mech) }?;
        m.crypt_init(h, mech, key, false)
    })
}

fn crypt_call(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
    encrypt: bool,
    fin: bool,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: data holds len bytes; out NULL or *out_len writable bytes; out_len valid.
        unsafe {
            let cap = capacity(out, out_len)?;
            let input = if fin { None } else { Some(bytes(data, len)?) };
            let o = m.crypt(h, input, cap, encrypt)?;
            write_out(o, out, out_len)
        }
    })
}

fn crypt_update(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out_len: *mut CK_ULONG,
    encrypt: bool,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        nonnull(out_len)?;
        // SAFETY: data holds len bytes; out_len valid (nothing is output before Final).
        unsafe {
            m.crypt_update(h, bytes(data, len)?, encrypt)?;
            *out_len = 0;
        }
        Ok(())
    })
}

extern "C" fn C_Encrypt(
    h: CK_SESSION_HANDLE,
    d: *mut CK_BYTE,
    l: CK_ULONG,
    o: *mut CK_BYTE,
    ol: *mut CK_ULONG,
) -> CK_RV {
    crypt_call(h, d, l, o, ol, true, false)
}
extern "C" fn C_EncryptUpdate(
    h: CK_SESSION_HANDLE,
    d: *mut CK_BYTE,
    l: CK_ULONG,
    _o: *mut CK_BYTE,
    ol: *mut CK_ULONG,
) -> CK_RV {
    crypt_update(h, d, l, ol, true)
}
extern "C" fn C_EncryptFinal(h: CK_SESSION_HANDLE, o: *mut CK_BYTE, ol: *mut CK_ULONG) -> CK_RV {
    crypt_call(h, std::ptr::null_mut(), 0, o, ol, true, true)
}
extern "C" fn C_Decrypt(
    h: CK_SESSION_HANDLE,
    d: *mut CK_BYTE,
    l: CK_ULONG,
    o: *mut CK_BYTE,
    ol: *mut CK_ULONG,
) -> CK_RV {
    crypt_call(h, d, l, o, ol, false, false)
}
extern "C" fn C_DecryptUpdate(
    h: CK_SESSION_HANDLE,
    d: *mut CK_BYTE,
    l: CK_ULONG,
    _o: *mut CK_BYTE,
    ol: *mut CK_ULONG,
) -> CK_RV {
    crypt_update(h, d, l, ol, false)
}
extern "C" fn C_DecryptFinal(h: CK_SESSION_HANDLE, o: *mut CK_BYTE, ol: *mut CK_ULONG) -> CK_RV {
    crypt_call(h, std::ptr::null_mut(), 0, o, ol, false, true)
}

// ---- digests -----------------------------------------------------------------------------------

extern "C" fn C_DigestInit(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: mech is a caller's CK_MECHANISM (checked for NULL inside).
        let mech = unsafe { mechanism(mech) }?;
        m.digest_init(h, mech)
    })
}

extern "C" fn C_Digest(
    h: CK_SESSION_HANDLE,
    d: *mut CK_BYTE,
    l: CK_ULONG,
    o: *mut CK_BYTE,
    ol: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: d holds l bytes; o NULL or *ol writable bytes; ol valid.
        unsafe {
            let cap = capacity(o, ol)?;
            let r = m.digest(h, Some(bytes(d, l)?), cap)?;
            write_out(r, o, ol)
        }
    })
}

extern "C" fn C_DigestUpdate(h: CK_SESSION_HANDLE, d: *mut CK_BYTE, l: CK_ULONG) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: d holds l bytes.
        let d = unsafe { bytes(d, l) }?;
        m.digest_update(h, d)
    })
}

extern "C" fn C_DigestFinal(h: CK_SESSION_HANDLE, o: *mut CK_BYTE, ol: *mut CK_ULONG) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: o NULL or *ol writable bytes; ol valid.
        unsafe {
            let cap = capacity(o, ol)?;
            let r = m.digest(h, None, cap)?;
            write_out(r, o, ol)
        }
    })
}

// ---- signing and verifying ---------------------------------------------------------------------

extern "C" fn C_SignInit(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: mech is a caller's CK_MECHANISM (checked for NULL inside).
        let mech = unsafe { mechanism(mech) }?;
        m.sign_init(h, mech, key)
    })
}

extern "C" fn C_Sign(
    h: CK_SESSION_HANDLE,
    d: *mut CK_BYTE,
    l: CK_ULONG,
    o: *mut CK_BYTE,
    ol: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: d holds l bytes; o NULL or *ol writable bytes; ol valid.
        unsafe {
            let cap = capacity(o, ol)?;
            let r = m.sign(h, Some(bytes(d, l)?), cap)?;
            write_out(r, o, ol)
        }
    })
}

extern "C" fn C_SignUpdate(h: CK_SESSION_HANDLE, d: *mut CK_BYTE, l: CK_ULONG) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: d holds l bytes.
        let d = unsafe { bytes(d, l) }?;
        m.sign_update(h, d)
    })
}

extern "C" fn C_SignFinal(h: CK_SESSION_HANDLE, o: *mut CK_BYTE, ol: *mut CK_ULONG) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: o NULL or *ol writable bytes; ol valid.
        unsafe {
            let cap = capacity(o, ol)?;
            let r = m.sign(h, None, cap)?;
            write_out(r, o, ol)
        }
    })
}

extern "C" fn C_VerifyInit(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: mech is a caller's CK_MECHANISM (checked for NULL inside).
        let mech = unsafe { mechanism(mech) }?;
        m.verify_init(h, mech, key)
    })
}

extern "C" fn C_Verify(
    h: CK_SESSION_HANDLE,
    d: *mut CK_BYTE,
    l: CK_ULONG,
    s: *mut CK_BYTE,
    sl: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: d holds l bytes, s holds sl bytes.
        let (d, s) = unsafe { (bytes(d, l)?, bytes(s, sl)?) };
        m.verify(h, Some(d), s)
    })
}

extern "C" fn C_VerifyUpdate(h: CK_SESSION_HANDLE, d: *mut CK_BYTE, l: CK_ULONG) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: d holds l bytes.
        let d = unsafe { bytes(d, l) }?;
        m.verify_update(h, d)
    })
}

extern "C" fn C_VerifyFinal(h: CK_SESSION_HANDLE, s: *mut CK_BYTE, sl: CK_ULONG) -> CK_RV {
    guard(|| {
        let m = module()?;
        // SAFETY: s holds sl bytes.
        let s = unsafe { bytes(s, sl) }?;
        m.verify(h, None, s)
    })
}

// ---- keys and random ---------------------------------------------------------------------------

extern "C" fn C_GenerateKey(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        nonnull(key)?;
        // SAFETY: mech a caller's CK_MECHANISM, t n readable attributes, key a caller's handle.
        unsafe {
            let (mech, t) = (mechanism(mech)?, template(t, n)?);
            *key = m.generate_key(h, mech, &t)?;
        }
        Ok(())
    })
}

extern "C" fn C_GenerateKeyPair(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    pt: *mut CK_ATTRIBUTE,
    pn: CK_ULONG,
    st: *mut CK_ATTRIBUTE,
    sn: CK_ULONG,
    public: *mut CK_OBJECT_HANDLE,
    private: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        nonnull(public)?;
        nonnull(private)?;
        // SAFETY: mech a caller's CK_MECHANISM, pt/st readable templates, the handles writable.
        unsafe {
            let (mech, pt, st) = (mechanism(mech)?, template(pt, pn)?, template(st, sn)?);
            let (pubh, privh) = m.generate_key_pair(h, mech, &pt, &st)?;
            *public = pubh;
            *private = privh;
        }
        Ok(())
    })
}

extern "C" fn C_DeriveKey(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    base: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let m = module()?;
        nonnull(key)?;
        // SAFETY: mech a caller's CK_MECHANISM, t n readable attributes, key a caller's handle.
        unsafe {
            let (mech, t) = (mechanism(mech)?, template(t, n)?);
            *key = m.derive(h, mech, base, &t)?;
        }
        Ok(())
    })
}

extern "C" fn C_SeedRandom(h: CK_SESSION_HANDLE, _seed: *mut CK_BYTE, _len: CK_ULONG) -> CK_RV {
    guard(|| {
        module()?.check_session(h)?;
        Err(CKR_RANDOM_SEED_NOT_SUPPORTED)
    })
}

extern "C" fn C_GenerateRandom(h: CK_SESSION_HANDLE, out: *mut CK_BYTE, len: CK_ULONG) -> CK_RV {
    guard(|| {
        let m = module()?;
        if len > 0 {
            nonnull(out)?;
        }
        let r = m.random(h, len as usize)?;
        // SAFETY: out has room for len bytes, and r is exactly len bytes.
        unsafe { std::ptr::copy_nonoverlapping(r.as_ptr(), out, r.len()) };
        Ok(())
    })
}

/// Functions this module does not offer: `CKR_FUNCTION_NOT_SUPPORTED` once initialized.
macro_rules! not_supported {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ); )*) => {
        $(
            extern "C" fn $name($($arg: $ty),*) -> CK_RV {
                guard(|| {
                    module()?;
                    Err(CKR_FUNCTION_NOT_SUPPORTED)
                })
            }
        )*
    };
}
not_supported! {
    C_InitToken(_a1: CK_SLOT_ID, _a2: *mut CK_UTF8CHAR, _a3: CK_ULONG, _a4: *mut CK_UTF8CHAR);
    C_InitPIN(_a1: CK_SESSION_HANDLE, _a2: *mut CK_UTF8CHAR, _a3: CK_ULONG);
    C_SetPIN(_a1: CK_SESSION_HANDLE, _a2: *mut CK_UTF8CHAR, _a3: CK_ULONG, _a4: *mut CK_UTF8CHAR, _a5: CK_ULONG);
    C_GetOperationState(_a1: CK_SESSION_HANDLE, _a2: *mut CK_BYTE, _a3: *mut CK_ULONG);
    C_SetOperationState(_a1: CK_SESSION_HANDLE, _a2: *mut CK_BYTE, _a3: CK_ULONG, _a4: CK_OBJECT_HANDLE, _a5: CK_OBJECT_HANDLE);
    C_CreateObject(_a1: CK_SESSION_HANDLE, _a2: *mut CK_ATTRIBUTE, _a3: CK_ULONG, _a4: *mut CK_OBJECT_HANDLE);
    C_CopyObject(_a1: CK_SESSION_HANDLE, _a2: CK_OBJECT_HANDLE, _a3: *mut CK_ATTRIBUTE, _a4: CK_ULONG, _a5: *mut CK_OBJECT_HANDLE);
    C_SetAttributeValue(_a1: CK_SESSION_HANDLE, _a2: CK_OBJECT_HANDLE, _a3: *mut CK_ATTRIBUTE, _a4: CK_ULONG);
    C_DigestKey(_a1: CK_SESSION_HANDLE, _a2: CK_OBJECT_HANDLE);
    C_SignRecoverInit(_a1: CK_SESSION_HANDLE, _a2: *mut CK_MECHANISM, _a3: CK_OBJECT_HANDLE);
    C_SignRecover(_a1: CK_SESSION_HANDLE, _a2: *mut CK_BYTE, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: *mut CK_ULONG);
    C_VerifyRecoverInit(_a1: CK_SESSION_HANDLE, _a2: *mut CK_MECHANISM, _a3: CK_OBJECT_HANDLE);
    C_VerifyRecover(_a1: CK_SESSION_HANDLE, _a2: *mut CK_BYTE, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: *mut CK_ULONG);
    C_DigestEncryptUpdate(_a1: CK_SESSION_HANDLE, _a2: *mut CK_BYTE, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: *mut CK_ULONG);
    C_DecryptDigestUpdate(_a1: CK_SESSION_HANDLE, _a2: *mut CK_BYTE, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: *mut CK_ULONG);
    C_SignEncryptUpdate(_a1: CK_SESSION_HANDLE, _a2: *mut CK_BYTE, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: *mut CK_ULONG);
    C_DecryptVerifyUpdate(_a1: CK_SESSION_HANDLE, _a2: *mut CK_BYTE, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: *mut CK_ULONG);
    C_WrapKey(_a1: CK_SESSION_HANDLE, _a2: *mut CK_MECHANISM, _a3: CK_OBJECT_HANDLE, _a4: CK_OBJECT_HANDLE, _a5: *mut CK_BYTE, _a6: *mut CK_ULONG);
    C_UnwrapKey(_a1: CK_SESSION_HANDLE, _a2: *mut CK_MECHANISM, _a3: CK_OBJECT_HANDLE, _a4: *mut CK_BYTE, _a5: CK_ULONG, _a6: *mut CK_ATTRIBUTE, _a7: CK_ULONG, _a8: *mut CK_OBJECT_HANDLE);
    C_GetFunctionStatus(_a1: CK_SESSION_HANDLE);
    C_CancelFunction(_a1: CK_SESSION_HANDLE);
    C_WaitForSlotEvent(_a1: CK_FLAGS, _a2: *mut CK_SLOT_ID, _a3: *mut c_void);
    C_LoginUser(_a1: CK_SESSION_HANDLE, _a2: CK_USER_TYPE, _a3: *mut CK_UTF8CHAR, _a4: CK_ULONG, _a5: *mut CK_UTF8CHAR, _a6: CK_ULONG);
    C_SessionCancel(_a1: CK_SESSION_HANDLE, _a2: CK_FLAGS);
    C_MessageEncryptInit(_a1: CK_SESSION_HANDLE, _a2: *mut CK_MECHANISM, _a3: CK_OBJECT_HANDLE);
    C_EncryptMessage(_a1: CK_SESSION_HANDLE, _a2: *mut c_void, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: CK_ULONG, _a6: *mut CK_BYTE, _a7: CK_ULONG, _a8: *mut CK_BYTE, _a9: *mut CK_ULONG);
    C_EncryptMessageBegin(_a1: CK_SESSION_HANDLE, _a2: *mut c_void, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: CK_ULONG);
    C_EncryptMessageNext(_a1: CK_SESSION_HANDLE, _a2: *mut c_void, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: CK_ULONG, _a6: *mut CK_BYTE, _a7: *mut CK_ULONG, _a8: CK_FLAGS);
    C_MessageEncryptFinal(_a1: CK_SESSION_HANDLE);
    C_MessageDecryptInit(_a1: CK_SESSION_HANDLE, _a2: *mut CK_MECHANISM, _a3: CK_OBJECT_HANDLE);
    C_DecryptMessage(_a1: CK_SESSION_HANDLE, _a2: *mut c_void, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: CK_ULONG, _a6: *mut CK_BYTE, _a7: CK_ULONG, _a8: *mut CK_BYTE, _a9: *mut CK_ULONG);
    C_DecryptMessageBegin(_a1: CK_SESSION_HANDLE, _a2: *mut c_void, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: CK_ULONG);
    C_DecryptMessageNext(_a1: CK_SESSION_HANDLE, _a2: *mut c_void, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: CK_ULONG, _a6: *mut CK_BYTE, _a7: *mut CK_ULONG, _a8: CK_FLAGS);
    C_MessageDecryptFinal(_a1: CK_SESSION_HANDLE);
    C_MessageSignInit(_a1: CK_SESSION_HANDLE, _a2: *mut CK_MECHANISM, _a3: CK_OBJECT_HANDLE);
    C_SignMessage(_a1: CK_SESSION_HANDLE, _a2: *mut c_void, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: CK_ULONG, _a6: *mut CK_BYTE, _a7: *mut CK_ULONG);
    C_SignMessageBegin(_a1: CK_SESSION_HANDLE, _a2: *mut c_void, _a3: CK_ULONG);
    C_SignMessageNext(_a1: CK_SESSION_HANDLE, _a2: *mut c_void, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: CK_ULONG, _a6: *mut CK_BYTE, _a7: *mut CK_ULONG);
    C_MessageSignFinal(_a1: CK_SESSION_HANDLE);
    C_MessageVerifyInit(_a1: CK_SESSION_HANDLE, _a2: *mut CK_MECHANISM, _a3: CK_OBJECT_HANDLE);
    C_VerifyMessage(_a1: CK_SESSION_HANDLE, _a2: *mut c_void, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: CK_ULONG, _a6: *mut CK_BYTE, _a7: CK_ULONG);
    C_VerifyMessageBegin(_a1: CK_SESSION_HANDLE, _a2: *mut c_void, _a3: CK_ULONG);
    C_VerifyMessageNext(_a1: CK_SESSION_HANDLE, _a2: *mut c_void, _a3: CK_ULONG, _a4: *mut CK_BYTE, _a5: CK_ULONG, _a6: *mut CK_BYTE, _a7: CK_ULONG);
    C_MessageVerifyFinal(_a1: CK_SESSION_HANDLE);
}

pub(crate) static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
};

pub(crate) static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = CK_FUNCTION_LIST_3_0 {
    version: CK_VERSION { major: 3, minor: 0 },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
    C_GetInterfaceList: Some(C_GetInterfaceList),
    C_GetInterface: Some(C_GetInterface),
    C_LoginUser: Some(C_LoginUser),
    C_SessionCancel: Some(C_SessionCancel),
    C_MessageEncryptInit: Some(C_MessageEncryptInit),
    C_EncryptMessage: Some(C_EncryptMessage),
    C_EncryptMessageBegin: Some(C_EncryptMessageBegin),
    C_EncryptMessageNext: Some(C_EncryptMessageNext),
    C_MessageEncryptFinal: Some(C_MessageEncryptFinal),
    C_MessageDecryptInit: Some(C_MessageDecryptInit),
    C_DecryptMessage: Some(C_DecryptMessage),
    C_DecryptMessageBegin: Some(C_DecryptMessageBegin),
    C_DecryptMessageNext: Some(C_DecryptMessageNext),
    C_MessageDecryptFinal: Some(C_MessageDecryptFinal),
    C_MessageSignInit: Some(C_MessageSignInit),
    C_SignMessage: Some(C_SignMessage),
    C_SignMessageBegin: Some(C_SignMessageBegin),
    C_SignMessageNext: Some(C_SignMessageNext),
    C_MessageSignFinal: Some(C_MessageSignFinal),
    C_MessageVerifyInit: Some(C_MessageVerifyInit),
    C_VerifyMessage: Some(C_VerifyMessage),
    C_VerifyMessageBegin: Some(C_VerifyMessageBegin),
    C_VerifyMessageNext: Some(C_VerifyMessageNext),
    C_MessageVerifyFinal: Some(C_MessageVerifyFinal),
};
