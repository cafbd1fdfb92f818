//! Streaming encryption through the agent: `datakey.create`/`datakey.open`, the CLI's
//! `encrypt`/`decrypt` of any size (Cryppo strings up to 64 KiB, the streaming format above),
//! refusals of damaged streams with typed errors naming the chunk, the client library's blocking
//! and tokio adapters, and 1 GiB through the CLI in constant memory.

use keyward_tests::keyward_proto::ErrorCode;
use keyward_tests::{expect_code, pin, RootKind, TestEnv};
use std::io::{Read, Write};

keyward_tests::keyward_e2e_tests!(
    stream_cli_picks_the_format_by_size_and_decrypts_both,
    stream_cli_refuses_damaged_streams_with_typed_errors,
    stream_library_adapters_and_datakey_ops,
);

const MAGIC: &[u8] = b"\x89KWSTRM\n";
const CHUNK: usize = 64 * 1024;
/// Header: 74 fixed bytes + a 60-byte wrapped data key.
const HEADER: usize = 74 + 60;
const ENC_CHUNK: usize = CHUNK + 16;

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0] ^ seed)
        .collect()
}

fn path(env: &TestEnv, name: &str) -> String {
    env.dir().join(name).to_string_lossy().into_owned()
}

fn stream_cli_picks_the_format_by_size_and_decrypts_both(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"x");
    let dek = keys.dek.as_str();
    for (n, stream) in [
        (0, false),
        (1, false),
        (CHUNK, false),
        (CHUNK + 1, true),
        (2 * CHUNK - 1, true),
        (2 * CHUNK, true),
        (2 * CHUNK + 1, true),
    ] {
        let pt = data(n, 1);
        // stdin to stdout.
        let ct = env.cli_ok(&["encrypt", "--dek", dek], Some(&pt));
        assert_eq!(ct.starts_with(MAGIC), stream, "format of {n} bytes");
        if !stream {
            assert!(ct.starts_with(b"Aes256Gcm."), "a Cryppo string for {n}");
        } else {
            assert_eq!(ct.len(), HEADER + n + n.div_ceil(CHUNK) * 16, "{n}");
        }
        assert_eq!(env.cli_ok(&["decrypt"], Some(&ct)), pt, "decrypt {n}");
        // Files, and --dek checked against the stream.
        let (i, o, back) = (path(env, "in"), path(env, "ct"), path(env, "back"));
        std::fs::write(&i, &pt).unwrap();
        env.cli_ok(&["encrypt", "--dek", dek, "-i", &i, "-o", &o], None);
        env.cli_ok(&["decrypt", "--dek", dek, "-i", &o, "-o", &back], None);
        assert_eq!(std::fs::read(&back).unwrap(), pt);
    }
    // --stream for small data, --cryppo for large.
    let ct = env.cli_ok(&["encrypt", "--dek", dek, "--stream"], Some(b""));
    assert!(ct.starts_with(MAGIC));
    assert_eq!(
        ct.len(),
        HEADER + 16,
        "an empty stream is one empty last chunk"
    );
    assert_eq!(env.cli_ok(&["decrypt"], Some(&ct)), b"");
    let big = data(100_000, 2);
    let ct = env.cli_ok(&["encrypt", "--dek", dek, "--cryppo"], Some(&big));
    assert!(ct.starts_with(b"Aes256Gcm."));
    assert_eq!(env.cli_ok(&["decrypt"], Some(&ct)), big);
    // --json: streams need -o; the answer says which format was written.
    let o = path(env, "j");
    let v = env.cli_json(&["encrypt", "--dek", dek, "-o", &o], Some(&big));
    assert_eq!(v["format"], "stream");
    assert_eq!(
        env.cli_json_err(&["encrypt", "--dek", dek], Some(&big)),
        "client"
    );
    // A stream from another DEK than the one named.
    let args = keyward_tests::keyward_proto::ops::DekCreateArgs::default();
    let other = env.client().run(|c| c.dek_create(&args));
    let other = other.expect("second dek").id;
    let out = env.cli(&["decrypt", "--dek", &other, "-i", &o], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is for DEK"));
}

/// Decrypt `ct` with `--json -o FILE`; return the error's code and chunk, and check that the
/// output file was not created.
fn refusal(env: &TestEnv, ct: &[u8]) -> (String, Option<u64>) {
    let o = path(env, "refused-out");
    let _ = std::fs::remove_file(&o);
    let out = env.cli(&["--json", "decrypt", "-o", &o], Some(ct));
    assert_eq!(
        out.status.code(),
        Some(1),
        "should be refused; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !std::path::Path::new(&o).exists(),
        "a refused decryption left its output file"
    );
    let v = keyward_tests::parse_json(&out.stdout);
    (
        v["error"]["code"].as_str().unwrap_or("?").to_string(),
        v["error"]["chunk"].as_u64(),
    )
}

fn stream_cli_refuses_damaged_streams_with_typed_errors(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"x");
    let dek = keys.dek.as_str();
    let pt = data(4 * CHUNK + 100, 3);
    let ct = env.cli_ok(&["encrypt", "--dek", dek], Some(&pt));
    let chunks = 5;
    assert_eq!(ct.len(), HEADER + pt.len() + chunks * 16);
    assert_eq!(env.cli_ok(&["decrypt"], Some(&ct)), pt);
    let s = |c: &str, k: Option<u64>| (c.to_string(), k);

    // Truncation at every chunk boundary (0 = nothing after the header).
    for k in 0..chunks {
        let cut = &ct[..HEADER + k * ENC_CHUNK];
        assert_eq!(
            refusal(env, cut),
            s("stream_truncated", Some(k as u64)),
            "cut after {k} chunks"
        );
    }
    // Inside the header and inside the last chunk.
    assert_eq!(refusal(env, &ct[..HEADER - 1]), s("bad_header", None));
    assert_eq!(
        refusal(env, &ct[..ct.len() - 1]),
        s("stream_authentication", Some(4))
    );
    // Chunks 1 and 2 swapped.
    let mut swapped = ct.clone();
    let (a, b) = (HEADER + ENC_CHUNK, HEADER + 2 * ENC_CHUNK);
    swapped[a..b].copy_from_slice(&ct[b..b + ENC_CHUNK]);
    swapped[b..b + ENC_CHUNK].copy_from_slice(&ct[a..b]);
    assert_eq!(refusal(env, &swapped), s("stream_authentication", Some(1)));
    // A bit flip in each chunk.
    for k in 0..chunks {
        let mut f = ct.clone();
        f[HEADER + k * ENC_CHUNK + 7] ^= 0x10;
        assert_eq!(refusal(env, &f), s("stream_authentication", Some(k as u64)));
    }
    // Data after the last chunk: read into that (partial) chunk, whose tag then fails.
    let mut longer = ct.clone();
    longer.extend_from_slice(&[0; 40]);
    assert_eq!(refusal(env, &longer), s("stream_authentication", Some(4)));
    // A bit flip in each header field: (offset, expected code, chunk).
    let fields: [(&str, usize, &str, Option<u64>); 9] = [
        ("magic", 3, "client", None),
        ("version", 8, "unsupported_version", None),
        ("dek id", 9 + 15, "not_found", None),
        ("dek version", 25 + 3, "decrypt_failed", None),
        ("chunk size", 29 + 3, "stream_authentication", Some(0)),
        ("salt", 33 + 5, "stream_authentication", Some(0)),
        ("nonce prefix", 65 + 2, "stream_authentication", Some(0)),
        ("wrapped length", 72 + 1, "invalid_args", None),
        ("wrapped key", 74 + 30, "decrypt_failed", None),
    ];
    for (field, off, code, chunk) in fields {
        let mut f = ct.clone();
        f[off] ^= 0x01;
        assert_eq!(refusal(env, &f), s(code, chunk), "flip in the {field}");
    }
    // The chunk size's high byte: out of range.
    let mut f = ct.clone();
    f[29] ^= 0x80;
    assert_eq!(refusal(env, &f), s("bad_header", None));
    // A header from another file (same DEK): its key opens, chunk 0 does not.
    let other = env.cli_ok(&["encrypt", "--dek", dek], Some(&data(CHUNK + 5, 9)));
    let mut spliced = other[..HEADER].to_vec();
    spliced.extend_from_slice(&ct[HEADER..]);
    assert_eq!(refusal(env, &spliced), s("stream_authentication", Some(0)));
    // To stdout: what was written before the error is disowned on stderr.
    let out = env.cli(&["decrypt"], Some(&ct[..HEADER + 3 * ENC_CHUNK]));
    assert!(!out.status.success());
    // Chunk 2 is read as the last (the input ends after it), so only 0 and 1 were released.
    assert_eq!(out.stdout.len(), 2 * CHUNK, "verified chunks were written");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("must not be trusted") && err.contains("truncated"),
        "{err}"
    );
}

fn stream_library_adapters_and_datakey_ops(env: &mut TestEnv) {
    let keys = env.init_with_keys(false, b"x");
    let c = env.client();
    let pt = data(3 * CHUNK + 17, 4);
    // Blocking Read/Write adapters.
    let mut w = c
        .run(|c| c.encrypt_writer(&keys.dek, Vec::new()))
        .expect("encrypt_writer");
    for part in pt.chunks(10_000) {
        w.write_all(part).unwrap();
    }
    let ct = w.finish().expect("finish");
    let mut r = c
        .run(|c| c.decrypt_reader(ct.as_slice()))
        .expect("decrypt_reader");
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    assert_eq!(back, pt);
    // What the CLI reads, the library wrote.
    assert_eq!(env.cli_ok(&["decrypt"], Some(&ct)), pt);
    // tokio adapters.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let c = env.async_client().await;
        let mut w = c
            .async_encrypt_writer(&keys.dek, Vec::new())
            .await
            .expect("async writer");
        w.write_all(&pt).await.unwrap();
        w.shutdown().await.unwrap();
        let ct = w.into_inner();
        let mut r = c
            .async_decrypt_reader(ct.as_slice())
            .await
            .expect("async reader");
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, pt);
        // Truncated: the error names the chunk.
        let mut r = c
            .async_decrypt_reader(&ct[..HEADER + 2 * ENC_CHUNK])
            .await
            .unwrap();
        let e = r.read_to_end(&mut Vec::new()).await.unwrap_err();
        let s = keyward_tests::keyward_client::stream_error(&e).expect("a stream error");
        assert_eq!(s.chunk(), Some(2));
        assert_eq!(s.code(), "stream_truncated");
    });
    // datakey ops: unknown DEK, bad wrapped length, locked.
    let dk = c.run(|c| c.datakey_create(&keys.dek)).expect("datakey");
    assert_eq!(dk.key.expose().len(), 32);
    let opened = c
        .run(|c| c.datakey_open(&keys.dek, dk.version, &dk.wrapped))
        .expect("open");
    assert_eq!(opened.expose(), dk.key.expose());
    let unknown = uuid::Uuid::new_v4().to_string();
    expect_code(c.run(|c| c.datakey_create(&unknown)), ErrorCode::NotFound);
    expect_code(
        c.run(|c| c.datakey_open(&keys.dek, dk.version, &dk.wrapped[1..])),
        ErrorCode::InvalidArgs,
    );
    let mut bad = dk.wrapped.to_vec();
    bad[20] ^= 1;
    expect_code(
        c.run(|c| c.datakey_open(&keys.dek, dk.version, &bad)),
        ErrorCode::DecryptFailed,
    );
    c.run(|c| c.lock()).expect("lock");
    expect_code(c.run(|c| c.datakey_create(&keys.dek)), ErrorCode::Locked);
    expect_code(
        c.run(|c| c.datakey_open(&keys.dek, dk.version, &dk.wrapped)),
        ErrorCode::Locked,
    );
    c.run(|c| c.unlock(pin(env.pin()))).expect("unlock");
}

/// VmHWM (peak resident set) of a process, in KiB.
fn vm_hwm(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Run `cmd`, feeding stdin from `feed` and stdout to `drain` on threads, and sample the
/// process's VmHWM until it exits. Returns (success, peak KiB).
fn run_measured(
    mut cmd: std::process::Command,
    feed: impl FnOnce(std::process::ChildStdin) + Send + 'static,
    drain: impl FnOnce(std::process::ChildStdout) + Send + 'static,
) -> (bool, u64, String) {
    use std::process::Stdio;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn keyward");
    let pid = child.id();
    let sin = child.stdin.take().unwrap();
    let sout = child.stdout.take().unwrap();
    let mut serr = child.stderr.take().unwrap();
    let f = std::thread::spawn(move || feed(sin));
    let d = std::thread::spawn(move || drain(sout));
    let mut peak = 0;
    let status = loop {
        if let Some(k) = vm_hwm(pid) {
            peak = peak.max(k);
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    f.join().unwrap();
    d.join().unwrap();
    let mut err = String::new();
    serr.read_to_string(&mut err).unwrap();
    (status.success(), peak, err)
}

/// 1 MiB block `i` of the 1 GiB input: a fixed pseudo-random block with `i` in its first bytes.
fn block(base: &[u8], i: u64) -> Vec<u8> {
    let mut b = base.to_vec();
    b[..8].copy_from_slice(&i.to_le_bytes());
    b
}

/// 1 GiB through the CLI (stdin → file → stdout), generated and checked on the fly: the CLI's
/// and the agent's peak RSS stay under 64 MiB. Runs on the PKCS#11 root only (the agent's part
/// is two data-key operations; the other kinds run the same code in the scenarios above).
#[test]
fn stream_one_gib_through_the_cli_in_constant_memory() {
    const MIB: usize = 1 << 20;
    const BLOCKS: u64 = 1024;
    const LIMIT_KIB: u64 = 64 * 1024;
    let env = TestEnv::start(RootKind::Pkcs11);
    let keys = env.init_with_keys(false, b"x");
    let agent_before = vm_hwm(env.pid()).expect("agent VmHWM");
    let base = std::sync::Arc::new(data(MIB, 5));
    let ct = path(&env, "big.kws");

    let b = base.clone();
    let (ok, cli_enc, err) = run_measured(
        env.cli_command(&["encrypt", "--dek", &keys.dek, "-o", &ct]),
        move |mut sin| {
            for i in 0..BLOCKS {
                sin.write_all(&block(&b, i)).unwrap();
            }
        },
        |_| {},
    );
    assert!(ok, "encrypt failed: {err}");
    let len = std::fs::metadata(&ct).unwrap().len();
    assert_eq!(len, (HEADER + 1024 * 16 * 16 + (1 << 30)) as u64);

    let b = base.clone();
    let (ok, cli_dec, err) = run_measured(
        env.cli_command(&["decrypt", "-i", &ct]),
        |_| {},
        move |mut sout| {
            let mut buf = vec![0u8; MIB];
            for i in 0..BLOCKS {
                sout.read_exact(&mut buf).unwrap();
                assert!(buf == block(&b, i), "block {i} differs");
            }
            assert_eq!(sout.read(&mut buf).unwrap(), 0, "more output than input");
        },
    );
    assert!(ok, "decrypt failed: {err}");
    std::fs::remove_file(&ct).unwrap();
    let agent_after = vm_hwm(env.pid()).expect("agent VmHWM");
    eprintln!(
        "1 GiB: keyward encrypt VmHWM {cli_enc} KiB, decrypt {cli_dec} KiB; keywardd VmHWM {agent_before} → {agent_after} KiB"
    );
    assert!(cli_enc < LIMIT_KIB, "encrypt peak RSS {cli_enc} KiB");
    assert!(cli_dec < LIMIT_KIB, "decrypt peak RSS {cli_dec} KiB");
    assert!(agent_after < LIMIT_KIB, "agent peak RSS {agent_after} KiB");
}
