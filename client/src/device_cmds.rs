//! `keyward device ...`: enroll a new device into the identity a shared keystore holds
//! (`request` on the new device, `approve` on an enrolled one), list, revoke. The CLI only
//! polls and prints; the handshake is the agent's (`agent/src/devices.rs`).

use crate::cli::{out, Failure, Out, PageOpts};
use clap::Subcommand;
use keyward_client::proto::ops::ListArgs;
use keyward_client::Client;
use serde_json::json;
use std::time::{Duration, Instant};

/// How often the request and the approval look for the other side.
const POLL: Duration = Duration::from_millis(250);

#[derive(Subcommand)]
pub enum DeviceCmd {
    /// On the new device (after `keyward init` joined the shared keystore): file the enrollment
    /// request, wait for an enrolled device to answer it (`keyward device approve` there), and
    /// print the code to compare. With --json: `{"id", "code"}`.
    Request {
        /// A name for `device list` (default: the token's description).
        #[arg(long)]
        label: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        wait: u64,
    },
    /// On an enrolled, unlocked device. Without CODE: answer the pending request (the new
    /// device then prints a code). With the code the new device printed: check it and enroll
    /// the device (every KEK is wrapped to its device key).
    Approve {
        /// The code the new device printed (e.g. 7K3M-Q9ZD-1V0B).
        code: Option<String>,
        /// The request (default: the only one pending).
        #[arg(long)]
        id: Option<String>,
        /// With CODE: wait this many seconds for the new device to reveal.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        wait: u64,
    },
    /// List the enrolled devices and pending requests (every page, or one with --limit); `*`
    /// marks this device.
    List {
        #[command(flatten)]
        page: PageOpts,
    },
    /// Revoke a device: its wraps and root go, every KEK it could read is rotated, and the
    /// DEKs whose data should be re-encrypted are listed.
    Revoke { id: String },
}

pub async fn run(c: &Client, cmd: &DeviceCmd) -> Result<Out, Failure> {
    match cmd {
        DeviceCmd::Request { label, wait } => {
            let r = c.device_request(label.clone()).await?;
            eprintln!(
                "keyward: enrollment request {} filed (device key {}).\n\
                 On an enrolled, unlocked device run:  keyward device approve\n\
                 waiting for its answer (up to {wait} s)...",
                r.id, r.fingerprint
            );
            let start = Instant::now();
            let mut last = 0;
            loop {
                let v = c.device_reveal().await?;
                if let Some(code) = v.code {
                    eprintln!(
                        "keyward: answered. The code is below: check that the enrolled device \
                         shows the same fingerprint ({}) and run there:\n    keyward device approve {code}",
                        r.fingerprint
                    );
                    return Ok(out(
                        format!("{code}\n"),
                        json!({"id": r.id, "code": code, "fingerprint": r.fingerprint}),
                    ));
                }
                let secs = start.elapsed().as_secs();
                if secs >= *wait {
                    return Err(format!(
                        "timeout: no enrolled device answered request {} within {wait} s: run \
                         `keyward device approve` on an enrolled, unlocked device, then \
                         `keyward device request` here again",
                        r.id
                    )
                    .into());
                }
                if secs >= last + 10 {
                    last = secs;
                    if secs > 0 {
                        eprintln!("keyward: still waiting ({secs} s of {wait} s)...");
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        }
        DeviceCmd::Approve { code, id, wait } => {
            let start = Instant::now();
            loop {
                let r = c.device_approve(id.clone(), code.clone()).await?;
                let fpr = r.fingerprint.clone().unwrap_or_default();
                match (r.state.as_str(), code) {
                    ("enrolled", _) => {
                        eprintln!(
                            "keyward: device {} enrolled: root {}, {} KEKs wrapped to its device key",
                            r.id,
                            r.root.as_deref().unwrap_or("?"),
                            r.wrapped.unwrap_or(0)
                        );
                        return Ok(out(
                            format!("{}\n", r.id),
                            serde_json::to_value(&r).map_err(|e| e.to_string())?,
                        ));
                    }
                    ("answered", None) | ("waiting", None) => {
                        eprintln!(
                            "keyward: request {} (device key {fpr}) answered. The new device now \
                             prints a code; check the fingerprint there, then run here:\n    \
                             keyward device approve CODE",
                            r.id
                        );
                        return Ok(out(
                            format!("{}\n", r.id),
                            serde_json::to_value(&r).map_err(|e| e.to_string())?,
                        ));
                    }
                    _ => {
                        if start.elapsed().as_secs() >= *wait {
                            return Err(format!(
                                "timeout: request {} has not revealed its code within {wait} s: \
                                 is `keyward device request` still running on the new device?",
                                r.id
                            )
                            .into());
                        }
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
        }
        DeviceCmd::List { page } => {
            let mut devices = Vec::new();
            let mut after = page.after.clone();
            let next = loop {
                let p = c
                    .device_list_page(ListArgs {
                        limit: page.limit,
                        after: after.take(),
                    })
                    .await?;
                devices.extend(p.devices);
                match p.next {
                    Some(n) if page.limit.is_none() => after = Some(n),
                    other => break other,
                }
            };
            let mut text = String::new();
            for d in &devices {
                text.push_str(&format!(
                    "{} {}  {:8}  {}  key on {:5}  {}  {}\n",
                    if d.current { "*" } else { " " },
                    d.id,
                    d.state,
                    d.fingerprint,
                    d.key.as_deref().unwrap_or("?"),
                    d.token_serial
                        .as_deref()
                        .map_or("-".to_string(), |s| format!("serial {s}")),
                    d.label.as_deref().unwrap_or("")
                ));
            }
            let mut j = json!({ "devices": devices });
            if let Some(n) = next {
                eprintln!("more devices: --after {n}");
                j["next"] = json!(n);
            }
            Ok(out(text, j))
        }
        DeviceCmd::Revoke { id } => {
            let r = c.device_revoke(id).await?;
            let mut text = format!(
                "device {} revoked: {} KEK(s) and {} DEK(s) rotated; new data is under keys it \
                 never saw.\nData written before could be read by it: re-encrypt it with \
                 `keyward rewrap` (`keyward dek list` lists the DEKs).\n",
                r.id,
                r.keks.len(),
                r.deks_rotated
            );
            if r.shared_deks > 0 {
                text.push_str(&format!(
                    "{} sharing DEK(s) are not rotated (their recipients hold version 1): share \
                     that data again under a new DEK.\n",
                    r.shared_deks
                ));
            }
            Ok(out(
                text,
                serde_json::to_value(&r).map_err(|e| e.to_string())?,
            ))
        }
    }
}
