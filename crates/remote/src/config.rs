//! The project's remotes, in `.tsumugi/config.toml` at the project root:
//!
//! ```toml
//! default_remote = "team"
//!
//! [remotes.team]
//! url = "s3://ml-cache/tsumugi"
//!
//! [remotes.nfs]
//! url = "/mnt/shared/tsumugi-cache"
//! ```
//!
//! The file names places, never credentials: those come from each store's own environment
//! (see [`crate::remote`]). It may be committed so that a team shares its remote names.
//! `tsumugi remote add/remove` rewrite it atomically; keys they do not know are kept, comments
//! are not.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tsumugi_base::atomic::write_atomic;

/// Relative to the project root.
pub const CONFIG_FILE: &str = ".tsumugi/config.toml";

/// One named remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    pub name: String,
    pub url: String,
}

/// The remotes section of the project config, and the rest of the file kept as it was.
#[derive(Debug, Clone, Default)]
pub struct Config {
    path: PathBuf,
    table: toml::Table,
}

impl Config {
    pub fn path_in(root: &Path) -> PathBuf {
        root.join(CONFIG_FILE)
    }

    /// Reads the config of the project at `root`; a missing file is an empty config.
    pub fn load(root: &Path) -> Result<Config> {
        let path = Self::path_in(root);
        let table = match fs::read_to_string(&path) {
            Ok(text) => text
                .parse::<toml::Table>()
                .map_err(|e| anyhow::anyhow!("{}: not valid TOML: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let cfg = Config { path, table };
        cfg.remotes()?; // every error is reported on load, not on first use
        Ok(cfg)
    }

    /// Every remote, by name.
    pub fn remotes(&self) -> Result<BTreeMap<String, RemoteSpec>> {
        let mut out = BTreeMap::new();
        let Some(v) = self.table.get("remotes") else {
            return Ok(out);
        };
        let Some(t) = v.as_table() else {
            bail!(
                "{}: `remotes` must be a table of [remotes.NAME] sections with a `url`",
                self.path.display()
            );
        };
        for (name, r) in t {
            let url = r
                .as_table()
                .and_then(|r| r.get("url"))
                .and_then(|u| u.as_str());
            let Some(url) = url else {
                bail!(
                    "{}: [remotes.{name}] needs `url = \"s3://bucket/prefix\"` (or a directory path)",
                    self.path.display()
                );
            };
            out.insert(
                name.clone(),
                RemoteSpec {
                    name: name.clone(),
                    url: url.to_string(),
                },
            );
        }
        Ok(out)
    }

    pub fn default_remote(&self) -> Option<&str> {
        self.table.get("default_remote").and_then(|v| v.as_str())
    }

    /// The remote called `name`, or the default one when `name` is `None` (`Ok(None)` when
    /// there is no default).
    pub fn resolve(&self, name: Option<&str>) -> Result<Option<RemoteSpec>> {
        let remotes = self.remotes()?;
        let name = match name.or(self.default_remote()) {
            Some(n) => n,
            None => return Ok(None),
        };
        match remotes.get(name) {
            Some(r) => Ok(Some(r.clone())),
            None => bail!(
                "no remote named {name} in {} (known: {}); add one with `tsumugi remote add {name} URL`",
                self.path.display(),
                if remotes.is_empty() {
                    "none".to_string()
                } else {
                    remotes.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ),
        }
    }

    pub fn add(&mut self, name: &str, url: &str, make_default: bool) -> Result<()> {
        check_name(name)?;
        if self.remotes()?.contains_key(name) {
            bail!(
                "a remote named {name} already exists in {}; remove it first with `tsumugi remote remove {name}`",
                self.path.display()
            );
        }
        let remotes = self
            .table
            .entry("remotes")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("checked by remotes()");
        let mut t = toml::Table::new();
        t.insert("url".into(), toml::Value::String(url.to_string()));
        remotes.insert(name.to_string(), toml::Value::Table(t));
        if make_default {
            self.table.insert(
                "default_remote".into(),
                toml::Value::String(name.to_string()),
            );
        }
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> Result<()> {
        let removed = self
            .table
            .get_mut("remotes")
            .and_then(|v| v.as_table_mut())
            .and_then(|t| t.remove(name));
        if removed.is_none() {
            bail!("no remote named {name} in {}", self.path.display());
        }
        if self.default_remote() == Some(name) {
            self.table.remove("default_remote");
        }
        Ok(())
    }

    /// Writes the file atomically (temporary file, fsync, rename).
    pub fn save(&self) -> Result<()> {
        let text = toml::to_string(&self.table).context("cannot encode the project config")?;
        write_atomic(&self.path, text.as_bytes())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("remote name {name:?}: use letters, digits, '-' and '_' only");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_default_remove_round_trip_keeps_other_keys() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join(".tsumugi")).unwrap();
        fs::write(Config::path_in(d.path()), "other = 1\n").unwrap();
        let mut c = Config::load(d.path()).unwrap();
        c.add("team", "s3://b/p", true).unwrap();
        c.add("nfs", "/mnt/x", false).unwrap();
        assert!(c.add("team", "s3://b/q", false).is_err());
        assert!(c.add("bad name", "x", false).is_err());
        c.save().unwrap();
        let c = Config::load(d.path()).unwrap();
        assert_eq!(c.resolve(None).unwrap().unwrap().url, "s3://b/p");
        assert_eq!(c.resolve(Some("nfs")).unwrap().unwrap().url, "/mnt/x");
        let e = c.resolve(Some("nope")).unwrap_err().to_string();
        assert!(e.contains("known: nfs, team"), "{e}");
        let mut c = c;
        c.remove("team").unwrap();
        c.save().unwrap();
        let c = Config::load(d.path()).unwrap();
        assert!(c.resolve(None).unwrap().is_none());
        let text = fs::read_to_string(Config::path_in(d.path())).unwrap();
        assert!(text.contains("other = 1"), "{text}");
    }

    #[test]
    fn a_remote_without_url_names_the_file_and_section() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join(".tsumugi")).unwrap();
        fs::write(Config::path_in(d.path()), "[remotes.x]\nurl_typo = 'a'\n").unwrap();
        let e = Config::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("config.toml: [remotes.x] needs `url"), "{e}");
    }
}
