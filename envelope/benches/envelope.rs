//! Throughput of the envelope primitives (run via `envelope/bench.sh`, which puts OpenSSL's
//! numbers next to these).
//!
//! - `aes256gcm/seal/N`, `aes256gcm/open/N`: raw AES-256-GCM (key setup + one AEAD op), the
//!   figure comparable to `openssl speed -evp aes-256-gcm`.
//! - `cryppo/encrypt/N`, `cryppo/decrypt/N`: the whole Cryppo string path (random IV, BSON,
//!   base64, parse).
//! - `pbkdf2/600000`: one PBKDF2-HMAC-SHA256 derivation of a 32-byte key.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use keyward_envelope::{aes256gcm, pbkdf2};

const SIZES: [usize; 4] = [64, 4 << 10, 64 << 10, 1 << 20];

fn aead(c: &mut Criterion) {
    let key = [0x11u8; 32];
    let iv = [0x22u8; 12];
    let mut g = c.benchmark_group("aes256gcm");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0xabu8; size];
        g.bench_function(BenchmarkId::new("seal", size), |b| {
            b.iter(|| aes256gcm::seal_in_place(&key, &iv, b"none", black_box(&mut buf)).unwrap())
        });
        let mut ct = vec![0xabu8; size];
        let tag = aes256gcm::seal_in_place(&key, &iv, b"none", &mut ct).unwrap();
        g.bench_function(BenchmarkId::new("open", size), |b| {
            b.iter_batched_ref(
                || ct.clone(),
                |buf| aes256gcm::open_in_place(&key, &iv, b"none", black_box(buf), &tag).unwrap(),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("cryppo");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let pt = vec![0xabu8; size];
        g.bench_function(BenchmarkId::new("encrypt", size), |b| {
            b.iter(|| aes256gcm::encrypt(&key, black_box(&pt), "none").unwrap())
        });
        let s = aes256gcm::encrypt(&key, &pt, "none").unwrap();
        g.bench_function(BenchmarkId::new("decrypt", size), |b| {
            b.iter(|| aes256gcm::decrypt_with_key(black_box(&s), &key).unwrap())
        });
    }
    g.finish();
}

fn kdf(c: &mut Criterion) {
    let mut g = c.benchmark_group("pbkdf2");
    g.sample_size(10);
    g.bench_function(BenchmarkId::from_parameter(600_000), |b| {
        b.iter(|| {
            pbkdf2::derive_key(black_box("password"), b"saltsaltsaltsaltsalt", 600_000).unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30);
    targets = aead, kdf
}
criterion_main!(benches);
