//! A TCP relay on loopback in front of a real server, for fault injection:
//! bytes towards the server trickle or go nowhere, or the answer is cut off
//! after so many bytes. The mode is read when a connection opens, so a test
//! switches it for the connections that follow; switching to [`Mode::Hung`]
//! also stalls the connections already open (a server that went
//! unreachable). Stops by itself.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The relay never outlives a test by more than this.
const HARD_LIFETIME: Duration = Duration::from_secs(300);

/// Bytes of an answer passed on in [`Mode::Cut`].
pub const CUT_AFTER: usize = 1024 * 1024;

/// What the relay does with a connection.
#[derive(Clone, Copy)]
#[repr(u8)]
pub enum Mode {
    /// Accepts, then forwards nothing either way: a server that hangs.
    Hung = 0,
    /// Forwards requests at 512 KiB/s: a server slower than the client.
    Slow = 1,
    /// Forwards as they come.
    Open = 2,
    /// Forwards the request, and [`CUT_AFTER`] bytes of the answer, then
    /// closes: a body that breaks off.
    Cut = 3,
}

/// Relays `listener`'s connections to `127.0.0.1:<backend>` in the mode
/// `mode` holds when each opens.
pub async fn relay(listener: TcpListener, backend: u16, mode: Arc<AtomicU8>) {
    let serve = async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(connection(client, backend, Arc::clone(&mode)));
        }
    };
    let _ = tokio::time::timeout(HARD_LIFETIME, serve).await;
}

async fn connection(client: TcpStream, backend: u16, switch: Arc<AtomicU8>) {
    let mode = switch.load(Ordering::SeqCst);
    // Waits for ever once the relay is switched to `Hung`.
    let unless_hung = |switch: &AtomicU8| {
        let hung = switch.load(Ordering::SeqCst) == Mode::Hung as u8;
        async move {
            if hung {
                std::future::pending::<()>().await;
            }
        }
    };
    if mode == Mode::Hung as u8 {
        // Held open, never answered, until the relay's lifetime ends.
        let _held = client;
        tokio::time::sleep(HARD_LIFETIME).await;
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", backend)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up_switch = Arc::clone(&switch);
    let up = async move {
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            unless_hung(&up_switch).await;
            if mode == Mode::Slow as u8 {
                // 64 KiB per 125 ms: 512 KiB/s.
                tokio::time::sleep(Duration::from_millis(125 * n as u64 / 65536)).await;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut left = match mode == Mode::Cut as u8 {
            true => CUT_AFTER,
            false => usize::MAX,
        };
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
            unless_hung(&switch).await;
            let n = n.min(left);
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
            left -= n;
            if left == 0 {
                return;
            }
        }
    };
    match mode == Mode::Cut as u8 {
        // A cut answer closes both ways.
        true => tokio::select! {
            _ = up => {}
            _ = down => {}
        },
        false => drop(tokio::join!(up, down)),
    }
}
