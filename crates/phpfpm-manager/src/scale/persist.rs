//! What the autoscaler remembers across manager restarts and adoptions: the
//! cap the pool's master runs with, the operator's override, and what the
//! model learned. Kept as JSON in `<runtime_dir>/scale/<pool>.json`, written
//! atomically, so a restarted manager neither starts learning again nor
//! undoes a resize by rendering the configured size.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::plan::PlanMemory;
use super::Override;

/// The file's content. Every field is optional on reading, so a file from an
/// older or newer manager is read for what it has.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Remembered {
    /// The cap the pool's master was last given by the autoscaler.
    pub cap: Option<u32>,
    pub override_: Override,
    /// The override the config asked for when this was written: a config
    /// that still says the same does not undo a later API control.
    pub configured: Override,
    pub plan: PlanMemory,
    /// `fpm_autoscale::ScalerState`, as it serialises.
    pub model: Option<serde_json::Value>,
    pub saved_at_ms: i64,
}

/// Reads the remembered state; a missing file is `Ok(None)`, a damaged one
/// an error that names the file (the caller starts afresh and says so).
pub fn load(path: &Path) -> Result<Option<Remembered>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: not a valid autoscaler state ({e})", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes it (temporary file, fsync, rename; mode 0600).
pub fn save(path: &Path, state: &Remembered) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    crate::supervisor::files::write_atomic(path, &text, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scale").join("www.json");
        assert_eq!(load(&path).unwrap(), None);
        let state = Remembered {
            cap: Some(12),
            override_: Override::Pinned {
                workers: 6,
                until_ms: Some(1_800_000_000_000),
                reason: Some("deploy".into()),
            },
            configured: Override::Auto,
            plan: PlanMemory {
                last_change_ms: Some(5),
                ..PlanMemory::default()
            },
            model: Some(serde_json::json!({"workers": 12})),
            saved_at_ms: 7,
        };
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), Some(state));
        std::fs::write(&path, b"{ not json").unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.contains("www.json"), "{err}");
        // Unknown and missing fields: read for what it has.
        std::fs::write(&path, br#"{"cap": 3, "from_the_future": true}"#).unwrap();
        assert_eq!(load(&path).unwrap().unwrap().cap, Some(3));
    }
}
