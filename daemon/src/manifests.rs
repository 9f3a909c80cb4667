//! Standalone mode (`--manifests DIR`): the cluster state read from Kubernetes manifests in a
//! directory instead of from the API server, and followed while the agent runs.
//!
//! [`parse_file`] turns one YAML or JSON file into model [`Object`]s, within the bounds of
//! [`bounds`] (size, nesting, regular files only); [`ManifestDir`] keeps the cluster state
//! made of every file of a directory, and which file each object comes from ([`claims`]: the
//! first file to define an object keeps it, a duplicate waits); [`watch`] follows the
//! directory with inotify on a tokio task, re-reads only the files that changed and
//! publishes each new [`ClusterState`]. Objects of kinds the model does not hold are skipped;
//! of `status`, only a Pod's addresses, phase and conditions are kept (how a pod of another
//! node becomes a policy peer or an endpoint).
//!
//! [`Object`]: crate::model::Object
//! [`ClusterState`]: crate::model::ClusterState

pub mod bounds;
mod claims;
mod dir;
mod parse;
mod watch;

use std::fmt;
use std::path::{Path, PathBuf};

pub use dir::{ManifestDir, Rescan};
pub use parse::{parse_bytes, parse_file};
pub(crate) use watch::trim as trim_memory;
pub use watch::{watch, Watch};

use crate::model::{Kind, ModelError};

/// Where in a file a problem is: the document (1-based, counting empty ones) and, inside a
/// `List`, the item (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub document: usize,
    pub item: Option<usize>,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        Ok(())
    }
}

/// Errors reading manifests. Each names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest directory {}", path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest path {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not UTF-8 text", path.display())]
    NotUtf8 {
        path: PathBuf,
        #[source]
        source: std::str::Utf8Error,
    },
    #[error("invalid YAML in {}, {position}{}", path.display(), at_line(*line))]
    Yaml {
        path: PathBuf,
        position: Position,
        /// 1-based line in the file, when the parser reports one.
        line: Option<usize>,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("invalid JSON in {}, {position}{}", path.display(), at_line(Some(*line)))]
    Json {
        path: PathBuf,
        position: Position,
        /// 1-based line in the file.
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}, {position}: expected a Kubernetes object (a mapping), found {found}", path.display())]
    NotAnObject {
        path: PathBuf,
        position: Position,
        found: &'static str,
    },
    #[error("{}, {position}: object has no kind", path.display())]
    MissingKind { path: PathBuf, position: Position },
    #[error("{}, {position}: {kind} has no apiVersion", path.display())]
    MissingApiVersion {
        path: PathBuf,
        position: Position,
        kind: String,
    },
    #[error("{}, {position}: {kind} has no metadata.name", path.display())]
    MissingName {
        path: PathBuf,
        position: Position,
        kind: Kind,
    },
    #[error("{}, {position}: {kind} has `items` that is not a list", path.display())]
    BadListItems {
        path: PathBuf,
        position: Position,
        kind: String,
    },
    #[error("{}, {position}: invalid {kind}", path.display())]
    Decode {
        path: PathBuf,
        position: Position,
        kind: Kind,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {kind} rejected by the model", path.display())]
    Rejected {
        path: PathBuf,
        kind: Kind,
        #[source]
        source: ModelError,
    },
    #[error("{kind} {key} in {} is already defined {}: the first definition stays, this one is ignored until that one is gone", path.display(), defined_in(path, first))]
    Duplicate {
        /// The file of the definition ignored.
        path: PathBuf,
        /// The file of the definition that stays (the first seen; `path` itself when a
        /// file defines an object twice).
        first: PathBuf,
        kind: Kind,
        /// `namespace/name`, or `name` for cluster-scoped kinds.
        key: String,
    },
    #[error("{} is larger than {limit} bytes (the API server's limit on a request); not read", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{} nests deeper than {limit} levels at line {line}; not parsed", path.display())]
    TooDeep {
        path: PathBuf,
        limit: usize,
        line: usize,
    },
    #[error("{} is {what}, not a regular file; skipped", path.display())]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("cannot watch manifest directory {} for changes", path.display())]
    Watch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn defined_in(path: &Path, first: &Path) -> String {
    if path == first {
        "earlier in the same file".to_owned()
    } else {
        format!("in {}", first.display())
    }
}

/// What the manifest reader holds and what it refused, for `sluicectl status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStatus {
    /// Manifest files in the directory (by name), good or not.
    pub files: usize,
    /// Objects in the cluster state.
    pub objects: usize,
    /// Files whose current contents are not in the state (unreadable, too large, too deep,
    /// invalid, not a regular file); an invalid file keeps its last good objects.
    pub rejected_files: usize,
    /// Definitions ignored because another one of the same kind, namespace and name came
    /// first.
    pub duplicates: usize,
}

impl ManifestError {
    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ManifestError::ReadDir { path, .. }
            | ManifestError::NotADirectory { path }
            | ManifestError::Read { path, .. }
            | ManifestError::NotUtf8 { path, .. }
            | ManifestError::Yaml { path, .. }
            | ManifestError::Json { path, .. }
            | ManifestError::NotAnObject { path, .. }
            | ManifestError::MissingKind { path, .. }
            | ManifestError::MissingApiVersion { path, .. }
            | ManifestError::MissingName { path, .. }
            | ManifestError::BadListItems { path, .. }
            | ManifestError::Decode { path, .. }
            | ManifestError::Rejected { path, .. }
            | ManifestError::Duplicate { path, .. }
            | ManifestError::TooLarge { path, .. }
            | ManifestError::TooDeep { path, .. }
            | ManifestError::NotAFile { path, .. }
            | ManifestError::Watch { path, .. } => path,
        }
    }
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

/// The error and its sources, `: `-separated, for a log field.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        out.push_str(": ");
        out.push_str(&err.to_string());
        source = err.source();
    }
    out
}

/// The format of a manifest file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// The format of `path` if the directory loader should read it: `.yaml`, `.yml` or `.json`
/// (any case), and not a dotfile (editor swap files, `..data` of a ConfigMap volume).
/// Editor leftovers such as `foo.yaml~` or `foo.yaml.swp` fail the extension test.
pub fn manifest_format(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with('.') {
        return None;
    }
    let ext = Path::new(name).extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "yaml" | "yml" => Some(Format::Yaml),
        "json" => Some(Format::Json),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that only .yaml/.yml/.json files that are not dotfiles count as manifests.
    #[test]
    fn manifest_format_filters_editor_files() {
        for (name, want) in [
            ("pods.yaml", Some(Format::Yaml)),
            ("pods.YML", Some(Format::Yaml)),
            ("list.json", Some(Format::Json)),
            (".pods.yaml", None),
            (".pods.yaml.swp", None),
            ("pods.yaml~", None),
            ("pods.yaml.swp", None),
            ("#pods.yaml#", None),
            ("README.md", None),
            ("4913", None),
        ] {
            assert_eq!(manifest_format(Path::new(name)), want, "{name}");
        }
    }
}
