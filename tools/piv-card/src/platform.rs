//! The software Trussed platform the PIV application runs on.
//!
//! * Storage: `trussed::virt`'s littlefs stores, RAM or file-backed.
//! * RNG: ChaCha8 seeded from the OS (trussed's own virt platform uses a fixed seed,
//!   which would give every fresh card identical keys).
//! * Backends: `piv-authenticator` 0.7 needs the `trussed-auth`, `trussed-chunked`,
//!   `trussed-wrap-key-to-file` and `trussed-hpke` extensions, served here by
//!   `trussed-auth-backend` and `trussed-staging` (the same set Nitrokey's firmware uses).
//! * [`SharedClient`]: a cloneable handle to the one Trussed client, so the harness
//!   can throw away and rebuild the `Authenticator` on card reset.

use std::{cell::RefCell, fs, io, path::Path, rc::Rc, task::Poll};

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng as _;
use trussed::{
    backend::{Backend as _, BackendId},
    pipe::TrussedChannel,
    serde_extensions::{ExtensionDispatch, ExtensionId, ExtensionImpl},
    service::ServiceResources,
    types::Context,
    virt::{self, StorageConfig, StoreConfig},
    Platform,
};
use trussed_auth::AuthExtension;
use trussed_auth_backend::{AuthBackend, AuthContext, FilesystemLayout};
use trussed_chunked::ChunkedExtension;
use trussed_core::{
    api::{reply, request, Reply, Request, RequestVariant},
    serde_extensions::ExtensionClient,
    types::Location,
    ClientResult, Error, FutureResult, PollClient,
};
use trussed_hpke::HpkeExtension;
use trussed_staging::{StagingBackend, StagingContext};
use trussed_wrap_key_to_file::WrapKeyToFileExtension;

/// Size of trussed virt's file-backed storage (fixed by trussed: 128 blocks of 512 bytes).
const STORAGE_FILE_LEN: u64 = 512 * 128;

/// The Trussed client type the PIV application gets (before sharing).
pub type VirtClient<'a> = virt::Client<'a, Dispatcher>;

/// File-backed internal and external storage in `dir`, volatile storage in RAM.
pub fn file_store(dir: &Path) -> io::Result<StoreConfig<'static>> {
    fs::create_dir_all(dir)?;
    let file = |name: &str| -> io::Result<StorageConfig<'static>> {
        let path = dir.join(name);
        match fs::metadata(&path) {
            Ok(meta) if meta.len() != STORAGE_FILE_LEN => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} has {} bytes, expected {STORAGE_FILE_LEN}: not a piv-card storage file \
                         (delete the state directory to start with a blank card)",
                        path.display(),
                        meta.len()
                    ),
                ));
            }
            Ok(_) => {
                // Fail here, with the path in the message, rather than inside trussed.
                fs::OpenOptions::new().read(true).write(true).open(&path)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(StorageConfig::filesystem(path))
    };
    Ok(StoreConfig {
        internal: file("internal.lfs")?,
        external: file("external.lfs")?,
        volatile: StorageConfig::ram(),
    })
}

struct VirtPlatform<'a> {
    rng: ChaCha8Rng,
    store: virt::Store<'a>,
    ui: virt::UserInterface,
}

impl<'a> Platform for VirtPlatform<'a> {
    type R = ChaCha8Rng;
    type S = virt::Store<'a>;
    type UI = virt::UserInterface;

    fn rng(&mut self) -> &mut Self::R {
        &mut self.rng
    }
    fn store(&self) -> Self::S {
        self.store
    }
    fn user_interface(&mut self) -> &mut Self::UI {
        &mut self.ui
    }
}

const BACKENDS: &[BackendId<BackendIds>] = &[
    BackendId::Custom(BackendIds::Auth),
    BackendId::Custom(BackendIds::Staging),
    BackendId::Core,
];

/// Runs `f` with a Trussed client for the PIV application; the Trussed service runs on
/// a background thread for as long as `f` does.
pub fn with_piv_client<R>(
    mut store: StoreConfig<'_>,
    f: impl for<'a> FnOnce(SharedClient<'a>) -> R,
) -> R {
    store.with_store(|store| {
        let platform = VirtPlatform {
            rng: ChaCha8Rng::from_entropy(),
            store,
            ui: virt::UserInterface::new(),
        };
        let channel = TrussedChannel::new();
        let (requester, responder) = channel.split().expect("fresh channel splits");
        let mut runner = virt::Runner::new();
        runner.add_endpoint(responder, "piv", BACKENDS);
        let client: VirtClient<'_> = virt::Client::new(requester, runner.syscall(), None);
        runner.run(platform, Dispatcher::default(), move || {
            f(SharedClient(Rc::new(RefCell::new(client))))
        })
    })
}

/// Dispatches Trussed requests to the auth and staging backends.
pub struct Dispatcher {
    auth: AuthBackend,
    staging: StagingBackend,
}

impl Default for Dispatcher {
    fn default() -> Self {
        Self {
            // Nitrokey's firmware keeps trussed-auth's data in internal storage too.
            auth: AuthBackend::new(Location::Internal, FilesystemLayout::V0),
            staging: StagingBackend::new(),
        }
    }
}

#[derive(Default)]
pub struct DispatchContext {
    auth: AuthContext,
    staging: StagingContext,
}

pub enum BackendIds {
    Auth,
    Staging,
}

pub enum ExtensionIds {
    Auth,
    Chunked,
    WrapKeyToFile,
    Hpke,
}

impl From<ExtensionIds> for u8 {
    fn from(id: ExtensionIds) -> u8 {
        match id {
            ExtensionIds::Auth => 0,
            ExtensionIds::Chunked => 1,
            ExtensionIds::WrapKeyToFile => 2,
            ExtensionIds::Hpke => 3,
        }
    }
}

impl TryFrom<u8> for ExtensionIds {
    type Error = Error;
    fn try_from(id: u8) -> Result<Self, Error> {
        Ok(match id {
            0 => Self::Auth,
            1 => Self::Chunked,
            2 => Self::WrapKeyToFile,
            3 => Self::Hpke,
            _ => return Err(Error::FunctionNotSupported),
        })
    }
}

macro_rules! extension_ids {
    ($($ext:ty => $id:ident),* $(,)?) => {$(
        impl ExtensionId<$ext> for Dispatcher {
            type Id = ExtensionIds;
            const ID: ExtensionIds = ExtensionIds::$id;
        }
        impl ExtensionClient<$ext> for SharedClient<'_> {
            fn id() -> u8 {
                ExtensionIds::$id.into()
            }
        }
    )*};
}

extension_ids! {
    AuthExtension => Auth,
    ChunkedExtension => Chunked,
    WrapKeyToFileExtension => WrapKeyToFile,
    HpkeExtension => Hpke,
}

impl ExtensionDispatch for Dispatcher {
    type BackendId = BackendIds;
    type Context = DispatchContext;
    type ExtensionId = ExtensionIds;

    fn core_request<P: Platform>(
        &mut self,
        backend: &BackendIds,
        ctx: &mut Context<DispatchContext>,
        request: &Request,
        resources: &mut ServiceResources<P>,
    ) -> Result<Reply, Error> {
        match backend {
            BackendIds::Auth => {
                self.auth
                    .request(&mut ctx.core, &mut ctx.backends.auth, request, resources)
            }
            BackendIds::Staging => {
                self.staging
                    .request(&mut ctx.core, &mut ctx.backends.staging, request, resources)
            }
        }
    }

    fn extension_request<P: Platform>(
        &mut self,
        backend: &BackendIds,
        extension: &ExtensionIds,
        ctx: &mut Context<DispatchContext>,
        request: &request::SerdeExtension,
        resources: &mut ServiceResources<P>,
    ) -> Result<reply::SerdeExtension, Error> {
        let core = &mut ctx.core;
        let backends = &mut ctx.backends;
        match (backend, extension) {
            (BackendIds::Auth, ExtensionIds::Auth) => {
                ExtensionImpl::<AuthExtension>::extension_request_serialized(
                    &mut self.auth,
                    core,
                    &mut backends.auth,
                    request,
                    resources,
                )
            }
            (BackendIds::Staging, ExtensionIds::Chunked) => {
                ExtensionImpl::<ChunkedExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut backends.staging,
                    request,
                    resources,
                )
            }
            (BackendIds::Staging, ExtensionIds::WrapKeyToFile) => {
                ExtensionImpl::<WrapKeyToFileExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut backends.staging,
                    request,
                    resources,
                )
            }
            (BackendIds::Staging, ExtensionIds::Hpke) => {
                ExtensionImpl::<HpkeExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut backends.staging,
                    request,
                    resources,
                )
            }
            _ => Err(Error::RequestNotAvailable),
        }
    }
}

/// A cloneable handle to the single Trussed client.
///
/// `piv_authenticator::Authenticator` owns its client and has no way to give it back or
/// to clear its volatile state; sharing the client lets the harness drop the
/// `Authenticator` on card reset and build a fresh one.
#[derive(Clone)]
pub struct SharedClient<'a>(Rc<RefCell<VirtClient<'a>>>);

impl PollClient for SharedClient<'_> {
    fn request<Rq: RequestVariant>(&mut self, req: Rq) -> ClientResult<'_, Rq::Reply, Self> {
        // The inner future only borrows the inner client; polling goes through
        // `Self::poll`, so it can be dropped right away (it has no Drop logic).
        self.0.borrow_mut().request(req).map(drop)?;
        Ok(FutureResult::new(self))
    }

    fn poll(&mut self) -> Poll<Result<Reply, Error>> {
        self.0.borrow_mut().poll()
    }
}

impl trussed_core::CryptoClient for SharedClient<'_> {}
impl trussed_core::FilesystemClient for SharedClient<'_> {}
impl trussed_core::mechanisms::Tdes for SharedClient<'_> {}
