//! `keyward encrypt` / `keyward decrypt`: any size, from stdin or a file, in constant memory.
//!
//! Inputs up to [`CRYPPO_MAX`] bytes become a Cryppo `Aes256Gcm` string made by the agent, as
//! before streaming existed; larger ones (or any with `--stream`) the streaming format, encrypted
//! here under a data key from `datakey.create`. `decrypt` tells the two apart by the stream's
//! magic. A file output is written to a temporary file and renamed into place only on success;
//! a decryption to stdout that fails after writing says that what was written must not be
//! trusted. A progress bar is drawn on stderr when it is a terminal and the input is a stream.
//!
//! This module must never write unverified plaintext, leave a partial `-o` file, or keep a data
//! key past the constructor of the stream adapter that uses it.

use crate::cli::{out, Failure, Out, Sink};
use crate::Io;
use keyward_client::stream::{DecryptReader, EncryptWriter, DEFAULT_CHUNK};
use keyward_client::Client;
use keyward_envelope::stream::{Header, StreamError, FIXED_HEADER_LEN, MAGIC};
use serde_json::json;
use std::io::{BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::PathBuf;
use zeroize::Zeroizing;

/// Inputs up to this many bytes give a Cryppo string (unless `--stream`).
pub const CRYPPO_MAX: usize = 64 * 1024;
/// I/O buffer size.
const IO_BUF: usize = 1 << 20;
/// The largest Cryppo string `decrypt` reads (the agent takes at most a 1 MiB frame).
const CRYPPO_TEXT_MAX: u64 = 4 << 20;

/// Which format `encrypt` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Auto,
    Stream,
    Cryppo,
}

struct Input {
    r: Box<dyn Read>,
    len: Option<u64>,
    name: String,
}

fn open_input(path: &Option<PathBuf>) -> Result<Input, Failure> {
    match path {
        Some(p) => {
            let f = std::fs::File::open(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
            Ok(Input {
                r: Box::new(f),
                len,
                name: p.display().to_string(),
            })
        }
        None => Ok(Input {
            r: Box::new(std::io::stdin().lock()),
            len: None,
            name: "stdin".into(),
        }),
    }
}

/// Read until `buf` is full or the input ends.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while let Some(rest) = buf.get_mut(n..).filter(|b| !b.is_empty()) {
        match r.read(rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn progress(len: Option<u64>) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let target = indicatif::ProgressDrawTarget::stderr();
    match len {
        Some(n) => {
            let pb = indicatif::ProgressBar::with_draw_target(Some(n), target);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                pb.set_style(style);
            }
            pb
        }
        None => {
            let pb = indicatif::ProgressBar::with_draw_target(None, target);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}")
            {
                pb.set_style(style);
            }
            pb
        }
    }
}

fn binary_needs_file(json: bool, output: &Option<PathBuf>) -> Result<(), Failure> {
    if json && output.is_none() {
        return Err("the stream format is binary: with --json give -o FILE"
            .to_string()
            .into());
    }
    Ok(())
}

/// `keyward encrypt`.
pub async fn encrypt(
    c: &Client,
    dek: &str,
    io: &Io,
    format: Format,
    json: bool,
) -> Result<Option<Out>, Failure> {
    let mut input = open_input(&io.input)?;
    let read_err = |name: &str, e: std::io::Error| format!("reading {name}: {e}");
    let mut head = Zeroizing::new(vec![0u8; CRYPPO_MAX + 1]);
    let n = read_full(&mut input.r, &mut head).map_err(|e| read_err(&input.name, e))?;
    head.truncate(n);
    let stream = match format {
        Format::Stream => true,
        Format::Cryppo => false,
        Format::Auto => n > CRYPPO_MAX,
    };
    if !stream {
        let max = keyward_client::proto::MAX_PLAINTEXT;
        (&mut input.r)
            .take((max + 1 - n.min(max)) as u64)
            .read_to_end(&mut head)
            .map_err(|e| read_err(&input.name, e))?;
        if head.len() > max {
            return Err(format!(
                "--cryppo takes at most {max} bytes (one agent request); leave it out to stream"
            )
            .into());
        }
        let ct = c.encrypt(dek, &head).await?;
        return if io.output.is_some() || !json {
            crate::cli::write_output(&io.output, format!("{ct}\n").as_bytes())?;
            Ok(json.then(|| out("", json!({"dek": dek, "format": "cryppo", "written": true}))))
        } else {
            Ok(Some(out(
                "",
                json!({"dek": dek, "format": "cryppo", "ciphertext": ct}),
            )))
        };
    }
    binary_needs_file(json, &io.output)?;
    let (header, key) = c.stream_start(dek, DEFAULT_CHUNK).await?;
    let sink = Sink::open(&io.output)?;
    let mut w = EncryptWriter::new(
        BufWriter::with_capacity(IO_BUF, sink),
        key.expose(),
        &header,
    )?;
    drop(key);
    let pb = progress(input.len);
    let write_err = |e: std::io::Error| match StreamError::from_io(&e) {
        Some(_) => Failure::from(StreamError::Io(e)),
        None => format!("writing the output: {e}").into(),
    };
    w.write_all(&head).map_err(write_err)?;
    pb.inc(head.len() as u64);
    let mut total = head.len() as u64;
    drop(head);
    let mut buf = Zeroizing::new(vec![0u8; IO_BUF]);
    loop {
        let k = match input.r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(&input.name, e).into()),
        };
        w.write_all(buf.get(..k).unwrap_or_default())
            .map_err(write_err)?;
        pb.inc(k as u64);
        total += k as u64;
    }
    let bw = w.finish()?;
    let sink = bw
        .into_inner()
        .map_err(|e| format!("writing the output: {}", e.error()))?;
    sink.commit()?;
    pb.finish_and_clear();
    Ok(json.then(|| {
        out(
            "",
            json!({"dek": dek, "format": "stream", "written": true, "bytes": total}),
        )
    }))
}

/// `keyward decrypt`.
pub async fn decrypt(
    c: &Client,
    dek: Option<&str>,
    io: &Io,
    json: bool,
) -> Result<Option<Out>, Failure> {
    let mut input = open_input(&io.input)?;
    let mut fixed = [0u8; FIXED_HEADER_LEN];
    let n = read_full(&mut input.r, &mut fixed[..MAGIC.len()])
        .map_err(|e| format!("reading {}: {e}", input.name))?;
    if n == MAGIC.len() && fixed[..MAGIC.len()] == MAGIC {
        return decrypt_stream(c, dek, input, fixed, io, json).await;
    }
    let mut data = fixed[..n].to_vec();
    (&mut input.r)
        .take(CRYPPO_TEXT_MAX)
        .read_to_end(&mut data)
        .map_err(|e| format!("reading {}: {e}", input.name))?;
    if data.len() as u64 >= CRYPPO_TEXT_MAX {
        return Err("the input is neither a Keyward stream nor a Cryppo string"
            .to_string()
            .into());
    }
    let text = String::from_utf8(data)
        .map_err(|_| "the input is neither a Keyward stream nor a Cryppo string".to_string())?;
    let pt = c.decrypt(text.trim(), dek).await?;
    if io.output.is_some() || !json {
        crate::cli::write_output(&io.output, pt.expose())?;
        if !json {
            return Ok(None);
        }
        Ok(Some(out("", json!({"written": true}))))
    } else {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE;
        Ok(Some(out("", json!({"plaintext": b64.encode(pt.expose())}))))
    }
}

async fn decrypt_stream(
    c: &Client,
    dek: Option<&str>,
    input: Input,
    fixed: [u8; FIXED_HEADER_LEN],
    io: &Io,
    json: bool,
) -> Result<Option<Out>, Failure> {
    binary_needs_file(json, &io.output)?;
    let mut r = BufReader::with_capacity(IO_BUF, input.r);
    let header = Header::read_after_magic(&mut r, fixed)?;
    let named = uuid::Uuid::from_bytes(header.dek_id()).to_string();
    if let Some(d) = dek.filter(|d| !d.eq_ignore_ascii_case(&named)) {
        return Err(format!("the stream is for DEK {named}, not {d}").into());
    }
    let key = c.stream_key(&header).await?;
    let mut dr = DecryptReader::new(r, key.expose(), &header)?;
    drop(key);
    let mut sink = Sink::open(&io.output)?;
    let pb = progress(input.len);
    let mut buf = Zeroizing::new(vec![0u8; IO_BUF]);
    let mut total = 0u64;
    loop {
        let k = match dr.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) => {
                pb.abandon();
                if sink.is_stdout() && total > 0 {
                    let _ = sink.flush();
                    eprintln!(
                        "keyward: warning: {total} bytes were written to stdout before this error: they must not be trusted (the stream is damaged, reordered or cut short)"
                    );
                }
                return Err(match e.into_inner().map(|i| i.downcast::<StreamError>()) {
                    Some(Ok(s)) => (*s).into(),
                    Some(Err(other)) => format!("reading {}: {other}", input.name).into(),
                    None => format!("reading {}", input.name).into(),
                });
            }
        };
        sink.write_all(buf.get(..k).unwrap_or_default())
            .map_err(|e| format!("writing the output: {e}"))?;
        pb.inc(k as u64);
        total += k as u64;
    }
    sink.commit()?;
    pb.finish_and_clear();
    Ok(json.then(|| {
        out(
            "",
            json!({"format": "stream", "written": true, "bytes": total}),
        )
    }))
}
