//! Maps the lines of a TOML text to dotted key paths (`server.listen`,
//! `routes[1].upstream`), both ways: TOML's own errors give a byte offset and
//! we want the key; validation errors give a key and we want the line.
//!
//! It reads the text line by line, the way people write config files (one
//! `key = value` or table header per line). Where that guess fails it finds
//! a nearby line or none, never a wrong file.

use std::collections::HashMap;

#[derive(Debug)]
pub(crate) struct KeyLines {
    /// (1-based line, key path), in file order.
    entries: Vec<(usize, String)>,
}

impl KeyLines {
    pub(crate) fn scan(text: &str) -> KeyLines {
        let mut entries = Vec::new();
        let mut table = String::new();
        let mut array_counts: HashMap<String, usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let number = index + 1;
            if let Some(rest) = line.strip_prefix("[[") {
                let name = rest.split("]]").next().unwrap_or_default().trim().to_owned();
                let count = array_counts.entry(name.clone()).or_insert(0);
                table = format!("{name}[{count}]");
                *count += 1;
                entries.push((number, table.clone()));
            } else if let Some(rest) = line.strip_prefix('[') {
                table = rest.split(']').next().unwrap_or_default().trim().to_owned();
                entries.push((number, table.clone()));
            } else if !line.starts_with('#')
                && let Some((key, _)) = line.split_once('=')
            {
                let key = key.trim().trim_matches('"');
                let path = if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") };
                entries.push((number, path));
            }
        }
        KeyLines { entries }
    }

    /// The line that sets `key`, or else the nearest enclosing key or table.
    pub(crate) fn line_of(&self, key: &str) -> Option<usize> {
        let mut wanted = key;
        loop {
            if let Some((line, _)) = self.entries.iter().find(|(_, path)| path == wanted) {
                return Some(*line);
            }
            wanted = &wanted[..wanted.rfind(['.', '['])?];
        }
    }

    /// The key being set at `line` (or the closest one above it) and its line.
    pub(crate) fn key_at_line(&self, line: usize) -> Option<&str> {
        self.entries.iter().take_while(|(number, _)| *number <= line).last().map(|(_, path)| path.as_str())
    }
}

/// The 1-based line holding byte `offset` of `text`.
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[server]
listen = "0.0.0.0:8443"

[[routes]]
name = "a"

[[routes]]
name = "b"
inject_headers = { "x-user-id" = "sub" }
"#;

    #[test]
    fn finds_lines_of_keys_and_tables() {
        let lines = KeyLines::scan(TEXT);
        assert_eq!(lines.line_of("server.listen"), Some(3));
        assert_eq!(lines.line_of("routes[1].name"), Some(9));
        assert_eq!(lines.line_of("routes[1].inject_headers.x-user-id"), Some(10));
        assert_eq!(lines.line_of("routes[1].upstream"), Some(8));
        assert_eq!(lines.line_of("providers[0].issuer"), None);
    }

    #[test]
    fn names_the_key_at_a_line() {
        let lines = KeyLines::scan(TEXT);
        assert_eq!(lines.key_at_line(3), Some("server.listen"));
        assert_eq!(lines.key_at_line(9), Some("routes[1].name"));
        assert_eq!(line_at(TEXT, TEXT.find("listen").unwrap()), 3);
    }
}
