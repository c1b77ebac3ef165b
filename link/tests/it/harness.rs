//! Real `qkd-link` processes against a network of real `qkd-node` processes (through
//! `qkd_testnet::LinkProc`), a TCP echo service, a proxy that flips one bit of one frame, and a
//! stand-in `wg`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qkd_testnet::LinkProc;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const LINK: &str = env!("CARGO_BIN_EXE_qkd-link");

/// How long anything a test waits for may take on a loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// A running `qkd-link` keyed by a node of the network; panics where the harness would fail.
pub struct Link(LinkProc);

impl Link {
    /// Starts `qkd-link <args>` as SAE `sae` of `node` in `net`, with extra environment.
    pub fn start(
        net: &qkd_testnet::Net,
        node: &str,
        sae: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Link {
        Link(LinkProc::start(LINK.as_ref(), net, node, sae, args, env).unwrap())
    }

    /// The first report line `pred` accepts (panics after [`DEADLINE`]).
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.0.wait_for(what, DEADLINE, pred).await.unwrap()
    }

    /// The address it reported listening on.
    pub async fn addr(&mut self) -> String {
        self.0.addr(DEADLINE).await.unwrap()
    }

    /// The report of tunnel `conn` closing.
    pub async fn closed(&mut self, conn: u64) -> Value {
        self.0.closed(conn, DEADLINE).await.unwrap()
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.0.log()
    }
}

/// A TCP echo service on 127.0.0.1; its address.
pub async fn echo_service() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Sends `data` through `addr` while reading the echo; returns what came back before the
/// connection ended (cleanly or not).
pub async fn through(addr: &str, data: Vec<u8>) -> Vec<u8> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(7_001) {
            if w.write_all(chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut back = Vec::new();
    let read = tokio::time::timeout(DEADLINE, async {
        let mut buf = vec![0u8; 65_536];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => back.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the echo did not end within {DEADLINE:?}");
    writer.abort();
    back
}

/// A deterministic test pattern that no shift of itself matches.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A proxy to `upstream` that forwards both ways and flips the last bit of the `nth` frame
/// (from 0) it sees from the dialling side, after the 44-byte hello. Its address.
pub async fn tampering_proxy(upstream: String, nth: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((down, _)) = l.accept().await {
            let up = TcpStream::connect(&upstream).await.unwrap();
            let (mut dr, mut dw) = down.into_split();
            let (mut ur, mut uw) = up.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut ur, &mut dw).await;
                let _ = dw.shutdown().await;
            });
            tokio::spawn(async move {
                let mut hello = [0u8; 44];
                if dr.read_exact(&mut hello).await.is_err() {
                    return;
                }
                let _ = uw.write_all(&hello).await;
                for i in 0.. {
                    let mut h = [0u8; 12];
                    if dr.read_exact(&mut h).await.is_err() {
                        break;
                    }
                    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                    let mut body = vec![0u8; len - 8];
                    if dr.read_exact(&mut body).await.is_err() {
                        break;
                    }
                    if i == nth {
                        *body.last_mut().unwrap() ^= 1;
                    }
                    if uw.write_all(&h).await.is_err() || uw.write_all(&body).await.is_err() {
                        break;
                    }
                }
                let _ = uw.shutdown().await;
            });
        }
    });
    addr
}

/// A stand-in `wg` in its own directory: records each call's arguments in `calls.log` and the
/// key it read on stdin in `keys.log`. Returns the directory (put it first on PATH).
pub fn stand_in_wg(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let script = dir.join("wg");
    std::fs::write(
        &script,
        "#!/bin/sh\nd=$(dirname \"$0\")\nprintf '%s\\n' \"$*\" >> \"$d/calls.log\"\n\
         cat >> \"$d/keys.log\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.to_path_buf()
}

/// The lines of a file (none when it does not exist yet).
pub fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}
