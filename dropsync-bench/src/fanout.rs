//! B5's load generator: many raw protocol sessions, a thread (small stack)
//! per session reading its receive connection, and one uploader whose file
//! the server pushes to all of them.
//!
//! The sessions live in worker processes (this binary again, with
//! `--fanout-worker`), at most [`PER_WORKER`] each: every session holds
//! two sockets, and one process may not have more than its hard limit on
//! open files (20,000 here, which root cannot raise without
//! CAP_SYS_RESOURCE). A worker prints `fail …` lines, `ready`, then
//! `done OK LAST` (LAST: when its last session read FINISHED, in
//! nanoseconds since the Unix epoch, so that the processes' times compare)
//! and keeps its sessions connected until it is stopped.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dropsync_io::wire::{is_timeout_error, write_status, FrameReader, Msg};
use dropsync_proto::{md5, Frame, MessageType, StatusCode};

use crate::data::Rng;
use crate::procs::{proc_status, Proc, Spec};
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
    /// Server's open descriptors then.
    pub server_fds: usize,
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

/// What a receiving session keeps once greeted: its send connection (for
/// keep-alives; never read again, so its reader and that reader's buffer
/// are dropped) and its receive connection with a reader (answers are
/// written through the reader's socket: two descriptors a session).
struct Receiver {
    send: TcpStream,
    recv_rx: FrameReader<TcpStream>,
}

impl From<Session> for Receiver {
    fn from(s: Session) -> Receiver {
        Receiver { send: s.send, recv_rx: s.recv_rx }
    }
}

/// Writes a status on the receive connection.
fn answer(s: &Receiver, code: StatusCode) -> Result<(), String> {
    let mut w: &TcpStream = s.recv_rx.get_ref();
    write_status(&mut w, code).map_err(|e| e.to_string())
}

/// Pieces in which a chunk's payload is read and compared: with 10,000
/// sessions, a buffer of a whole chunk (1 MiB) each would be 10 GiB.
const PIECE: usize = 64 * 1024;

/// Reads the receive connection, answering every message OK, until
/// FINISHED of `target` (its bytes compared with `want` on the way, a
/// piece at a time); writes a keep-alive on the send connection every 10 s
/// like a client.
fn receive_until(s: &mut Receiver, target: &str, want: &[u8], deadline: Instant) -> Result<Instant, String> {
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
                let mine = name == target;
                let mut piece = vec![0u8; PIECE.min(len as usize)];
                let mut left = len as usize;
                while left > 0 {
                    let n = left.min(PIECE);
                    let mut got = 0;
                    loop {
                        match s.recv_rx.read_payload_into(&mut piece[..n], &mut got) {
                            Ok(()) => break,
                            Err(e) if is_timeout_error(&e) && Instant::now() < deadline => continue,
                            Err(e) => return Err(format!("payload: {e}")),
                        }
                    }
                    if mine {
                        intact &= want.get(off..off + n) == Some(&piece[..n]);
                        off += n;
                    }
                    left -= n;
                }
                answer(s, StatusCode::OK)?;
            }
            Ok(Some(Msg::Named { kind, name, .. })) => {
                answer(s, StatusCode::OK)?;
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

/// Sessions per worker process: two sockets each, well under a hard limit
/// of 20,000 open files.
pub const PER_WORKER: usize = 4000;
/// The file every session receives.
const NAME: &str = "fanout/one-mebibyte.bin";
/// Seed of the file's bytes (the workers make the same bytes).
const PAYLOAD_SEED: u64 = 0xfa_0005;

/// The file B5 sends: `size` pseudo-random bytes, the same in every process.
pub fn payload(size: usize) -> Vec<u8> {
    Rng::new(PAYLOAD_SEED).bytes(size)
}

type Outcome = (Result<Instant, String>, Receiver);

/// Greets sessions `first..first + count` (4 connector threads) and starts
/// a reader thread for each; returns the threads and the failures.
fn connect_sessions(
    send_port: u16,
    recv_port: u16,
    first: usize,
    count: usize,
    data: Arc<Vec<u8>>,
    deadline: Instant,
) -> (Vec<JoinHandle<Outcome>>, Vec<String>) {
    let handles: Arc<Mutex<Vec<JoinHandle<Outcome>>>> = Arc::new(Mutex::new(Vec::new()));
    let (err_tx, err_rx) = mpsc::channel::<String>();
    let connectors: Vec<_> = (0..4)
        .map(|k| {
            let (handles, data, err_tx) = (handles.clone(), data.clone(), err_tx.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x5eed_0000 + (first + k) as u64);
                for i in (first + k..first + count).step_by(4) {
                    let mut id = [0u8; 16];
                    rng.fill(&mut id);
                    match hello(send_port, recv_port, id, &format!("fanout-{i}")) {
                        Ok(s) => {
                            let mut s = Receiver::from(s);
                            let data = data.clone();
                            let h = std::thread::Builder::new()
                                .name(format!("session-{i}"))
                                .stack_size(128 * 1024)
                                .spawn(move || (receive_until(&mut s, NAME, &data, deadline), s));
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
    let failures = err_rx.try_iter().collect();
    let handles = std::mem::take(&mut *handles.lock().unwrap_or_else(|e| e.into_inner()));
    (handles, failures)
}

fn unix_ns(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// `--fanout-worker SEND RECV FIRST COUNT SIZE LIMIT_SECS`: a worker
/// process (see the module's doc). Returns the exit code.
pub fn worker_main(args: &[String]) -> i32 {
    let num = |i: usize| args.get(i).and_then(|v| v.parse::<u64>().ok());
    let (Some(sp), Some(rp), Some(first), Some(count), Some(size), Some(limit)) =
        (num(0), num(1), num(2), num(3), num(4), num(5))
    else {
        eprintln!("fanout worker: bad arguments {args:?}");
        return 2;
    };
    let (base_sys, base) = (SystemTime::now(), Instant::now());
    let deadline = base + Duration::from_secs(limit);
    let data = Arc::new(payload(size as usize));
    let (handles, failures) = connect_sessions(sp as u16, rp as u16, first as usize, count as usize, data, deadline);
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| {
        let _ = writeln!(out, "{}", line.replace('\n', " "));
        let _ = out.flush();
    };
    for f in &failures {
        say(format!("fail {f}"));
    }
    say("ready".into());
    let (mut ok, mut last) = (0usize, None::<Instant>);
    let mut connected = Vec::with_capacity(handles.len());
    for h in handles {
        match h.join() {
            Ok((Ok(t), s)) => {
                ok += 1;
                last = Some(last.map_or(t, |l| l.max(t)));
                connected.push(s);
            }
            Ok((Err(e), s)) => {
                say(format!("fail {e}"));
                connected.push(s);
            }
            Err(_) => say("fail session thread panicked".into()),
        }
    }
    let last_ns = last.map_or(0, |t| unix_ns(base_sys + t.duration_since(base)));
    say(format!("done {ok} {last_ns}"));
    // Connected until the bench has looked at the server and stops this
    // process (or its `timeout` does).
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(connected);
    0
}

/// What a worker said.
enum Said {
    Fail(String),
    Ready,
    Done(usize, u128),
    Gone,
}

/// Starts the workers for `sessions` sessions, connects one uploader in
/// this process, uploads `data` in chunks of `chunk`, and waits until
/// every session has it (bounded by `limit`). `log_dir` holds the workers'
/// stderr.
#[allow(clippy::too_many_arguments)]
pub fn run(
    send_port: u16,
    recv_port: u16,
    server_pid: u32,
    sessions: usize,
    data: Arc<Vec<u8>>,
    chunk: usize,
    limit: Duration,
    log_dir: &Path,
) -> R<FanoutResult> {
    let deadline = Instant::now() + limit;
    let mut res = FanoutResult::default();
    let name = NAME;

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

    // Ramp: the workers connect and greet their sessions.
    let t_ramp = Instant::now();
    let exe = std::env::current_exe()?;
    let (tx, rx) = mpsc::channel::<(usize, Said)>();
    let mut workers = Vec::new();
    for (w, first) in (0..sessions).step_by(PER_WORKER).enumerate() {
        let count = PER_WORKER.min(sessions - first);
        let args = [send_port as usize, recv_port as usize, first, count, data.len(), limit.as_secs() as usize];
        let mut argv = vec!["--fanout-worker".to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let (p, stdin, stdout) = Proc::start_piped(
            &format!("fan-out worker {w}"),
            Spec {
                bin: exe.clone(),
                args: argv,
                limit: limit + Duration::from_secs(30),
                log: log_dir.join(format!("fanout-worker-{w}.log")),
                read_listening: false,
                time_file: None,
                env: Vec::new(),
            },
        )?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let said = match line.split_once(' ').unwrap_or((line.as_str(), "")) {
                    ("fail", why) => Said::Fail(why.to_owned()),
                    ("ready", _) => Said::Ready,
                    ("done", rest) => {
                        let mut it = rest.split_whitespace().map(|v| v.parse::<u128>().unwrap_or(0));
                        Said::Done(it.next().unwrap_or(0) as usize, it.next().unwrap_or(0))
                    }
                    _ => continue,
                };
                if tx.send((w, said)).is_err() {
                    return;
                }
            }
            let _ = tx.send((w, Said::Gone));
        });
        workers.push((p, stdin));
    }
    drop(tx);
    let n_workers = workers.len();
    let mut ready = 0;
    let mut done = 0;
    let mut last_ns = 0u128;
    // Reads what the workers say until `want` of them said `until`.
    let mut listen = |res: &mut FanoutResult, want_done: bool| -> R<()> {
        while if want_done { done < n_workers } else { ready < n_workers } {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((_, Said::Fail(why))) => res.failures.push(why),
                Ok((_, Said::Ready)) => ready += 1,
                Ok((_, Said::Done(ok, last))) => {
                    done += 1;
                    res.ok += ok;
                    last_ns = last_ns.max(last);
                }
                Ok((w, Said::Gone)) => {
                    return Err(format!("fan-out worker {w} exited early (log: fanout-worker-{w}.log)").into())
                }
                Err(_) => return Err("the fan-out workers did not finish in time".into()),
            }
        }
        Ok(())
    };
    listen(&mut res, false)?;
    res.ramp = t_ramp.elapsed();

    // The uploader, with a thread answering its own receive connection.
    let mut rng = Rng::new(0xfeed);
    let mut id = [0u8; 16];
    rng.fill(&mut id);
    let up = hello(send_port, recv_port, id, "fanout-uploader")?;
    let Session { send: mut up_send, send_rx: mut up_rx, recv: up_recv, recv_rx: up_recv_rx } = up;
    drop(up_recv);
    let up_drain = {
        let mut s = Receiver { send: up_send.try_clone()?, recv_rx: up_recv_rx };
        std::thread::spawn(move || {
            let _ = receive_until(&mut s, "\u{0}never", &[], deadline);
        })
    };
    let pieces: Vec<Vec<u8>> =
        data.chunks(chunk.max(1)).map(|p| Frame::Chunk { digest: md5(p), name, payload: p }.to_vec()).collect();
    let finished = Frame::Finished { digest: md5(&data), name }.to_vec();
    // Let every session's META-DATA transfer settle first.
    std::thread::sleep(Duration::from_millis(500));

    let (t0_sys, t0) = (SystemTime::now(), Instant::now());
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

    // Sessions stay connected until every one has the file and the server
    // has been sampled.
    listen(&mut res, true)?;
    res.last = Duration::from_nanos(last_ns.saturating_sub(unix_ns(t0_sys)) as u64);
    if let Some(st) = proc_status(server_pid) {
        res.server_hwm_kib = st.vm_hwm_kib;
        res.threads_end = st.threads;
        peak.fetch_max(st.threads, Ordering::Relaxed);
    }
    res.server_fds = std::fs::read_dir(format!("/proc/{server_pid}/fd")).map_or(0, |d| d.count());
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    res.threads_peak = peak.load(Ordering::Relaxed);
    for (mut p, stdin) in workers {
        drop(stdin);
        p.stop();
    }
    drop(up_send);
    drop(up_rx);
    // The uploader's drain thread ends at its deadline or when the server
    // closes; do not wait for it.
    drop(up_drain);
    Ok(res)
}
