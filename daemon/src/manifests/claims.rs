//! Which file each object of the cluster state comes from, and what happens when two
//! definitions of one object (same kind, namespace and name) exist.
//!
//! The first definition seen keeps its place: files are read in path order at start, then
//! in the order their changes arrive, and documents in file order. A later definition is a
//! duplicate: reported once (naming both files), counted, and kept aside, not applied. When
//! the definition in place goes (its file deleted, or rewritten without it), the oldest
//! duplicate waiting takes over. Two definitions taking turns would make a Service's
//! endpoints flap; keeping the first is what the API server does with a second `create`.
//!
//! Only the objects waiting as duplicates are held here; the objects in place live in the
//! cluster state alone, and each file is described by its keys.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tracing::info;

use super::ManifestError;
use crate::model::{ClusterState, Kind, Object};

/// An object's identity: its kind, namespace (`None` for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    kind: Kind,
    namespace: Option<String>,
    name: String,
}

impl Key {
    fn of(obj: &Object) -> Self {
        Key {
            kind: obj.kind(),
            namespace: obj.namespace().map(str::to_owned),
            name: obj.name().unwrap_or_default().to_owned(),
        }
    }

    /// `namespace/name`, or `name`.
    fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// The file whose definition of one object is in place, and those waiting behind it.
#[derive(Debug)]
struct Claim {
    owner: PathBuf,
    /// Later definitions, oldest first, with the file each comes from.
    waiting: Vec<(PathBuf, Object)>,
}

/// Every object's claim.
#[derive(Debug, Default)]
pub(super) struct Claims {
    claims: HashMap<Key, Claim>,
    /// Definitions waiting, over every claim.
    waiting: usize,
}

impl Claims {
    /// Definitions ignored as duplicates.
    pub(super) fn duplicates(&self) -> usize {
        self.waiting
    }

    /// File `path`, which defined `old` before, now defines `objects` (in file order).
    /// Brings `state` in line and returns the keys the file now defines. Duplicates newly
    /// seen are added to `errors`.
    pub(super) fn set_file(
        &mut self,
        path: &Path,
        old: &[Key],
        objects: Vec<Object>,
        state: &mut ClusterState,
        errors: &mut Vec<ManifestError>,
    ) -> Vec<Key> {
        let mut keys = Vec::with_capacity(objects.len());
        let mut seen = HashSet::with_capacity(objects.len());
        for obj in objects {
            let key = Key::of(&obj);
            let duplicate = |first: &Path| ManifestError::Duplicate {
                path: path.to_owned(),
                first: first.to_owned(),
                kind: key.kind,
                key: key.display(),
            };
            if !seen.insert(key.clone()) {
                // Defined twice in this file: the first document stays.
                errors.push(duplicate(path));
                continue;
            }
            match self.claims.get_mut(&key) {
                None => {
                    apply(state, obj, path, errors);
                    self.claims.insert(
                        key.clone(),
                        Claim {
                            owner: path.to_owned(),
                            waiting: Vec::new(),
                        },
                    );
                }
                Some(claim) if claim.owner == path => apply(state, obj, path, errors),
                Some(claim) => {
                    if let Some(w) = claim.waiting.iter_mut().find(|(p, _)| p == path) {
                        w.1 = obj;
                    } else {
                        errors.push(duplicate(&claim.owner));
                        claim.waiting.push((path.to_owned(), obj));
                        self.waiting += 1;
                    }
                }
            }
            keys.push(key);
        }
        for key in old {
            if !seen.contains(key) {
                self.release(key, path, state, errors);
            }
        }
        keys
    }

    /// File `path` no longer defines `keys`: each one it had in place goes to the oldest
    /// duplicate waiting, or out of `state`.
    pub(super) fn remove_file(
        &mut self,
        path: &Path,
        keys: &[Key],
        state: &mut ClusterState,
        errors: &mut Vec<ManifestError>,
    ) {
        for key in keys {
            self.release(key, path, state, errors);
        }
    }

    fn release(
        &mut self,
        key: &Key,
        path: &Path,
        state: &mut ClusterState,
        errors: &mut Vec<ManifestError>,
    ) {
        let Some(claim) = self.claims.get_mut(key) else {
            return;
        };
        if claim.owner != path {
            let before = claim.waiting.len();
            claim.waiting.retain(|(p, _)| p != path);
            self.waiting -= before - claim.waiting.len();
            return;
        }
        if claim.waiting.is_empty() {
            self.claims.remove(key);
            state.delete(key.kind, key.namespace.as_deref(), &key.name);
            return;
        }
        let (next, obj) = claim.waiting.remove(0);
        self.waiting -= 1;
        info!(kind = %key.kind, key = %key.display(), from = %path.display(),
            to = %next.display(), "object defined twice: its first definition is gone, the next one takes over");
        apply(state, obj, &next, errors);
        claim.owner = next;
    }
}

fn apply(state: &mut ClusterState, obj: Object, path: &Path, errors: &mut Vec<ManifestError>) {
    let kind = obj.kind();
    if let Err(source) = state.apply(obj) {
        errors.push(ManifestError::Rejected {
            path: path.to_owned(),
            kind,
            source,
        });
    }
}
