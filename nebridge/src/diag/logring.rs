//! The last log lines of `codervpn up`, kept in memory for `codervpn bugreport` (issue #19).
//! A `tracing_subscriber` fmt layer writes into it (no colours); the oldest lines go first.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

/// Lines kept by default.
pub const DEFAULT_LINES: usize = 2000;
/// Longest line kept; longer ones are cut.
const MAX_LINE: usize = 4096;

/// A bounded ring of log lines. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct LogRing {
    lines: Arc<Mutex<VecDeque<String>>>,
    cap: usize,
}

impl LogRing {
    pub fn new(cap: usize) -> Self {
        Self {
            lines: Arc::new(Mutex::new(VecDeque::with_capacity(cap.min(4096)))),
            cap: cap.max(1),
        }
    }

    pub fn push(&self, line: &str) {
        let mut line = line.trim_end().to_owned();
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" …");
        }
        let mut l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() == self.cap {
            l.pop_front();
        }
        l.push_back(line);
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        let l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().cloned().collect()
    }
}

/// One event's formatted text; pushed as lines when dropped.
pub struct RingWriter {
    ring: LogRing,
    buf: Vec<u8>,
}

impl io::Write for RingWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for RingWriter {
    fn drop(&mut self) {
        for line in String::from_utf8_lossy(&self.buf).lines() {
            self.ring.push(line);
        }
    }
}

impl<'a> MakeWriter<'a> for LogRing {
    type Writer = RingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        RingWriter {
            ring: self.clone(),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn keeps_the_newest_lines_and_cuts_long_ones() {
        let ring = LogRing::new(3);
        for i in 0..5 {
            let mut w = ring.make_writer();
            writeln!(w, "line {i}").unwrap();
        }
        assert_eq!(ring.lines(), vec!["line 2", "line 3", "line 4"]);
        ring.push(&"é".repeat(MAX_LINE));
        let last = ring.lines().pop().unwrap();
        assert!(last.len() <= MAX_LINE + 4 && last.ends_with(" …"));
    }
}
