//! `kek rotate --progress`: while the rotation request runs on the main connection, a task on a
//! second connection polls `kek.rotation` (the rotation's journal in the keystore) and draws the
//! progress on stderr: a bar on a terminal, else one line a second when the count moved (logs,
//! CI). It never changes anything and never fails the command: a poll that fails just stops
//! the display.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use keyward_client::Client;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often the journal is read.
const POLL: Duration = Duration::from_millis(200);

/// A running display; [`Watcher::stop`] ends it and clears the bar.
pub struct Watcher {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Start polling the rotation of KEK `id` through the socket at `path`.
pub fn watch(path: PathBuf, id: String) -> Watcher {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let Ok(c) = Client::connect(&path).await else {
            return;
        };
        let bar = std::io::stderr().is_terminal().then(|| {
            let pb = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "kek rotate {bar:40} {pos}/{len} wrapped keys, eta {eta}",
            ) {
                pb.set_style(style);
            }
            pb
        });
        // The first count is printed at once, then at most one line a second.
        let start = std::time::Instant::now();
        let mut last_line = (
            u64::MAX,
            start.checked_sub(Duration::from_secs(1)).unwrap_or(start),
        );
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(POLL) => {}
            }
            let Ok(s) = c.kek_rotation(&id).await else {
                break;
            };
            if !s.pending {
                continue;
            }
            match &bar {
                Some(pb) => {
                    pb.set_length(s.total);
                    pb.set_position(s.done.min(s.total));
                }
                None => {
                    if s.done != last_line.0 && last_line.1.elapsed() >= Duration::from_secs(1) {
                        eprintln!("keyward: kek rotate: {}/{} wrapped keys", s.done, s.total);
                        last_line = (s.done, std::time::Instant::now());
                    }
                }
            }
        }
        if let Some(pb) = bar {
            pb.finish_and_clear();
        }
    });
    Watcher { stop, task }
}

impl Watcher {
    /// Stop polling and wait for the display to be cleared.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
