//! A hostile HTTP/2 client on the `h2` crate: streams that ask for a blob
//! and never open their flow-control window (`h2load -w 0`).

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// An attacking connection's streams, as lasti answered them.
pub struct ZeroWindow {
    /// The connection's task; it ends when lasti closes the connection.
    pub connection: JoinHandle<Result<(), h2::Error>>,
    /// Each stream's status, in the order they were opened.
    pub statuses: Vec<u16>,
    /// The bodies, never read.
    pub bodies: Vec<h2::RecvStream>,
}

/// Opens one HTTP/2 connection (h2c, prior knowledge) to `addr` with an
/// initial stream window of zero, and `streams` GETs of `path` on it:
/// lasti can send headers but no DATA.
pub async fn zero_window_streams(addr: &str, path: &str, streams: usize) -> ZeroWindow {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let mut pending = Vec::new();
    for _ in 0..streams {
        client = client.ready().await.expect("a stream may open");
        let request = http::Request::get(format!("http://{addr}{path}"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).expect("send request");
        pending.push(response);
    }
    let (mut statuses, mut bodies) = (Vec::new(), Vec::new());
    for response in pending {
        let response = response.await.expect("response headers");
        statuses.push(response.status().as_u16());
        bodies.push(response.into_body());
    }
    ZeroWindow {
        connection,
        statuses,
        bodies,
    }
}
