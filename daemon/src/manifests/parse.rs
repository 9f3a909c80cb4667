//! Parsing one manifest file (YAML or JSON) into model objects.
//!
//! A YAML file holds documents separated by `---` lines; they are split here, before the
//! YAML parser runs, so that each error names its document and a line in the whole file,
//! and an empty document is skipped rather than failing the file. A JSON file holds one or
//! more concatenated values. Each document is an object or a list (`kind: List`, `PodList`,
//! …) whose `items` are objects; objects are dispatched on `apiVersion` and `kind`.

use std::path::Path;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Map, Value};
use tracing::{debug, warn};

use super::bounds::{self, MAX_DEPTH, MAX_FILE_BYTES};
use super::{manifest_format, Format, ManifestError, Position};
use crate::model::{Kind, Object};

/// Reads and parses the manifest file at `path`: JSON if its extension is `.json`, YAML
/// otherwise. Objects of kinds the model does not hold are skipped; the first problem
/// fails the whole file. Only a regular file within [`bounds`] is read.
///
/// [`bounds`]: super::bounds
pub fn parse_file(path: &Path) -> Result<Vec<Object>, ManifestError> {
    match bounds::read(path)? {
        Some((bytes, _)) => parse_bytes(path, &bytes),
        None => Err(ManifestError::Read {
            path: path.to_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        }),
    }
}

/// Parses the contents of the manifest file at `path`, as [`parse_file`] does. Contents
/// larger than [`MAX_FILE_BYTES`] or nested deeper than [`MAX_DEPTH`] are refused before
/// the parser runs.
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<Object>, ManifestError> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ManifestError::TooLarge {
            path: path.to_owned(),
            limit: MAX_FILE_BYTES,
        });
    }
    let mut parser = Parser {
        path,
        objects: Vec::new(),
    };
    match manifest_format(path) {
        Some(Format::Json) => parser.json(bytes)?,
        _ => parser.yaml(bytes)?,
    }
    Ok(parser.objects)
}

struct Parser<'a> {
    path: &'a Path,
    objects: Vec<Object>,
}

impl Parser<'_> {
    fn yaml(&mut self, bytes: &[u8]) -> Result<(), ManifestError> {
        let text = std::str::from_utf8(bytes).map_err(|source| ManifestError::NotUtf8 {
            path: self.path.to_owned(),
            source,
        })?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if let Some(line) = bounds::yaml_too_deep(text, MAX_DEPTH) {
            return Err(self.too_deep(line));
        }
        for (index, doc) in split_documents(text).into_iter().enumerate() {
            let position = Position {
                document: index + 1,
                item: None,
            };
            if is_blank(&doc.text) {
                continue;
            }
            let value: Value =
                serde_yaml_ng::from_str(&doc.text).map_err(|source| ManifestError::Yaml {
                    path: self.path.to_owned(),
                    position,
                    line: source.location().map(|l| l.line() + doc.first_line - 1),
                    source,
                })?;
            self.document(position, value)?;
        }
        Ok(())
    }

    fn json(&mut self, bytes: &[u8]) -> Result<(), ManifestError> {
        if let Some(line) = bounds::json_too_deep(bytes, MAX_DEPTH) {
            return Err(self.too_deep(line));
        }
        let stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
        for (index, value) in stream.enumerate() {
            let position = Position {
                document: index + 1,
                item: None,
            };
            let value = value.map_err(|source| ManifestError::Json {
                path: self.path.to_owned(),
                position,
                line: source.line(),
                source,
            })?;
            self.document(position, value)?;
        }
        Ok(())
    }

    /// One document: nothing, an object, or a list of objects.
    fn document(&mut self, position: Position, value: Value) -> Result<(), ManifestError> {
        let mut map = match value {
            Value::Null => return Ok(()),
            Value::Object(map) => map,
            other => return Err(self.not_an_object(position, &other)),
        };
        let kind = str_field(&map, "kind")
            .ok_or_else(|| ManifestError::MissingKind {
                path: self.path.to_owned(),
                position,
            })?
            .to_owned();
        let Some(item_kind) = kind
            .strip_suffix("List")
            .filter(|_| map.contains_key("items"))
        else {
            return self.object(position, kind, map);
        };
        let items = match map.remove("items") {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => Vec::new(),
            Some(_) => {
                return Err(ManifestError::BadListItems {
                    path: self.path.to_owned(),
                    position,
                    kind,
                })
            }
        };
        // Items of a typed list (`PodList`) may leave out their kind and apiVersion.
        let list_api_version = str_field(&map, "apiVersion").map(str::to_owned);
        for (index, item) in items.into_iter().enumerate() {
            let position = Position {
                item: Some(index + 1),
                ..position
            };
            let mut item = match item {
                Value::Object(item) => item,
                other => return Err(self.not_an_object(position, &other)),
            };
            if !item_kind.is_empty() {
                if str_field(&item, "kind").is_none() {
                    item.insert("kind".to_owned(), item_kind.into());
                }
                if let (None, Some(api)) = (str_field(&item, "apiVersion"), &list_api_version) {
                    item.insert("apiVersion".to_owned(), api.as_str().into());
                }
            }
            let kind = str_field(&item, "kind")
                .ok_or_else(|| ManifestError::MissingKind {
                    path: self.path.to_owned(),
                    position,
                })?
                .to_owned();
            self.object(position, kind, item)?;
        }
        Ok(())
    }

    /// One object, kept if the model holds its kind.
    fn object(
        &mut self,
        position: Position,
        kind_name: String,
        mut map: Map<String, Value>,
    ) -> Result<(), ManifestError> {
        let path = self.path;
        let Some(api_version) = str_field(&map, "apiVersion") else {
            return Err(ManifestError::MissingApiVersion {
                path: path.to_owned(),
                position,
                kind: kind_name,
            });
        };
        let Some(kind) = Kind::from_api(api_version, &kind_name) else {
            if Kind::ALL.iter().any(|k| k.as_str() == kind_name) {
                warn!(path = %path.display(), %position, api_version, kind = kind_name,
                    "skipping object: this apiVersion of the kind is not supported");
            } else {
                debug!(path = %path.display(), %position, api_version, kind = kind_name,
                    "skipping object of a kind the agent does not use");
            }
            return Ok(());
        };
        let name = map
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str);
        if name.is_none_or(str::is_empty) {
            return Err(ManifestError::MissingName {
                path: path.to_owned(),
                position,
                kind,
            });
        }
        keep_status(kind, &mut map);
        let decode_error = |source| ManifestError::Decode {
            path: path.to_owned(),
            position,
            kind,
            source,
        };
        let obj = decode(kind, Value::Object(map)).map_err(decode_error)?;
        self.objects.push(obj);
        Ok(())
    }

    fn too_deep(&self, line: usize) -> ManifestError {
        ManifestError::TooDeep {
            path: self.path.to_owned(),
            limit: MAX_DEPTH,
            line,
        }
    }

    fn not_an_object(&self, position: Position, value: &Value) -> ManifestError {
        let found = match value {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "a list",
            Value::Object(_) => "a mapping",
        };
        ManifestError::NotAnObject {
            path: self.path.to_owned(),
            position,
            found,
        }
    }
}

/// What of an object's `status` the agent reads: a Pod's addresses (its address as a
/// NetworkPolicy peer or a Service endpoint when it is not a pod of this node), phase and
/// conditions (whether it serves), as `kubectl get pods -o yaml` prints them; a Node's
/// addresses (its `InternalIP` is where other nodes route its pods). Everything else, and
/// every other kind's status, is dropped: it is the cluster's to report, not a manifest's.
fn keep_status(kind: Kind, map: &mut Map<String, Value>) {
    const POD_STATUS: &[&str] = &["phase", "podIP", "podIPs", "conditions"];
    const NODE_STATUS: &[&str] = &["addresses"];
    let keep = match kind {
        Kind::Pod => POD_STATUS,
        Kind::Node => NODE_STATUS,
        _ => &[],
    };
    if let Some(Value::Object(mut status)) = map.remove("status") {
        if !keep.is_empty() {
            status.retain(|k, _| keep.contains(&k.as_str()));
            map.insert("status".into(), Value::Object(status));
        }
    }
}

fn decode(kind: Kind, value: Value) -> Result<Object, serde_json::Error> {
    Ok(match kind {
        Kind::Namespace => Object::Namespace(serde_json::from_value::<Namespace>(value)?),
        Kind::Pod => Object::Pod(serde_json::from_value::<Pod>(value)?),
        Kind::Service => Object::Service(serde_json::from_value::<Service>(value)?),
        Kind::EndpointSlice => {
            Object::EndpointSlice(serde_json::from_value::<EndpointSlice>(value)?)
        }
        Kind::NetworkPolicy => {
            Object::NetworkPolicy(serde_json::from_value::<NetworkPolicy>(value)?)
        }
        Kind::Node => Object::Node(serde_json::from_value::<Node>(value)?),
    })
}

/// A non-empty string field of `map`.
fn str_field<'m>(map: &'m Map<String, Value>, key: &str) -> Option<&'m str> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// One YAML document of a file, with the 1-based line of the file it starts on.
struct Document {
    first_line: usize,
    text: String,
}

/// Splits a YAML stream at its `---` document markers. The marker itself is blanked so
/// that anything after it on the line stays in the document and columns are unchanged.
/// What comes before the first marker is a document only if it has content.
fn split_documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut current = Document {
        first_line: 1,
        text: String::new(),
    };
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if !is_marker(line, "---") {
            current.text.push_str(line);
            continue;
        }
        let next = Document {
            first_line: index + 1,
            text: format!("   {}", &line[3..]),
        };
        let previous = std::mem::replace(&mut current, next);
        if !docs.is_empty() || !is_blank(&previous.text) {
            docs.push(previous);
        }
    }
    docs.push(current);
    docs
}

/// Whether a YAML document has nothing but blank lines, comments, a `...` end marker and
/// directives (`%YAML 1.2`; a `%` at the start of a line cannot begin content).
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let trimmed = l.trim_start();
        trimmed.is_empty() || trimmed.starts_with('#') || l.starts_with('%') || is_marker(l, "...")
    })
}

/// Whether `line` is the document marker `marker` (`---` or `...`), alone or followed by
/// whitespace.
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.chars().next().is_none_or(char::is_whitespace))
}

#[cfg(test)]
mod tests;
