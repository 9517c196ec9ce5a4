//! A small line editor for the interactive shell, driven by the bytes a
//! client terminal sends over the channel (the gateway has no local tty).
//! It is pure: bytes in, events and terminal output out, so it is tested
//! without SSH.

/// What the user did with a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Enter on a line; the text is valid UTF-8 and within bounds.
    Line(String),
    /// Enter on a line that cannot be run (too long, binary, bad UTF-8).
    Rejected(String),
    /// Ctrl-C: the line was dropped.
    Cancel,
    /// Ctrl-D on an empty line.
    Eof,
}

/// Completes the word under the cursor, given the words before it.
pub type Completer = fn(&[&str]) -> Vec<String>;

pub struct LineEditor {
    buf: Vec<char>,
    cursor: usize,
    prompt: String,
    history: Vec<String>,
    /// Position while browsing history; `history.len()` is the line being typed.
    hist_pos: usize,
    saved: Vec<char>,
    width: usize,
    /// Rows above the cursor row that the current render occupies.
    cursor_row: usize,
    pending: Vec<u8>,
    esc: Option<Vec<u8>>,
    last_was_cr: bool,
    too_long: bool,
    bad_bytes: bool,
    max_len: usize,
    completer: Completer,
    out: Vec<u8>,
}

const HISTORY_MAX: usize = 500;

impl LineEditor {
    pub fn new(max_len: usize, width: usize, completer: Completer) -> Self {
        LineEditor {
            buf: Vec::new(),
            cursor: 0,
            prompt: String::new(),
            history: Vec::new(),
            hist_pos: 0,
            saved: Vec::new(),
            width: width.max(10),
            cursor_row: 0,
            pending: Vec::new(),
            esc: None,
            last_was_cr: false,
            too_long: false,
            bad_bytes: false,
            max_len,
            completer,
            out: Vec::new(),
        }
    }

    pub fn set_width(&mut self, width: usize) {
        self.width = width.max(10);
    }

    /// Starts a new line with `prompt` shown. Text typed ahead (pasted
    /// after an Enter that is still being handled) is kept and shown after
    /// the prompt, as a terminal's line discipline would.
    pub fn start(&mut self, prompt: &str) {
        self.prompt = prompt.to_string();
        self.cursor_row = 0;
        self.hist_pos = self.history.len();
        if self.buf.is_empty() {
            self.out.extend_from_slice(prompt.as_bytes());
        } else {
            self.cursor = self.buf.len();
            self.refresh();
        }
    }

    /// Forgets the line being edited (after Enter or Ctrl-C).
    fn clear_line(&mut self) {
        self.buf.clear();
        self.cursor = 0;
        self.cursor_row = 0;
        self.too_long = false;
        self.bad_bytes = false;
    }

    /// Output for the terminal produced so far.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn add_history(&mut self, line: &str) {
        if line.trim().is_empty() || self.history.last().is_some_and(|l| l == line) {
            return;
        }
        self.history.push(line.to_string());
        if self.history.len() > HISTORY_MAX {
            self.history.remove(0);
        }
    }

    /// Feeds bytes from the client; returns the events they complete.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        for &b in data {
            if let Some(ev) = self.byte(b) {
                events.push(ev);
            }
        }
        events
    }

    fn byte(&mut self, b: u8) -> Option<Event> {
        if let Some(seq) = &mut self.esc {
            seq.push(b);
            let seq = seq.clone();
            return self.escape(&seq);
        }
        let was_cr = std::mem::replace(&mut self.last_was_cr, false);
        if !self.pending.is_empty() || b >= 0x80 {
            return self.utf8(b);
        }
        match b {
            b'\r' => {
                self.last_was_cr = true;
                return Some(self.enter());
            }
            b'\n' if was_cr => {}
            b'\n' => return Some(self.enter()),
            0x03 => {
                self.out.extend_from_slice(b"^C\r\n");
                self.clear_line();
                return Some(Event::Cancel);
            }
            0x04 => {
                if self.buf.is_empty() {
                    return Some(Event::Eof);
                }
                if self.cursor < self.buf.len() {
                    self.buf.remove(self.cursor);
                    self.refresh();
                }
            }
            0x7f | 0x08 => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    self.buf.remove(self.cursor);
                    self.refresh();
                }
            }
            0x15 => {
                self.buf.drain(..self.cursor);
                self.cursor = 0;
                self.refresh();
            }
            0x17 => {
                let mut start = self.cursor;
                while start > 0 && self.buf[start - 1] == ' ' {
                    start -= 1;
                }
                while start > 0 && self.buf[start - 1] != ' ' {
                    start -= 1;
                }
                self.buf.drain(start..self.cursor);
                self.cursor = start;
                self.refresh();
            }
            0x01 => {
                self.cursor = 0;
                self.refresh();
            }
            0x05 => {
                self.cursor = self.buf.len();
                self.refresh();
            }
            0x0b => {
                self.buf.truncate(self.cursor);
                self.refresh();
            }
            0x0c => {
                self.out.extend_from_slice(b"\x1b[H\x1b[2J");
                self.cursor_row = 0;
                self.out.extend_from_slice(self.prompt.as_bytes());
                self.refresh();
            }
            b'\t' => self.complete(),
            0x1b => self.esc = Some(Vec::new()),
            0x00 => self.bad_bytes = true,
            0x20..=0x7e => self.insert(b as char),
            _ => self.out.push(0x07),
        }
        None
    }

    fn utf8(&mut self, b: u8) -> Option<Event> {
        self.pending.push(b);
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                let c = s.chars().next();
                self.pending.clear();
                if let Some(c) = c {
                    self.insert(c);
                }
            }
            Err(e) if e.error_len().is_some() => {
                self.pending.clear();
                self.bad_bytes = true;
            }
            Err(_) if self.pending.len() >= 4 => {
                self.pending.clear();
                self.bad_bytes = true;
            }
            Err(_) => {}
        }
        None
    }

    fn escape(&mut self, seq: &[u8]) -> Option<Event> {
        // CSI (ESC [) and SS3 (ESC O) sequences end with a byte in 0x40..=0x7e.
        let done = match seq {
            [b'[' | b'O'] => false,
            [b'[' | b'O', .., last] => (0x40..=0x7e).contains(last),
            [_] => true,
            _ => true,
        };
        if !done {
            if seq.len() > 16 {
                self.esc = None;
            }
            return None;
        }
        self.esc = None;
        match seq {
            b"[D" | b"OD" if self.cursor > 0 => {
                self.cursor -= 1;
                self.refresh();
            }
            b"[C" | b"OC" if self.cursor < self.buf.len() => {
                self.cursor += 1;
                self.refresh();
            }
            b"[A" | b"OA" => self.history_move(-1),
            b"[B" | b"OB" => self.history_move(1),
            b"[H" | b"OH" | b"[1~" => {
                self.cursor = 0;
                self.refresh();
            }
            b"[F" | b"OF" | b"[4~" => {
                self.cursor = self.buf.len();
                self.refresh();
            }
            b"[3~" if self.cursor < self.buf.len() => {
                self.buf.remove(self.cursor);
                self.refresh();
            }
            _ => {}
        }
        None
    }

    fn history_move(&mut self, delta: isize) {
        let len = self.history.len();
        let next = self.hist_pos as isize + delta;
        if next < 0 || next > len as isize {
            self.out.push(0x07);
            return;
        }
        if self.hist_pos == len {
            self.saved = self.buf.clone();
        }
        self.hist_pos = next as usize;
        self.buf = if self.hist_pos == len {
            self.saved.clone()
        } else {
            self.history[self.hist_pos].chars().collect()
        };
        self.cursor = self.buf.len();
        self.refresh();
    }

    fn insert(&mut self, c: char) {
        if self.too_long {
            return;
        }
        let bytes: usize = self.buf.iter().map(|c| c.len_utf8()).sum();
        if bytes + c.len_utf8() > self.max_len {
            // Keep swallowing a runaway paste, and refuse it at Enter.
            self.too_long = true;
            return;
        }
        self.buf.insert(self.cursor, c);
        self.cursor += 1;
        if self.cursor == self.buf.len()
            && !(self.prompt.chars().count() + self.cursor).is_multiple_of(self.width)
        {
            // Typing at the end: echo the character instead of redrawing.
            let mut tmp = [0u8; 4];
            self.out
                .extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            self.cursor_row = (self.prompt.chars().count() + self.cursor) / self.width;
        } else {
            self.refresh();
        }
    }

    fn complete(&mut self) {
        let before: String = self.buf[..self.cursor].iter().collect();
        let mut words: Vec<&str> = before.split_whitespace().collect();
        let partial = if before.ends_with(' ') || before.is_empty() {
            ""
        } else {
            words.pop().unwrap_or("")
        };
        let candidates: Vec<String> = (self.completer)(&words)
            .into_iter()
            .filter(|c| c.starts_with(partial))
            .collect();
        match candidates.as_slice() {
            [] => self.out.push(0x07),
            [one] => {
                let rest: String = one[partial.len()..].chars().chain([' ']).collect();
                self.insert_completion(&rest);
            }
            many => {
                let common = common_prefix(many);
                if common.len() > partial.len() {
                    self.insert_completion(&common[partial.len()..]);
                } else {
                    self.move_to_end();
                    self.out.extend_from_slice(b"\r\n");
                    self.out.extend_from_slice(many.join("  ").as_bytes());
                    self.out.extend_from_slice(b"\r\n");
                    self.cursor_row = 0;
                    self.out.extend_from_slice(self.prompt.as_bytes());
                    self.refresh();
                }
            }
        }
    }

    /// Inserts completed text at the cursor, held to the line's limit like
    /// typed text: a completion that does not fit is refused with a bell.
    fn insert_completion(&mut self, text: &str) {
        let bytes: usize = self.buf.iter().map(|c| c.len_utf8()).sum();
        if self.too_long || bytes + text.len() > self.max_len {
            self.out.push(0x07);
            return;
        }
        for c in text.chars() {
            self.buf.insert(self.cursor, c);
            self.cursor += 1;
        }
        self.refresh();
    }

    fn move_to_end(&mut self) {
        let total = self.prompt.chars().count() + self.buf.len();
        let end_row = total / self.width;
        if end_row > self.cursor_row {
            self.out
                .extend_from_slice(format!("\x1b[{}B", end_row - self.cursor_row).as_bytes());
        }
        self.cursor_row = end_row;
    }

    fn enter(&mut self) -> Event {
        self.move_to_end();
        self.out.extend_from_slice(b"\r\n");
        let line: String = self.buf.iter().collect();
        let (bad_bytes, too_long) = (self.bad_bytes, self.too_long);
        self.clear_line();
        if bad_bytes {
            return Event::Rejected(
                "the line contained NUL or invalid UTF-8 bytes; nothing was run".into(),
            );
        }
        if too_long {
            return Event::Rejected(format!(
                "line too long (at most {} bytes); nothing was run",
                self.max_len
            ));
        }
        Event::Line(line)
    }

    /// Redraws prompt and line, wrapping at the terminal width.
    fn refresh(&mut self) {
        let plen = self.prompt.chars().count();
        if self.cursor_row > 0 {
            self.out
                .extend_from_slice(format!("\x1b[{}A", self.cursor_row).as_bytes());
        }
        self.out.extend_from_slice(b"\r\x1b[J");
        self.out.extend_from_slice(self.prompt.as_bytes());
        let line: String = self.buf.iter().collect();
        self.out.extend_from_slice(line.as_bytes());
        let total = plen + self.buf.len();
        let mut end_row = total / self.width;
        if total > 0 && total.is_multiple_of(self.width) {
            // Terminals defer the wrap at the last column; force it.
            self.out.extend_from_slice(b"\r\n");
        } else if total.is_multiple_of(self.width) {
            end_row = 0;
        }
        let pos = plen + self.cursor;
        let (row, col) = (pos / self.width, pos % self.width);
        if end_row > row {
            self.out
                .extend_from_slice(format!("\x1b[{}A", end_row - row).as_bytes());
        }
        self.out.push(b'\r');
        if col > 0 {
            self.out
                .extend_from_slice(format!("\x1b[{col}C").as_bytes());
        }
        self.cursor_row = row;
    }
}

/// The longest common prefix of `words`, whole characters only.
fn common_prefix(words: &[String]) -> String {
    let Some(first) = words.first() else {
        return String::new();
    };
    let mut n = first.chars().count();
    for w in &words[1..] {
        n = n.min(
            first
                .chars()
                .zip(w.chars())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    first.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(before: &[&str]) -> Vec<String> {
        match before {
            [] => vec!["cluster".into(), "clear".into(), "member".into()],
            ["member"] => vec!["add".into(), "list".into()],
            _ => vec![],
        }
    }

    fn ed() -> LineEditor {
        let mut e = LineEditor::new(4096, 80, words);
        e.start("> ");
        e
    }

    fn line(e: &mut LineEditor, input: &[u8]) -> Vec<Event> {
        e.feed(input)
    }

    #[test]
    fn typing_and_enter() {
        let mut e = ed();
        assert_eq!(
            line(&mut e, b"whoami\r"),
            vec![Event::Line("whoami".into())]
        );
        e.start("> ");
        assert_eq!(
            line(&mut e, b"a\r\nb\n"),
            vec![Event::Line("a".into()), Event::Line("b".into())]
        );
    }

    #[test]
    fn editing_keys() {
        let mut e = ed();
        assert_eq!(line(&mut e, b"abc\x7fd\r"), vec![Event::Line("abd".into())]);
        e.start("> ");
        assert_eq!(
            line(&mut e, b"hello world\x17there\r"),
            vec![Event::Line("hello there".into())]
        );
        e.start("> ");
        assert_eq!(
            line(&mut e, b"junk\x15ok\r"),
            vec![Event::Line("ok".into())]
        );
        e.start("> ");
        assert_eq!(
            line(&mut e, b"ac\x1b[Db\r"),
            vec![Event::Line("abc".into())]
        );
        e.start("> ");
        assert_eq!(
            line(&mut e, b"bc\x1b[H\x01a\x1b[F!\r"),
            vec![Event::Line("abc!".into())]
        );
    }

    #[test]
    fn history_up_and_down() {
        let mut e = ed();
        e.add_history("first");
        e.add_history("second");
        e.start("> ");
        assert_eq!(
            line(&mut e, b"\x1b[A\x1b[A\r"),
            vec![Event::Line("first".into())]
        );
        e.start("> ");
        assert_eq!(
            line(&mut e, b"new\x1b[A\x1b[B\r"),
            vec![Event::Line("new".into())]
        );
    }

    #[test]
    fn ctrl_c_and_ctrl_d() {
        let mut e = ed();
        assert_eq!(line(&mut e, b"abc\x03"), vec![Event::Cancel]);
        e.start("> ");
        assert_eq!(line(&mut e, b"\x04"), vec![Event::Eof]);
        e.start("> ");
        assert_eq!(line(&mut e, b"ab\x01\x04\r"), vec![Event::Line("b".into())]);
    }

    #[test]
    fn tab_completes_command_words() {
        let mut e = ed();
        assert_eq!(
            line(&mut e, b"mem\tl\t\r"),
            vec![Event::Line("member list ".into())]
        );
        e.start("> ");
        e.take_output();
        assert_eq!(line(&mut e, b"cl\t"), vec![]);
        let out = String::from_utf8(e.take_output()).unwrap();
        assert!(out.contains("cluster  clear"), "{out:?}");
    }

    #[test]
    fn utf8_is_kept_and_garbage_rejected() {
        let mut e = ed();
        assert_eq!(
            line(&mut e, "héllo\r".as_bytes()),
            vec![Event::Line("héllo".into())]
        );
        e.start("> ");
        assert!(matches!(
            line(&mut e, b"a\xff\xfeb\r")[0],
            Event::Rejected(_)
        ));
        e.start("> ");
        assert!(matches!(line(&mut e, b"a\x00b\r")[0], Event::Rejected(_)));
        e.start("> ");
        assert_eq!(line(&mut e, b"ok\r"), vec![Event::Line("ok".into())]);
    }

    #[test]
    fn over_long_lines_are_rejected_whole() {
        let mut e = LineEditor::new(8, 80, words);
        e.start("> ");
        let ev = line(&mut e, b"0123456789\r");
        assert!(
            matches!(&ev[0], Event::Rejected(m) if m.contains("too long")),
            "{ev:?}"
        );
    }

    #[test]
    fn narrow_terminals_wrap() {
        let mut e = LineEditor::new(4096, 10, words);
        e.start("> ");
        line(&mut e, b"0123456789abc");
        e.take_output();
        line(&mut e, b"\x1b[H");
        let out = String::from_utf8(e.take_output()).unwrap();
        assert!(
            out.starts_with("\x1b[1A"),
            "moves up over the wrapped row: {out:?}"
        );
    }
}
