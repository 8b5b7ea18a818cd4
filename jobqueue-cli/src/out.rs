//! How the command prints: tables for people, JSON for scripts.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Prints tables for people and JSON for scripts.
pub(crate) struct Out {
    pub(crate) json: bool,
}

impl Out {
    pub(crate) fn table(&self, headers: &[&str], rows: Vec<Vec<String>>, json: Value) {
        if self.json {
            println!("{json}");
            return;
        }
        // A stored value may be a megabyte long: cells show its start.
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .map(|row| row.into_iter().map(|cell| clip(&cell)).collect())
            .collect();
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("{}", padded.join("  ").trim_end());
        };
        line(headers.iter().map(|h| h.to_string()).collect());
        for row in rows {
            line(row);
        }
    }

    pub(crate) fn done(&self, message: &str) {
        if self.json {
            println!("{}", json!({ "ok": true, "message": message }));
        } else {
            println!("{message}");
        }
    }
}

/// The longest cell a table shows, in characters.
const MAX_CELL: usize = 120;

/// `cell` on one line, cut to [`MAX_CELL`] characters.
fn clip(cell: &str) -> String {
    let line: String = cell
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_CELL + 1)
        .collect();
    if line.chars().count() > MAX_CELL {
        let cut: String = line.chars().take(MAX_CELL - 1).collect();
        format!("{cut}…")
    } else {
        line
    }
}

/// Seconds since the Unix epoch (0 before it).
pub(crate) fn seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
