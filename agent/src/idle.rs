//! Locking the agent without a client: `SIGUSR1` locks it (as `keyward lock` does: keys wiped in
//! the token, the SSH door's cache emptied, the PIN forgotten). The idle and maximum-unlocked
//! deadlines (`[unlock] idle_lock`, `max_unlocked`) are to come here as well. This module must
//! never unlock anything.

use crate::service::Service;
use keyward_proto::ops::{Empty, Handler};

/// Lock through `service` on every `SIGUSR1`, until the runtime stops. Fails only when the
/// handler cannot be installed.
pub fn lock_on_sigusr1(service: Service) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1())?;
    Ok(tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            let s = service.clone();
            let locked = tokio::task::spawn_blocking(move || s.lock(Empty {})).await;
            match locked {
                Ok(Ok(_)) => tracing::info!("locked on SIGUSR1"),
                Ok(Err(e)) => tracing::warn!(error = %e, "SIGUSR1: lock failed"),
                Err(e) => tracing::warn!(error = %e, "SIGUSR1: lock task failed"),
            }
        }
    }))
}
