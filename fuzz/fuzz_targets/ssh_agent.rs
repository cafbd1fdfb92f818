//! The SSH door's message parser and framing (`keyward_agent::ssh`): arbitrary bytes as one
//! message body, and as a stream of length-prefixed frames. Invariants: never a panic; a frame
//! the reader returns is within the 256 KiB cap and non-empty; every frame body goes through the
//! parser, which answers a request or an error, never a panic.
#![no_main]

use keyward_agent::ssh::{frame, requests};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = requests::parse(data);
    rt().block_on(async {
        let mut rd: &[u8] = data;
        while let Ok(Some(body)) = frame::read(&mut rd).await {
            assert!(!body.is_empty() && body.len() <= 256 * 1024, "frame of {} bytes", body.len());
            let _ = requests::parse(&body);
        }
    });
});
