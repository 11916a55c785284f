//! The floor: the least work a server can do to send one message per frame to every viewer.
//!
//! It serves the hub's own frame bytes over WebSocket at 25 FPS. Each frame is framed once at
//! start-up into one shared buffer (server frames are unmasked, so every viewer gets the same
//! bytes), and each tick makes one non-blocking write of that buffer per viewer: no per-viewer
//! queue, no encoding, no protocol beyond the upgrade. Whatever a real server spends above this
//! is the price of its features. Run by `bench/peers/run.sh`.

use std::io::{self, ErrorKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const TICK: Duration = Duration::from_millis(40);

#[derive(Parser)]
struct Args {
    /// Hub to take the frame bytes from.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    hub: String,
    #[arg(long, default_value = "demo")]
    race: String,
    /// First frame to serve.
    #[arg(long, default_value_t = 5000)]
    from: u32,
    /// Frames to serve, cyclically.
    #[arg(long, default_value_t = 3000)]
    frames: u32,
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: String,
}

/// One viewer as the tick loop sees it.
struct Client {
    socket: OwnedWriteHalf,
    /// The unsent tail of a partially written frame: it goes out before anything else.
    rest: Option<Bytes>,
    /// Set by the client's reader when the peer closes.
    gone: Arc<AtomicBool>,
}

// One thread: the floor's CPU per frame should count writes, not cross-thread wake-ups.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let frames = fetch_frames(&args).await?;
    let listener = TcpListener::bind(&args.bind).await?;
    println!("listening on {}", listener.local_addr()?);
    eprintln!("{} frames loaded", frames.len());

    let (joins, mut joined) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let joins = joins.clone();
                    tokio::spawn(async move {
                        if let Ok(client) = upgrade(stream).await {
                            let _ = joins.send(client);
                        }
                    });
                }
                // Out of file descriptors and the like: wait rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });

    let mut clients: Vec<Client> = Vec::new();
    let mut ticks = tokio::time::interval(TICK);
    // Skip: a late tick neither bursts catch-up frames at viewers (Burst) nor shifts the 40 ms
    // grid (Delay), which would drift below 25 FPS; the frame is chosen by the tick's slot on
    // that grid, so a missed tick is a skipped frame, as on the hub's playback timeline.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let first = ticks.tick().await;
    loop {
        let slot = ticks.tick().await - first;
        while let Ok(client) = joined.try_recv() {
            clients.push(client);
        }
        let n = (slot.as_millis() / TICK.as_millis()) as usize % frames.len();
        let frame = &frames[n];
        clients.retain_mut(|c| !c.gone.load(Ordering::Relaxed) && send(c, frame).is_ok());
    }
}

/// Offers `frame` to a client with one write (two if a previous frame's tail is pending).
/// A full socket buffer skips the frame for this client; Err means the client is gone.
fn send(client: &mut Client, frame: &Bytes) -> io::Result<()> {
    if let Some(rest) = client.rest.take() {
        // Finish the previous frame first, so the stream never carries a broken message.
        let n = write_some(&client.socket, &rest)?;
        if n < rest.len() {
            client.rest = Some(rest.slice(n..));
            return Ok(());
        }
    }
    let n = write_some(&client.socket, frame)?;
    if n > 0 && n < frame.len() {
        client.rest = Some(frame.slice(n..));
    }
    Ok(())
}

/// One non-blocking write; a full socket buffer writes nothing.
fn write_some(socket: &OwnedWriteHalf, bytes: &[u8]) -> io::Result<usize> {
    match socket.try_write(bytes) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
        written => written,
    }
}

/// The hub's exact wire bytes of each frame, each framed once as a WebSocket binary message.
async fn fetch_frames(args: &Args) -> Result<Vec<Bytes>, Box<dyn std::error::Error>> {
    let http = reqwest::Client::new();
    let mut frames = Vec::with_capacity(args.frames as usize);
    for i in args.from..args.from.saturating_add(args.frames) {
        let url = format!(
            "{}/api/races/{}/frames?from={i}&to={}",
            args.hub,
            args.race,
            i + 1
        );
        let response = http.get(&url).send().await?;
        if !response.status().is_success() {
            return Err(format!("{url}: {}", response.status()).into());
        }
        let body = response.bytes().await?;
        // A msgpack array of one element: the 0x91 header, then the frame as the hub sends it.
        let payload = body
            .strip_prefix(&[0x91])
            .ok_or_else(|| format!("{url}: not a one-frame msgpack array"))?;
        frames.push(ws_binary(payload));
    }
    Ok(frames)
}

/// A complete unmasked, unfragmented binary WebSocket message (RFC 6455 §5.2).
fn ws_binary(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(0x82); // FIN + binary
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= 0xffff => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// Answers the HTTP upgrade on any path, then hands the write half to the tick loop and keeps
/// reading (and discarding) until the peer closes.
async fn upgrade(mut stream: TcpStream) -> io::Result<Client> {
    stream.set_nodelay(true)?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(ErrorKind::InvalidData.into());
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let key = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, value)| value.trim())
        .ok_or(ErrorKind::InvalidData)?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;

    let (mut reader, socket) = stream.into_split();
    let gone = Arc::new(AtomicBool::new(false));
    let flag = gone.clone();
    tokio::spawn(async move {
        let mut sink = [0u8; 512];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
        flag.store(true, Ordering::Relaxed);
    });
    Ok(Client {
        socket,
        rest: None,
        gone,
    })
}
