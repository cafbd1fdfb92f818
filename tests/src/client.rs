//! The client library against one test's agent: connections (blocking and async), the
//! common set-ups made through it (`init`, a KEK, a DEK and a ciphertext), and assertions on
//! the agent's error codes.

use crate::env::TestEnv;
use keyward_client::{BlockingClient, ClientError};
use keyward_proto::ErrorCode;

/// What [`TestEnv::init_with_keys`] made.
#[derive(Debug, Clone)]
pub struct Keys {
    pub kek: String,
    pub dek: String,
    pub ciphertext: String,
    pub plaintext: Vec<u8>,
}

impl TestEnv {
    /// A new blocking client connection (it has said `hello`).
    pub fn client(&self) -> BlockingClient {
        BlockingClient::connect(self.socket_path())
            .unwrap_or_else(|e| panic!("connecting a client: {e}; agent log:\n{}", self.log()))
    }

    /// A new async client connection (call from inside a tokio runtime).
    pub async fn async_client(&self) -> keyward_client::Client {
        keyward_client::Client::connect(self.socket_path())
            .await
            .unwrap_or_else(|e| panic!("connecting a client: {e}"))
    }

    /// `init` (leaves the root unlocked).
    pub fn init(&self) {
        let c = self.client();
        c.run(|c| c.init(pin(self.pin()))).expect("init");
    }

    /// `init`, one KEK, one DEK (exportable as asked), and one ciphertext of `plaintext`.
    pub fn init_with_keys(&self, exportable: bool, plaintext: &[u8]) -> Keys {
        self.init();
        let c = self.client();
        let kek = c.run(|c| c.kek_create(Some("e2e".into()))).expect("kek").id;
        let args = keyward_proto::ops::DekCreateArgs {
            kek: Some(kek.clone()),
            exportable,
            ..Default::default()
        };
        let dek = c.run(|c| c.dek_create(&args)).expect("dek").id;
        let ciphertext = c.run(|c| c.encrypt(&dek, plaintext)).expect("encrypt");
        Keys {
            kek,
            dek,
            ciphertext,
            plaintext: plaintext.to_vec(),
        }
    }

    /// With a fresh connection: the keys are listed, the ciphertext decrypts (unlocking first if
    /// the agent is locked). The agent must still be running.
    pub fn assert_intact(&mut self, keys: &Keys) {
        assert!(self.is_running(), "the agent died; log:\n{}", self.log());
        let c = self.client();
        if c.hello_info().locked {
            c.run(|c| c.unlock(pin(self.pin()))).expect("unlock");
        }
        let keks = c.run(|c| c.kek_list()).expect("kek.list");
        assert!(keks.keys.iter().any(|k| k.id == keys.kek), "KEK missing");
        let deks = c.run(|c| c.dek_list(None)).expect("dek.list");
        assert!(deks.keys.iter().any(|k| k.id == keys.dek), "DEK missing");
        let pt = c
            .run(|c| c.decrypt(&keys.ciphertext, None))
            .expect("decrypt");
        assert_eq!(pt.expose(), &keys.plaintext[..]);
    }
}

pub fn pin(s: &str) -> keyward_proto::secret::Pin {
    keyward_proto::secret::Pin::new(s)
}

/// The agent's error code of a failed call, or a panic saying what happened instead.
pub fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Ok(v) => panic!("expected an agent error, got Ok({v:?})"),
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("expected an agent error, got {e}")),
    }
}

/// Assert that a call failed with the agent error `want`; returns the error for more checks.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(r: Result<T, ClientError>, want: ErrorCode) -> ClientError {
    match r {
        Ok(v) => panic!("expected {want}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.code(), Some(want), "expected {want}, got {e}");
            e
        }
    }
}
