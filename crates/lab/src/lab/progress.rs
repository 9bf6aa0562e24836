//! How `lab up` and `lab down` say how far they got: a step line per phase and, for
//! phases that count (nodes, agents, pods, devices converged), ticks. [`Terminal`]
//! draws the ticks as one redrawn bar on a TTY (`[=====>    ] 37/100 nodes · 12 s`)
//! and prints only the step lines, each phase's last count and its time otherwise (logs,
//! tests, CI); [`bar`] is the pure drawing.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Where progress goes. Any `FnMut(&str)` is one: it gets the step lines and ignores
/// the ticks.
pub trait Progress {
    /// A step line (`[5/9] starting 100 agents`).
    fn step(&mut self, line: &str);
    /// `done` of `total` `what` (e.g. `nodes`) are finished in the current step.
    fn tick(&mut self, _what: &str, _done: usize, _total: usize) {}
}

impl<F: FnMut(&str)> Progress for F {
    fn step(&mut self, line: &str) {
        self(line)
    }
}

/// Width of the bar between the brackets.
pub const BAR_WIDTH: usize = 30;

/// `[=====>    ] 37/100 nodes · 12 s`: the bar `width` wide, the count and the time
/// since the command started.
pub fn bar(done: usize, total: usize, what: &str, elapsed: Duration, width: usize) -> String {
    let total_w = total.max(1);
    let filled = (done.min(total_w) * width) / total_w;
    let mut s = String::with_capacity(width + 32);
    s.push('[');
    for i in 0..width {
        s.push(if i < filled {
            '='
        } else if i == filled && done < total {
            '>'
        } else {
            ' '
        });
    }
    s.push_str(&format!(
        "] {done}/{total} {what} · {} s",
        elapsed.as_secs()
    ));
    s
}

/// Progress on stderr: a redrawn bar when stderr is a terminal, else plain lines.
pub struct Terminal {
    start: Instant,
    tty: bool,
    /// The phase's last tick not printed yet (plain mode) or drawn (TTY).
    pending: Option<(String, usize, usize)>,
    phase_start: Instant,
    last_draw: Option<Instant>,
}

impl Default for Terminal {
    fn default() -> Terminal {
        Terminal::new(std::io::stderr().is_terminal())
    }
}

impl Terminal {
    /// A reporter drawing bars (`tty`) or printing plain lines.
    pub fn new(tty: bool) -> Terminal {
        let now = Instant::now();
        Terminal {
            start: now,
            tty,
            pending: None,
            phase_start: now,
            last_draw: None,
        }
    }

    /// Ends the current phase's bar (TTY) or prints its last count and time (plain).
    pub fn finish(&mut self) {
        let Some((what, done, total)) = self.pending.take() else {
            return;
        };
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = writeln!(
                err,
                "\r\x1b[2K  {}",
                bar(done, total, &what, self.start.elapsed(), BAR_WIDTH)
            );
        } else {
            let _ = writeln!(
                err,
                "  {done}/{total} {what} in {:.1} s",
                self.phase_start.elapsed().as_secs_f64()
            );
        }
        self.last_draw = None;
    }
}

impl Progress for Terminal {
    fn step(&mut self, line: &str) {
        self.finish();
        self.phase_start = Instant::now();
        eprintln!("{line}");
    }

    fn tick(&mut self, what: &str, done: usize, total: usize) {
        self.pending = Some((what.to_string(), done, total));
        if !self.tty {
            return;
        }
        // Redraw at most every 100 ms, and always the last tick of a count.
        let now = Instant::now();
        if done < total
            && self
                .last_draw
                .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        self.last_draw = Some(now);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K  {}",
            bar(done, total, what, self.start.elapsed(), BAR_WIDTH)
        );
        let _ = err.flush();
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars() {
        let s = Duration::from_secs(12);
        assert_eq!(
            bar(37, 100, "nodes", s, 10),
            "[===>      ] 37/100 nodes · 12 s"
        );
        assert_eq!(bar(0, 4, "pods", s, 4), "[>   ] 0/4 pods · 12 s");
        assert_eq!(bar(4, 4, "pods", s, 4), "[====] 4/4 pods · 12 s");
        // More than the total (never expected) stays full; a total of 0 is empty.
        assert_eq!(bar(5, 4, "pods", s, 4), "[====] 5/4 pods · 12 s");
        assert_eq!(bar(0, 0, "pods", s, 4), "[    ] 0/0 pods · 12 s");
    }

    #[test]
    fn closures_get_the_steps_only() {
        let mut lines = Vec::new();
        {
            let mut f = |l: &str| lines.push(l.to_string());
            let p: &mut dyn Progress = &mut f;
            p.step("[1/9] a");
            p.tick("nodes", 1, 2);
            p.step("[2/9] b");
        }
        assert_eq!(lines, ["[1/9] a", "[2/9] b"]);
    }
}
