//! How every scenario reports: a readable table for people, and with `--json` one JSON
//! object as the last line for scripts (DESIGN §8 names its keys). Also the process
//! figures each scenario quotes (peak and current resident memory).

use std::fmt::Write as _;

/// A readable table: a title, then rows of (figure, value, note).
#[derive(Debug, Default)]
pub struct Table {
    title: String,
    rows: Vec<(String, String, String)>,
}

impl Table {
    /// An empty table under `title`.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; `note` says what the figure means or how it was measured.
    pub fn row(&mut self, figure: &str, value: impl Into<String>, note: &str) -> &mut Self {
        self.rows
            .push((figure.to_owned(), value.into(), note.to_owned()));
        self
    }

    /// The table as text, columns aligned, value column right-aligned.
    pub fn render(&self) -> String {
        let width = |pick: fn(&(String, String, String)) -> &String| {
            self.rows
                .iter()
                .map(|row| pick(row).chars().count())
                .max()
                .unwrap_or(0)
        };
        let (figure_width, value_width) = (width(|row| &row.0), width(|row| &row.1));
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        let _ = writeln!(out, "{}", "-".repeat(self.title.chars().count()));
        for (figure, value, note) in &self.rows {
            let line = format!("{figure:<figure_width$}  {value:>value_width$}  {note}");
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

/// Prints `value` as one compact JSON line (the last line of a `--json` run).
pub fn print_json_line(value: &serde_json::Value) {
    println!("{value}");
}

/// A number with thousands separators: `12_345_678` → `12,345,678`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    let tenths = bytes.saturating_mul(10) / (1024 * 1024);
    format!("{}.{} MiB", tenths / 10, tenths % 10)
}

/// A field of `/proc/self/status` in bytes (the file gives kB); `None` off Linux.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|line| line.split(':').next() == Some(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Peak resident set size of this process so far (`VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM")
}

/// Current resident set size of this process (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_numbers_read_well() {
        let mut table = Table::new("t");
        table.row("a", "1", "one").row("longer", "1,000", "");
        assert_eq!(table.render(), "t\n-\na           1  one\nlonger  1,000\n");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
        assert_eq!(mib(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
