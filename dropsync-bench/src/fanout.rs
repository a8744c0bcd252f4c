//! B5's load generator: many raw protocol sessions in this one process, a
//! thread (small stack) per session reading its receive connection, and
//! one uploader whose file the server pushes to all of them.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dropsync_io::wire::{is_timeout_error, write_status, FrameReader, Msg};
use dropsync_proto::{md5, Frame, MessageType, StatusCode};

use crate::data::Rng;
use crate::procs::proc_status;
use crate::R;

/// What one fan-out run measured.
#[derive(Debug, Default)]
pub struct FanoutResult {
    /// Connecting and greeting every session.
    pub ramp: Duration,
    /// Upload by the uploader (first CHUNK written → OK to FINISHED).
    pub upload: Duration,
    /// First CHUNK written → the last session has read FINISHED.
    pub last: Duration,
    /// Sessions that received the file intact.
    pub ok: usize,
    /// Sessions that failed (first few reasons).
    pub failures: Vec<String>,
    /// Server VmHWM (KiB) once every session had the file.
    pub server_hwm_kib: u64,
    /// Server threads, highest sampled.
    pub threads_peak: u64,
    /// Server threads once every session had the file.
    pub threads_end: u64,
}

fn connect(port: u16) -> R<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    Ok(s)
}

/// Both connections of a session after HELLO, and the readers.
struct Session {
    send: TcpStream,
    send_rx: FrameReader<TcpStream>,
    recv: TcpStream,
    recv_rx: FrameReader<TcpStream>,
}

fn next_status(rx: &mut FrameReader<TcpStream>, deadline: Instant) -> R<StatusCode> {
    loop {
        match rx.read_msg() {
            Ok(Some(Msg::Status(StatusCode::KEEP_ALIVE))) => continue,
            Ok(Some(Msg::Status(c))) => return Ok(c),
            Ok(other) => return Err(format!("expected STATUS, got {other:?}").into()),
            Err(e) if is_timeout_error(&e) && Instant::now() < deadline => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn hello(send_port: u16, recv_port: u16, id: [u8; 16], label: &str) -> R<Session> {
    let send = connect(send_port)?;
    let recv = connect(recv_port)?;
    let frame = Frame::Hello { client_id: id, label }.to_vec();
    (&send).write_all(&frame)?;
    (&recv).write_all(&frame)?;
    let mut send_rx = FrameReader::new(send.try_clone()?);
    let mut recv_rx = FrameReader::new(recv.try_clone()?);
    let deadline = Instant::now() + Duration::from_secs(30);
    let a = next_status(&mut send_rx, deadline)?;
    let b = next_status(&mut recv_rx, deadline)?;
    if a != StatusCode::OK || b != StatusCode::OK {
        return Err(format!("HELLO refused: {a:?} / {b:?}").into());
    }
    Ok(Session { send, send_rx, recv, recv_rx })
}

/// Reads the receive connection, answering every message OK, until
/// FINISHED of `target` (its bytes compared with `want` on the way);
/// writes a keep-alive on the send connection every 10 s like a client.
fn receive_until(s: &mut Session, target: &str, want: &[u8], deadline: Instant) -> Result<Instant, String> {
    let mut off = 0usize;
    let mut intact = true;
    let mut last_keepalive = Instant::now();
    loop {
        if last_keepalive.elapsed() > Duration::from_secs(10) {
            write_status(&mut s.send, StatusCode::KEEP_ALIVE).map_err(|e| format!("keep-alive: {e}"))?;
            last_keepalive = Instant::now();
        }
        match s.recv_rx.read_msg() {
            Ok(Some(Msg::Status(_))) => {}
            Ok(Some(Msg::Chunk { name, len, .. })) => {
                let payload = loop {
                    match s.recv_rx.ensure(len) {
                        Ok(()) => break s.recv_rx.read_payload(len).map_err(|e| e.to_string())?,
                        Err(e) if is_timeout_error(&e) && Instant::now() < deadline => continue,
                        Err(e) => return Err(format!("payload: {e}")),
                    }
                };
                if name == target {
                    intact &= want.get(off..off + payload.len()) == Some(payload);
                    off += payload.len();
                }
                write_status(&mut s.recv, StatusCode::OK).map_err(|e| e.to_string())?;
            }
            Ok(Some(Msg::Named { kind, name, .. })) => {
                write_status(&mut s.recv, StatusCode::OK).map_err(|e| e.to_string())?;
                if kind == MessageType::Finished && name == target {
                    let t = Instant::now();
                    if !intact || off != want.len() {
                        return Err(format!("{target} arrived corrupt ({off} of {} bytes)", want.len()));
                    }
                    return Ok(t);
                }
            }
            Ok(Some(other)) => return Err(format!("unexpected {other:?}")),
            Ok(None) => return Err("server closed the receive connection".into()),
            Err(e) if is_timeout_error(&e) => {
                if Instant::now() >= deadline {
                    return Err("deadline passed".into());
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Connects `sessions` receivers and one uploader to the server, uploads
/// `data` as `name` in chunks of `chunk`, and waits until every receiver
/// has it (bounded by `limit`).
pub fn run(
    send_port: u16,
    recv_port: u16,
    server_pid: u32,
    sessions: usize,
    data: Arc<Vec<u8>>,
    chunk: usize,
    limit: Duration,
) -> R<FanoutResult> {
    let deadline = Instant::now() + limit;
    let name = "fanout/one-mebibyte.bin";
    let mut res = FanoutResult::default();

    // Sampler: the server's thread count while this runs.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(st) = proc_status(server_pid) {
                    peak.fetch_max(st.threads, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // Ramp: 4 connector threads; each session gets its own reader thread.
    let t_ramp = Instant::now();
    type Outcome = (Result<Instant, String>, Session);
    let handles: Arc<Mutex<Vec<JoinHandle<Outcome>>>> = Arc::new(Mutex::new(Vec::new()));
    let (err_tx, err_rx) = mpsc::channel::<String>();
    let connectors: Vec<_> = (0..4)
        .map(|k| {
            let (handles, data, err_tx) = (handles.clone(), data.clone(), err_tx.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x5eed_0000 + k as u64);
                for i in (k..sessions).step_by(4) {
                    let mut id = [0u8; 16];
                    rng.fill(&mut id);
                    match hello(send_port, recv_port, id, &format!("fanout-{i}")) {
                        Ok(s) => {
                            let data = data.clone();
                            let h = std::thread::Builder::new()
                                .name(format!("session-{i}"))
                                .stack_size(128 * 1024)
                                .spawn(move || {
                                    let mut s = s;
                                    (receive_until(&mut s, name, &data, deadline), s)
                                });
                            match h {
                                Ok(h) => handles.lock().unwrap_or_else(|e| e.into_inner()).push(h),
                                Err(e) => {
                                    let _ = err_tx.send(format!("session {i}: thread: {e}"));
                                }
                            }
                        }
                        Err(e) => {
                            let _ = err_tx.send(format!("session {i}: {e}"));
                        }
                    }
                }
            })
        })
        .collect();
    for c in connectors {
        let _ = c.join();
    }
    drop(err_tx);
    res.failures.extend(err_rx.try_iter());
    res.ramp = t_ramp.elapsed();

    // The uploader, with a thread answering its own receive connection.
    let mut rng = Rng::new(0xfeed);
    let mut id = [0u8; 16];
    rng.fill(&mut id);
    let up = hello(send_port, recv_port, id, "fanout-uploader")?;
    let Session { send: mut up_send, send_rx: mut up_rx, recv: up_recv, recv_rx: up_recv_rx } = up;
    let up_drain = {
        let mut s = Session {
            send: up_send.try_clone()?,
            send_rx: FrameReader::new(up_send.try_clone()?),
            recv: up_recv,
            recv_rx: up_recv_rx,
        };
        std::thread::spawn(move || {
            let _ = receive_until(&mut s, "\u{0}never", &[], deadline);
        })
    };
    let pieces: Vec<Vec<u8>> =
        data.chunks(chunk.max(1)).map(|p| Frame::Chunk { digest: md5(p), name, payload: p }.to_vec()).collect();
    let finished = Frame::Finished { digest: md5(&data), name }.to_vec();
    // Let every session's META-DATA transfer settle first.
    std::thread::sleep(Duration::from_millis(500));

    let t0 = Instant::now();
    for p in &pieces {
        up_send.write_all(p)?;
        let st = next_status(&mut up_rx, deadline)?;
        if st != StatusCode::OK {
            return Err(format!("upload chunk refused: {st:?}").into());
        }
    }
    up_send.write_all(&finished)?;
    let st = next_status(&mut up_rx, deadline)?;
    if st != StatusCode::OK {
        return Err(format!("upload FINISHED refused: {st:?}").into());
    }
    res.upload = t0.elapsed();

    let handles = std::mem::take(&mut *handles.lock().unwrap_or_else(|e| e.into_inner()));
    let mut last = t0;
    // Sessions stay connected until every one has the file and the server
    // has been sampled.
    let mut connected = Vec::with_capacity(handles.len());
    for h in handles {
        match h.join() {
            Ok((Ok(t), s)) => {
                res.ok += 1;
                last = last.max(t);
                connected.push(s);
            }
            Ok((Err(e), s)) => {
                res.failures.push(e);
                connected.push(s);
            }
            Err(_) => res.failures.push("session thread panicked".into()),
        }
    }
    res.last = last.duration_since(t0);
    if let Some(st) = proc_status(server_pid) {
        res.server_hwm_kib = st.vm_hwm_kib;
        res.threads_end = st.threads;
        peak.fetch_max(st.threads, Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    res.threads_peak = peak.load(Ordering::Relaxed);
    drop(connected);
    drop(up_send);
    drop(up_rx);
    // The uploader's drain thread ends at its deadline or when the server
    // closes; do not wait for it.
    drop(up_drain);
    Ok(res)
}
