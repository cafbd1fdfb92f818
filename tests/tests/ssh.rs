//! SSH-agent tests: the real keywardd on a real SoftHSM token, driven by the real OpenSSH tools
//! (Debian 12's openssh-client/openssh-server, installed by `ssh-setup.sh`): `ssh-add`,
//! `ssh-keygen -Y`, and `ssh` logging in to a real `sshd` started by the test.

#[path = "ssh/door.rs"]
mod door;
#[path = "ssh/keys.rs"]
mod keys;
#[path = "ssh/login.rs"]
mod login;
