//! Log lines to stdout without a `write(2)` per line: formatted lines are
//! appended to a bounded in-memory buffer, and one thread writes what has
//! gathered at most every [`FLUSH_INTERVAL`].
//!
//! Why not a channel to a writer thread (`tracing-appender`'s non-blocking
//! writer): that wakes the writer for each line when it is idle, which under
//! moderate load is each line — the thread hand-off this removes. Here a
//! line wakes the writer only if the buffer was empty and the writer
//! asleep; lines that arrive meanwhile join the next write.
//!
//! Bounded: past [`MAX_BUFFERED`] bytes waiting (stdout blocked or far
//! behind), lines are dropped and counted ([`dropped`], exported as
//! `valet_log_lines_dropped_total`) rather than block calls or grow without
//! limit. The audit log, not this, is the record of every credential use.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits in the buffer (while the writer keeps up).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(5);
/// Bytes the buffer holds before lines are dropped.
pub const MAX_BUFFERED: usize = 8 << 20;

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped because the buffer was full, since start.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The writer the log layer formats into; cheap to clone.
#[derive(Clone)]
pub struct Lines {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Signalled when the writer has written everything and stopped.
    done: Condvar,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    writer_asleep: bool,
    closing: bool,
    closed: bool,
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lines")
    }
}

impl Lines {
    /// Starts the writer thread, writing to `out` (stdout in production).
    pub fn start(out: impl std::io::Write + Send + 'static) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("valet-log".into())
            .spawn(move || writer.run(out))
            .expect("the log writer thread starts");
        Self { shared }
    }

    /// Writes out everything buffered and stops the writer, waiting at most
    /// `within`. Lines formatted later are written at once, unbuffered.
    pub fn close(&self, within: Duration) {
        let mut state = self.shared.lock();
        state.closing = true;
        self.shared.wake.notify_one();
        let deadline = std::time::Instant::now() + within;
        while !state.closed {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            state = self
                .shared
                .done
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // The writer's own thread: the pause gathers lines into one write, and
    // blocks no runtime worker.
    #[allow(clippy::disallowed_methods)]
    fn run(&self, mut out: impl std::io::Write) {
        let mut batch = Vec::new();
        loop {
            {
                let mut state = self.lock();
                while state.buf.is_empty() && !state.closing {
                    state.writer_asleep = true;
                    state = self.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
                std::mem::swap(&mut batch, &mut state.buf);
                if batch.is_empty() && state.closing {
                    state.closed = true;
                    self.done.notify_all();
                    return;
                }
            }
            // A failed write (stdout closed) loses this batch, as a direct
            // write would have.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            std::thread::sleep(FLUSH_INTERVAL);
        }
    }

    fn push(&self, line: &[u8]) {
        let mut state = self.lock();
        if state.closed {
            drop(state);
            let _ = std::io::stdout().write_all(line);
            return;
        }
        if state.buf.len() + line.len() > MAX_BUFFERED {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.buf.extend_from_slice(line);
        if state.writer_asleep {
            state.writer_asleep = false;
            self.wake.notify_one();
        }
    }
}

/// One event's writer: the formatter writes the line into it, and it is
/// appended to the buffer whole when dropped.
#[allow(missing_debug_implementations)]
pub struct LineWriter {
    shared: Arc<Shared>,
    line: Vec<u8>,
}

impl std::io::Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.shared.push(&self.line);
        }
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: self.shared.clone(),
            line: Vec::with_capacity(512),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Memory;

    #[test]
    fn every_line_arrives_whole_and_in_order_by_close() {
        let sink = Memory::default();
        let lines = Lines::start(sink.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let lines = lines.clone();
                std::thread::spawn(move || {
                    for n in 0..1000 {
                        let mut w = lines.make_writer();
                        writeln!(w, "{{\"t\":{t},\"n\":{n}}}").unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        lines.close(Duration::from_secs(10));
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let got: Vec<&str> = text.lines().collect();
        assert_eq!(got.len(), 4000);
        for t in 0..4 {
            let mine: Vec<&str> = got
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("{{\"t\":{t},")))
                .collect();
            let expected: Vec<String> = (0..1000).map(|n| format!("{{\"t\":{t},\"n\":{n}}}")).collect();
            assert_eq!(mine, expected);
        }
    }
}
