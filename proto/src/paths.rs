//! Where the agent's socket lives, decided the same way by the agent and by every client.

use std::path::PathBuf;

/// Environment variable that overrides the socket path for agent and clients alike.
pub const SOCKET_ENV: &str = "KEYWARD_SOCK";

/// The socket path when neither `KEYWARD_SOCK` nor a config names one:
/// `$XDG_RUNTIME_DIR/keyward/agent.sock`, or `/tmp/keyward-$UID/agent.sock` where there is no
/// runtime directory (a bare root shell, a container).
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("keyward").join("agent.sock"),
        _ => PathBuf::from(format!("/tmp/keyward-{}", nix::unistd::geteuid())).join("agent.sock"),
    }
}

/// `KEYWARD_SOCK` if set, else `configured`, else the default.
pub fn socket_path(configured: Option<PathBuf>) -> PathBuf {
    match std::env::var_os(SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => configured.unwrap_or_else(default_socket_path),
    }
}

/// Environment variable that overrides the SSH-agent socket path.
pub const SSH_SOCKET_ENV: &str = "KEYWARD_SSH_SOCK";

/// The SSH-agent socket: `KEYWARD_SSH_SOCK` if set, else `configured` (`[ssh] socket`), else
/// `ssh.sock` in the directory of the CBOR socket `beside` (the same precedence as that socket).
pub fn ssh_socket_path(configured: Option<PathBuf>, beside: &std::path::Path) -> PathBuf {
    match std::env::var_os(SSH_SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => configured.unwrap_or_else(|| {
            beside
                .parent()
                .map(|d| d.join("ssh.sock"))
                .unwrap_or_else(|| PathBuf::from("ssh.sock"))
        }),
    }
}
