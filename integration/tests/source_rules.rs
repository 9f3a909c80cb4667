//! Rules of the source that no compiler checks: every `unsafe` of the eBPF programs says why it
//! is sound, and doc comments point only at files inside the repository (a reader of the repo
//! alone must be able to follow them).

use std::path::{Path, PathBuf};

/// The repository root (this crate is `<root>/integration`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, `target/` left out.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// Test that every line of `datapath-bpf/src` that uses `unsafe` (a block or an attribute) is
/// preceded by a comment holding a `SAFETY:` line that says why it is sound.
#[test]
fn datapath_bpf_unsafe_has_safety_comment() {
    let mut files = Vec::new();
    rust_files(&root().join("datapath-bpf/src"), &mut files);
    assert!(!files.is_empty(), "no datapath-bpf sources found");
    let mut missing = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read source");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") || !code.contains("unsafe") {
                continue;
            }
            let explained = lines[..i]
                .iter()
                .rev()
                .map(|l| l.trim_start())
                .take_while(|l| l.starts_with("//") || l.starts_with("#[unsafe"))
                .any(|l| l.starts_with("// SAFETY: "));
            if !explained {
                missing.push(format!("{}:{}: {}", f.display(), i + 1, code));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "unsafe without a `// SAFETY:` comment:\n{}",
        missing.join("\n")
    );
}

/// Test that no `//!` or `///` comment of the workspace points outside the repository: no
/// `http(s)://` address other than a loopback one, and no relative path that does not name a
/// file of the repository.
#[test]
fn doc_comments_point_inside_the_repo() {
    let root = root().canonicalize().expect("canonical root");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read source");
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_start();
            if !(t.starts_with("//!") || t.starts_with("///")) {
                continue;
            }
            let url = ["http://", "https://"].iter().any(|s| {
                t.match_indices(s).any(|(at, _)| {
                    let rest = &t[at + s.len()..];
                    !(rest.starts_with("127.0.0.1") || rest.starts_with("localhost"))
                })
            });
            // A relative path must name a file of the repository, resolved from the
            // commented file's directory as a reader would.
            let climbs = t
                .split(|c: char| c.is_whitespace() || "()`[],;".contains(c))
                .filter(|w| w.starts_with("../"))
                .any(|w| {
                    let w = w.trim_end_matches(['.', ':']);
                    let target = f.parent().expect("file dir").join(w);
                    !target.canonicalize().is_ok_and(|t| t.starts_with(&root))
                });
            if url || climbs {
                bad.push(format!("{}:{}: {}", f.display(), i + 1, t));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "doc comments pointing outside the repository:\n{}",
        bad.join("\n")
    );
}
