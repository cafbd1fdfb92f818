//! Integration tests for keyward-identity (one binary, one module per concept).

mod chain;
mod cose_vectors;
mod ecdsa_openssl;
mod formats;
mod hpke_share;
mod node_key;
mod util;
