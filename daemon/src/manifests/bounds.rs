//! What a manifest file may be before it is parsed: at most [`MAX_FILE_BYTES`] long and nested
//! at most [`MAX_DEPTH`] deep, both checked without parsing.
//!
//! The YAML parser (libyaml's scanner, under serde_yaml_ng) keeps a stack of possible simple
//! keys that it walks for every token, so a document nested `d` deep costs `d²`: 100,000
//! levels of `- - - …` or `[[[…` (200 KB) took 43 s, during which no other manifest change
//! was applied. serde_yaml_ng's recursion limit (128) is checked only while deserializing,
//! after the scanner has run over the whole document, so it does not help. serde_json has a
//! cheap recursion limit (128), but the same pre-scan is used for both formats so that one
//! bound holds for every file.
//!
//! The YAML pre-scan is one linear pass over the text that over-approximates the nesting
//! from above: block indentation levels, compact `- `/`? ` indicators, and flow brackets
//! outside quoted scalars, comments and block scalars (`|`, `>`). Real manifests stay far
//! below the bound (a Deployment from `kubectl get -o yaml` is about 15 deep).
//!
//! [`read`] reads a file within these bounds, and only a regular file: a FIFO, a socket or
//! a device is never opened (a FIFO's reader would block until a writer comes), and the
//! file is opened non-blocking in case it was replaced by one since the `stat`.

use std::fs::{self, File, Metadata};
use std::io::{ErrorKind, Read as _};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

use super::ManifestError;

/// The largest manifest file read: the API server's limit on a request body (3 MiB).
pub const MAX_FILE_BYTES: u64 = 3 * 1024 * 1024;

/// The deepest nesting accepted: far above any real manifest, low enough that the parser's
/// quadratic cost stays negligible.
pub const MAX_DEPTH: usize = 100;

/// Checks that `path` is a regular file (following symlinks) within the size bound, without
/// opening it. `Ok(None)` if it does not exist.
pub fn stat(path: &Path) -> Result<Option<Metadata>, ManifestError> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == ErrorKind::NotFound => {
            // The entry is there but what it points to is not: a dangling symlink.
            return match fs::symlink_metadata(path) {
                Ok(_) => Err(ManifestError::NotAFile {
                    path: path.to_owned(),
                    what: "a dangling symlink",
                }),
                Err(_) => Ok(None),
            };
        }
        Err(source) => {
            return Err(ManifestError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    check(path, &meta)?;
    Ok(Some(meta))
}

/// Reads the regular file `path` whole if it is within the size bound; `Ok(None)` if it
/// does not exist. The metadata is the open file's, so it describes what was read.
pub fn read(path: &Path) -> Result<Option<(Vec<u8>, Metadata)>, ManifestError> {
    let read_error = |source| ManifestError::Read {
        path: path.to_owned(),
        source,
    };
    if stat(path)?.is_none() {
        return Ok(None);
    }
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(read_error(err)),
    };
    let meta = file.metadata().map_err(read_error)?;
    check(path, &meta)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // One byte more than the bound tells a file that grew past it since the `fstat`.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(path));
    }
    Ok(Some((bytes, meta)))
}

fn too_large(path: &Path) -> ManifestError {
    ManifestError::TooLarge {
        path: path.to_owned(),
        limit: MAX_FILE_BYTES,
    }
}

/// A regular file within the size bound.
fn check(path: &Path, meta: &Metadata) -> Result<(), ManifestError> {
    let kind = meta.file_type();
    let what = if kind.is_file() {
        if meta.len() > MAX_FILE_BYTES {
            return Err(too_large(path));
        }
        return Ok(());
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    };
    Err(ManifestError::NotAFile {
        path: path.to_owned(),
        what,
    })
}

/// The 1-based line where a YAML text first nests deeper than `max`, if it does.
pub fn yaml_too_deep(text: &str, max: usize) -> Option<usize> {
    let mut scan = YamlScan::default();
    for (index, line) in text.lines().enumerate() {
        if scan.line(line) > max {
            return Some(index + 1);
        }
    }
    None
}

/// The 1-based line where a JSON text first nests deeper than `max`, if it does.
pub fn json_too_deep(bytes: &[u8], max: usize) -> Option<usize> {
    let (mut depth, mut line, mut in_string, mut escaped) = (0usize, 1usize, false, false);
    for &b in bytes {
        if b == b'\n' {
            line += 1;
        }
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// The state of the YAML pre-scan between lines.
#[derive(Default)]
struct YamlScan {
    /// Indentations of the enclosing block nodes.
    indents: Vec<usize>,
    /// Open flow collections (`[`, `{`), which may span lines.
    flow: usize,
    /// Inside a quoted scalar that goes on past the line: its quote.
    quote: Option<u8>,
    /// Inside a block scalar: the indentation of the line that opened it (its content is
    /// every following line indented more, and blank lines).
    block_scalar: Option<usize>,
}

impl YamlScan {
    /// Scans one line; returns the nesting it reaches.
    fn line(&mut self, line: &str) -> usize {
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|&&b| b == b' ').count();
        let rest = &bytes[indent..];
        let blank = rest.iter().all(u8::is_ascii_whitespace);
        if let Some(parent) = self.block_scalar {
            if blank || indent > parent {
                return self.indents.len();
            }
            self.block_scalar = None;
        }
        if blank {
            return self.indents.len() + self.flow;
        }
        let mut i = 0;
        let mut compact = 0;
        if self.quote.is_none() && self.flow == 0 {
            if indent == 0 && (rest.starts_with(b"---") || rest.starts_with(b"...")) {
                self.indents.clear();
                return 0;
            }
            if rest[0] == b'#' {
                return self.indents.len();
            }
            while self.indents.last().is_some_and(|&top| top >= indent) {
                self.indents.pop();
            }
            self.indents.push(indent);
            // Compact nested block nodes on one line: `- - - x`, `? - x`.
            while i < rest.len()
                && matches!(rest[i], b'-' | b'?')
                && rest.get(i + 1).is_none_or(|&b| b == b' ' || b == b'\t')
            {
                compact += 1;
                i += 2;
                while i < rest.len() && rest[i] == b' ' {
                    i += 1;
                }
            }
        }
        let mut deepest = self.indents.len() + compact + self.flow;
        // Whether a node may start here (so that `[`, `{`, a quote, `|` or `>` opens one).
        let mut node_start = true;
        let mut prev_space = true;
        while i < rest.len() {
            let b = rest[i];
            i += 1;
            if let Some(q) = self.quote {
                match b {
                    b'\\' if q == b'"' => i += 1,
                    b'\'' if q == b'\'' && rest.get(i) == Some(&b'\'') => i += 1,
                    _ if b == q => {
                        self.quote = None;
                        node_start = false;
                    }
                    _ => {}
                }
                prev_space = false;
                continue;
            }
            match b {
                b'#' if prev_space => break,
                b'"' | b'\'' if node_start => self.quote = Some(b),
                b'[' | b'{' if node_start || self.flow > 0 => {
                    self.flow += 1;
                    deepest = deepest.max(self.indents.len() + compact + self.flow);
                    node_start = true;
                }
                b']' | b'}' if self.flow > 0 => {
                    self.flow -= 1;
                    node_start = false;
                }
                b',' if self.flow > 0 => node_start = true,
                b'|' | b'>' if node_start && self.flow == 0 => {
                    self.block_scalar = Some(indent);
                    break;
                }
                b' ' | b'\t' => {
                    // `key: value` and `- value`: a node starts after the indicator.
                    if i >= 2 && matches!(rest[i - 2], b':' | b'-' | b'?') {
                        node_start = true;
                    }
                }
                b'&' | b'!' if node_start => {
                    // An anchor or a tag before the node: skip it, the node still starts.
                    while i < rest.len() && rest[i] != b' ' {
                        i += 1;
                    }
                }
                b':' | b'-' | b'?' => {}
                _ => node_start = false,
            }
            prev_space = b == b' ' || b == b'\t';
        }
        deepest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that real manifests (a Deployment as kubectl prints it, flow collections, block
    /// scalars with brackets, quotes with brackets) are far from the depth bound.
    #[test]
    fn real_manifests_are_shallow() {
        let text = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations:
    note: "a [quoted { string"
    other: 'it''s [ fine'
spec:
  template:
    spec:
      containers:
      - name: app
        args: ["--a", "[b", {c: [d, e]}]
        command:
        - sh
        - -c
        - |
          if [ -f /x ]; then [ [ [ [ [ [ [ [
            echo "{"
          fi
        env:
        - name: X # a comment with [ [ [
          value: plain [ text
        ports:
        - containerPort: 80
"#;
        let mut scan = YamlScan::default();
        let deepest = text.lines().map(|l| scan.line(l)).max().unwrap();
        assert!((6..=15).contains(&deepest), "depth {deepest}");
        assert_eq!(scan.flow, 0);
        assert_eq!(yaml_too_deep(text, MAX_DEPTH), None);
    }

    /// Test that deep flow, compact block and indentation nesting are caught at the line
    /// where they pass the bound.
    #[test]
    fn deep_yaml_is_caught() {
        let flow = format!("a: {}1{}\n", "[".repeat(150), "]".repeat(150));
        assert_eq!(yaml_too_deep(&flow, MAX_DEPTH), Some(1));
        let compact = format!("x: 1\n{}x\n", "- ".repeat(150));
        assert_eq!(yaml_too_deep(&compact, MAX_DEPTH), Some(2));
        let mut indented = String::new();
        for d in 0..150 {
            indented.push_str(&format!("{}k{d}:\n", " ".repeat(d)));
        }
        assert_eq!(yaml_too_deep(&indented, MAX_DEPTH), Some(MAX_DEPTH + 1));
        let flow_lines = "a: [\n".to_owned() + &"[\n".repeat(150);
        assert!(yaml_too_deep(&flow_lines, MAX_DEPTH).is_some());
    }

    /// Test that JSON nesting is counted outside strings only.
    #[test]
    fn deep_json_is_caught() {
        let ok = r#"{"a": "[[[[[[[[[[[[", "b": [1, {"c": "\"[["}]}"#;
        assert_eq!(json_too_deep(ok.as_bytes(), 3), None);
        assert_eq!(json_too_deep(ok.as_bytes(), 2), Some(1));
        let deep = format!("\n{}{}", "[".repeat(101), "]".repeat(101));
        assert_eq!(json_too_deep(deep.as_bytes(), MAX_DEPTH), Some(2));
    }
}
