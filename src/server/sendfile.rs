//! The plain-TCP connection of the registry API: bytes of a mapped cache
//! window go out with `sendfile(2)`, straight from the page cache to the
//! socket, the way nginx serves files; everything else is written as usual.
//!
//! hyper writes a response as a list of buffers (headers, then the body's
//! `Bytes` as they are, since the connection does vectored writes). When a
//! buffer lies inside a window of [`crate::cache::mapped`], this stream asks
//! the kernel to send that file range instead of copying the mapped memory
//! into the socket. The bytes on the wire are the same either way; only the
//! copy and the page faults are saved.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::cache::mapped::Windows;

/// A TCP connection that sends cache windows with `sendfile`.
#[derive(Debug)]
pub struct SendfileStream {
    tcp: TcpStream,
    sent_from_files: IntCounter,
    windows: Arc<Windows>,
}

impl SendfileStream {
    /// Wraps an accepted connection that sends the buffers it finds in
    /// `windows` with `sendfile`; `sent_from_files` counts those bytes.
    pub fn new(tcp: TcpStream, sent_from_files: IntCounter, windows: Arc<Windows>) -> Self {
        SendfileStream {
            tcp,
            sent_from_files,
            windows,
        }
    }

    /// Sends up to `len` bytes of `file` from `offset`.
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let sent = ready!(self.poll_send(cx, || {
            let mut at = offset;
            rustix::fs::sendfile(&self.tcp, file, Some(&mut at), len)
        }))?;
        self.sent_from_files.inc_by(sent as u64);
        Poll::Ready(Ok(sent))
    }

    /// Writes the buffers that come before a window (a response's head)
    /// with `MSG_MORE`, so the kernel sends them in the same segment as the
    /// window's first bytes instead of a packet of their own (nginx's
    /// `tcp_nopush`); the `sendfile` that follows at once pushes both.
    fn poll_write_before_window(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        use rustix::net::{SendAncillaryBuffer, SendFlags};
        self.poll_send(cx, || {
            let mut control = SendAncillaryBuffer::default();
            let flags = SendFlags::MORE | SendFlags::NOSIGNAL;
            rustix::net::sendmsg(&self.tcp, bufs, &mut control, flags)
        })
    }

    /// Runs `send`, a non-blocking system call on the socket, once the
    /// socket is writable; again after readiness is lost to `EAGAIN`.
    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        mut send: impl FnMut() -> rustix::io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self
                .tcp
                .try_io(Interest::WRITABLE, || send().map_err(io::Error::from))
            {
                // Readiness was cleared; the next poll registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsyncRead for SendfileStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some((file, offset)) = self.windows.source(buf) {
            return self.poll_sendfile(cx, &file, offset, buf.len());
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    /// Writes the leading run of ordinary buffers with one `writev`, or, when
    /// the first buffer is a cache window, sends it with `sendfile`. Writing
    /// fewer bytes than offered is allowed; hyper calls again for the rest.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let bufs = match bufs.iter().position(|b| !b.is_empty()) {
            Some(first) => &bufs[first..],
            None => return Poll::Ready(Ok(0)),
        };
        if let Some((file, offset)) = self.windows.source(&bufs[0]) {
            return self.poll_sendfile(cx, &file, offset, bufs[0].len());
        }
        match bufs.iter().position(|b| self.windows.source(b).is_some()) {
            Some(window) => self.poll_write_before_window(cx, &bufs[..window]),
            None => Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Writes every buffer in order through `stream`, as hyper does:
    /// vectored writes, then again for what was not taken.
    async fn write_all_vectored(stream: &mut SendfileStream, parts: &[&[u8]]) {
        let (mut part, mut skip) = (0, 0);
        while part < parts.len() {
            let mut slices = vec![IoSlice::new(&parts[part][skip..])];
            slices.extend(parts[part + 1..].iter().map(|p| IoSlice::new(p)));
            let mut n = stream.write_vectored(&slices).await.unwrap();
            assert!(n > 0, "the stream took nothing");
            while part < parts.len() && n >= parts[part].len() - skip {
                n -= parts[part].len() - skip;
                (part, skip) = (part + 1, 0);
            }
            skip += n;
        }
        stream.flush().await.unwrap();
    }

    #[tokio::test]
    async fn windows_go_out_with_sendfile_and_other_bytes_as_written() {
        let content: Vec<u8> = (0..6 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&content).unwrap();
        let file = Arc::new(std::fs::File::open(tmp.path()).unwrap());
        let windows = Arc::new(Windows::default());
        let whole = crate::cache::mapped::window(&windows, &file, 0, content.len()).unwrap();
        // A part of a window, as a range request or a partial write leaves it.
        let part = whole.slice(1000..3 * 1024 * 1024 + 7);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let counter = IntCounter::new("sent", "sent").unwrap();
        let mut stream = SendfileStream::new(tcp, counter.clone(), windows);
        let head: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";
        let tail: &[u8] = b"\r\nthe end";
        write_all_vectored(&mut stream, &[head, &whole, tail, &part]).await;
        stream.shutdown().await.unwrap();
        drop(stream);

        let expected = [head, &content, tail, &content[1000..3 * 1024 * 1024 + 7]].concat();
        let got = reader.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes on the wire are the file's");
        assert_eq!(
            counter.get() as usize,
            whole.len() + part.len(),
            "every window byte went out with sendfile, nothing else did"
        );
    }
}
