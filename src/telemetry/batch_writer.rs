//! A log writer that never makes the logging thread wait on a `write(2)`
//! or wake another thread: each formatted line is appended to a shared
//! buffer, and a thread of its own sends the buffer on every
//! [`FLUSH_EVERY`] in one write (sooner when it passes [`FLUSH_AT`]).
//!
//! A writer that woke its thread per line (a channel per line) costs a
//! futex wake and a context switch per request, which is most of what an
//! access log line costs on a busy small hit. Past [`MAX_BUFFERED`] bytes
//! waiting (a stalled log reader), lines are dropped and counted rather
//! than requests slowed.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// A buffer this full wakes the writer thread at once.
pub const FLUSH_AT: usize = 256 * 1024;

/// Most bytes waiting; lines past it are dropped.
pub const MAX_BUFFERED: usize = 16 * 1024 * 1024;

struct Shared {
    buffer: Mutex<Vec<u8>>,
    dropped: AtomicU64,
    stop: AtomicBool,
}

/// The `MakeWriter` for the subscriber.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
    thread: std::thread::Thread,
}

/// Ends the writer thread when dropped, after a last flush.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread sending batches to `out`.
pub fn start(out: impl Write + Send + 'static) -> io::Result<(BatchWriter, FlushGuard)> {
    let shared = Arc::new(Shared {
        buffer: Mutex::new(Vec::with_capacity(FLUSH_AT)),
        dropped: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let flushing = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("lasti-log".into())
        .spawn(move || flush_loop(&flushing, out))?;
    let writer = BatchWriter {
        shared: Arc::clone(&shared),
        thread: thread.thread().clone(),
    };
    let guard = FlushGuard {
        shared,
        thread: Some(thread),
    };
    Ok((writer, guard))
}

fn flush_loop(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::with_capacity(FLUSH_AT);
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        std::mem::swap(
            &mut batch,
            &mut shared.buffer.lock().unwrap_or_else(|p| p.into_inner()),
        );
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let note = format!("lasti: {dropped} log lines dropped: the log reader is too slow\n");
            batch.extend_from_slice(note.as_bytes());
        }
        if !batch.is_empty() {
            // Nowhere to report a failing standard error; the lines are lost.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
        }
        if stopping {
            return;
        }
        std::thread::park_timeout(FLUSH_EVERY);
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Appends one write (a whole formatted line) to the buffer.
pub struct LineWriter<'a> {
    writer: &'a BatchWriter,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = &self.writer.shared;
        let mut buffer = shared.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if buffer.len() + line.len() > MAX_BUFFERED {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        let was_below = buffer.len() < FLUSH_AT;
        buffer.extend_from_slice(line);
        let full = was_below && buffer.len() >= FLUSH_AT;
        drop(buffer);
        if full {
            self.writer.thread.unpark();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { writer: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_in_order_and_dropping_the_guard_flushes() {
        let sink = Sink::default();
        let (writer, guard) = start(sink.clone()).unwrap();
        let mut expected = Vec::new();
        for n in 0..10_000 {
            let line = format!("line {n}\n");
            writer.make_writer().write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        drop(guard);
        assert!(*sink.0.lock().unwrap() == expected);
    }

    #[test]
    fn lines_reach_the_output_without_a_flush_from_the_caller() {
        let sink = Sink::default();
        let (writer, _guard) = start(sink.clone()).unwrap();
        writer.make_writer().write_all(b"soon\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&sink.0.lock().unwrap()[..], b"soon\n");
    }
}
