//! The one place the agent opens its pinned maps: every open goes through [`open`], which
//! checks the pin's layout against [`crate::datapath::MAP_LAYOUTS`] (what this build's programs
//! read and write) before anyone touches its bytes. A pin from an incompatible build under the
//! same versioned name is refused with a [`PinError::Layout`] naming the pin, what this build
//! expects and what it found.

use std::{fmt, path::Path, path::PathBuf};

use aya::maps::{MapData, MapError, MapInfo};

use crate::datapath::MAP_LAYOUTS;

/// The part of a map's shape the programs depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {} B, value {} B, max entries {}",
            self.key_size, self.value_size, self.max_entries
        )
    }
}

/// An error opening a pinned map.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("open pinned map {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error(
        "pinned map {} has {found}, this build expects {expected}; remove the pin \
         (sluice-agent --uninstall) to start over",
        path.display()
    )]
    Layout {
        path: PathBuf,
        expected: Layout,
        found: Layout,
    },
}

/// The layout this build expects of map `name`, if it is one of the pinned maps.
pub fn expected(name: &str) -> Option<Layout> {
    MAP_LAYOUTS
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|&(_, key, value, max)| Layout {
            key_size: key as u32,
            value_size: value as u32,
            max_entries: max,
        })
}

/// Checks that the map pinned at `path` has the layout this build expects of `name`.
fn check(path: &Path, name: &str) -> Result<(), PinError> {
    let Some(expected) = expected(name) else {
        return Ok(());
    };
    let info = MapInfo::from_pin(path).map_err(|source| PinError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let found = Layout {
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    };
    if found != expected {
        return Err(PinError::Layout {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    Ok(())
}

/// Opens the pinned map `name` of `bpffs` after checking its layout.
pub fn open(bpffs: &Path, name: &str) -> Result<MapData, PinError> {
    let path = datapath_user::map_path(bpffs, name);
    check(&path, name)?;
    MapData::from_pin(&path).map_err(|source| PinError::Open { path, source })
}

/// Checks every map already pinned under `bpffs`; returns how many there are (adopted at load).
pub fn check_pinned_layouts(bpffs: &Path) -> Result<usize, PinError> {
    let mut adopted = 0;
    for (name, ..) in MAP_LAYOUTS {
        let path = datapath_user::map_path(bpffs, name);
        if !path.exists() {
            continue;
        }
        check(&path, name)?;
        adopted += 1;
    }
    Ok(adopted)
}
