//! Root kinds: which root backend an agent under test uses ([`RootKind`]), what each kind's
//! `init` takes, and the one list of kinds that every generic scenario runs on. That list is
//! written once, in `__keyward_e2e_kinds!`; both [`RootKind::E2E`] and the test modules that
//! [`keyward_e2e_tests!`](crate::keyward_e2e_tests) generates come from it.

use crate::token::TEST_PIN;
use crate::vcard;

/// Which root backend the agent under test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    /// A SoftHSM2 token made by the repo's `softhsm-setup.sh`; the secret is the token's user PIN.
    Pkcs11,
    /// A passphrase root (`[root] kind = "soft"`, PBKDF2 at the agent's default 600,000
    /// iterations); the secret is the passphrase.
    Soft,
    /// A YubiKey root (`[root] kind = "yubikey"`) on the virtual PIV card of
    /// `vcard-setup.sh` through the real pcscd ([`vcard`]); the secret is the card PIN.
    YubiKey,
    /// An EC (P-256, `ecdh-p256`) root on a SoftHSM2 token (`key_type = "ec"`).
    Pkcs11Ec,
    /// An EC root on the virtual PIV card through ykcs11 (`key_type = "ec"`), see [`vcard`].
    Pkcs11EcCard,
}

impl RootKind {
    /// The root kind the agent reports in `hello`.
    pub fn name(self) -> &'static str {
        match self {
            RootKind::Pkcs11 => "pkcs11",
            RootKind::Soft => "soft",
            RootKind::YubiKey => "yubikey",
            RootKind::Pkcs11Ec | RootKind::Pkcs11EcCard => "pkcs11",
        }
    }

    /// The CLI arguments that initialise this kind of root with the secret on stdin.
    pub fn init_args(self) -> Vec<&'static str> {
        match self {
            RootKind::Pkcs11 | RootKind::YubiKey | RootKind::Pkcs11Ec | RootKind::Pkcs11EcCard => {
                vec!["init", "--pin-stdin"]
            }
            RootKind::Soft => vec!["init", "--soft", "--passphrase-stdin"],
        }
    }

    /// The secret `init` and `unlock` take for this kind of root as the harness sets it up.
    pub fn secret(self) -> &'static str {
        match self {
            RootKind::YubiKey | RootKind::Pkcs11EcCard => vcard::CARD_PIN,
            RootKind::Pkcs11 | RootKind::Soft | RootKind::Pkcs11Ec => TEST_PIN,
        }
    }
}

/// THE list of root kinds every generic end-to-end scenario runs on, as
/// `test module => RootKind variant` pairs. It passes the list to the harness macro `$then`
/// (followed by `$rest`), so [`RootKind::E2E`] and [`keyward_e2e_tests!`] cannot disagree.
/// Running the generic scenarios on one more kind: one more pair here (the tests then appear
/// as `<area>::<module>::<test>`).
#[doc(hidden)]
#[macro_export]
macro_rules! __keyward_e2e_kinds {
    ($then:ident ! $rest:tt) => {
        $crate::$then! { [pkcs11 => Pkcs11, soft => Soft] $rest }
    };
}

/// Defines [`RootKind::E2E`] from the kind list.
#[doc(hidden)]
#[macro_export]
macro_rules! __keyward_root_kind_list {
    ([$($module:ident => $variant:ident),*] {}) => {
        impl $crate::RootKind {
            /// The root kinds every generic scenario of
            /// [`keyward_e2e_tests!`](crate::keyward_e2e_tests) runs on, in the
            /// order of their test modules (the card kinds need the card stack, and have their
            /// own tests).
            pub const E2E: &'static [$crate::RootKind] = &[$($crate::RootKind::$variant),*];
        }
    };
}

__keyward_e2e_kinds!(__keyward_root_kind_list! {});

/// Instantiate each test function (`fn name(env: &mut TestEnv)`) once per root kind of
/// [`RootKind::E2E`], as `<module>::<name>` (`pkcs11::name`, `soft::name`). `name with expr`
/// starts the environment with the [`Options`](crate::Options) `expr`.
#[macro_export]
macro_rules! keyward_e2e_tests {
    ($($name:ident $(with $opts:expr)?),* $(,)?) => {
        $crate::__keyward_e2e_kinds! { __keyward_e2e_modules! { $($name $(with $opts)?),* } }
    };
}

/// One test module per kind of the list, each with every test.
#[doc(hidden)]
#[macro_export]
macro_rules! __keyward_e2e_modules {
    ([$($module:ident => $variant:ident),*] $tests:tt) => {
        $( $crate::__keyward_e2e_module! { $module $variant $tests } )*
    };
}

/// The test module of one kind.
#[doc(hidden)]
#[macro_export]
macro_rules! __keyward_e2e_module {
    ($module:ident $variant:ident { $($name:ident $(with $opts:expr)?),* }) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    #[allow(unused_variables)]
                    let opts = $crate::Options::default();
                    $(let opts: $crate::Options = $opts;)?
                    let mut env = $crate::TestEnv::start_with($crate::RootKind::$variant, opts);
                    super::$name(&mut env);
                }
            )*
        }
    };
}
