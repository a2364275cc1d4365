//! `pennine backup` and `pennine restore`: a consistent copy of a node's (or the
//! hub's) data folder on the embedded store, taken while it runs.
//!
//! Every SQLite database in the folder (the clinical store, the audit trail, the
//! dead letters) is copied with SQLite's online backup API (`store::sqlite::
//! backup_database`: one read transaction each, writers go on), every other file
//! (the token key, the record-key secret, certificates) as it is. A manifest lists
//! every file with its size and SHA-256, so that a restore refuses a damaged or
//! incomplete copy before it touches anything. The stores are copied one after
//! another: each is consistent in itself, and the audit trail or dead letters may
//! hold a few events newer than the clinical store's copy, never fewer.
//!
//! A restore writes into a folder that does not exist or is empty; with `force`
//! an existing folder is first moved aside (renamed, never deleted), so nothing
//! is lost if the backup was the wrong one. Stop the node before restoring.
//! On PostgreSQL, use `pg_dump`/`pg_restore` (README).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file every backup folder carries.
pub const MANIFEST: &str = "pennine-backup.json";
const FORMAT: &str = "pennine-backup/1";
/// The database file of every embedded store.
const DATABASE: &str = "pennine.db";

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// When the backup was taken (FHIR instant).
    pub taken: String,
    /// The Pennine version that took it.
    pub version: String,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path inside the folder, `/`-separated.
    pub path: String,
    /// `sqlite` (copied with the online backup) or `file`.
    pub kind: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |e| BackupError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The files of `dir` (recursively), relative, sorted; SQLite's `-wal`, `-shm` and
/// `-journal` files are left out (the online backup reads through them).
fn files_of(dir: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let here = dir.join(&rel);
        for entry in std::fs::read_dir(&here).map_err(io(&here))? {
            let entry = entry.map_err(io(&here))?;
            let kind = entry.file_type().map_err(io(&here))?;
            let name = rel.join(entry.file_name());
            if kind.is_dir() {
                pending.push(name);
            } else if kind.is_file() {
                let text = name.to_string_lossy();
                if !(text.ends_with("-wal") || text.ends_with("-shm") || text.ends_with("-journal")) {
                    out.push(name);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

fn sha256_file(path: &Path) -> Result<(u64, String), BackupError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        ctx.update(&buf[..n]);
    }
    Ok((
        bytes,
        ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

fn slash_path(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Copies the data folder `data` into the new folder `to`.
pub fn backup(data: &Path, to: &Path) -> Result<Manifest, BackupError> {
    if !data.join(DATABASE).is_file() && !data.join("audit").join(DATABASE).is_file() {
        return Err(BackupError::Refused(format!(
            "{} holds no Pennine store (no {DATABASE}, no audit/{DATABASE})",
            data.display()
        )));
    }
    if to.exists() && std::fs::read_dir(to).map_err(io(to))?.next().is_some() {
        return Err(BackupError::Refused(format!(
            "{} exists and is not empty: a backup goes into a new folder",
            to.display()
        )));
    }
    std::fs::create_dir_all(to).map_err(io(to))?;
    let mut files = Vec::new();
    for rel in files_of(data)? {
        let (src, dest) = (data.join(&rel), to.join(&rel));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let kind = if rel.file_name().is_some_and(|n| n == DATABASE) {
            crate::store::sqlite::backup_database(&src, &dest)?;
            "sqlite"
        } else {
            std::fs::copy(&src, &dest).map_err(io(&src))?;
            "file"
        };
        keep_private(&src, &dest);
        let (bytes, sha256) = sha256_file(&dest)?;
        files.push(FileEntry {
            path: slash_path(&rel),
            kind: kind.into(),
            bytes,
            sha256,
        });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        taken: crate::fhir::time::format_instant(crate::fhir::time::now_millis()),
        version: env!("CARGO_PKG_VERSION").into(),
        files,
    };
    let path = to.join(MANIFEST);
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Refused(e.to_string()))?;
    std::fs::write(&path, text).map_err(io(&path))?;
    sync_dir(to);
    Ok(manifest)
}

/// Secrets stay readable by their owner only in the copy too.
fn keep_private(src: &Path, dest: &Path) {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(src) {
        let _ = std::fs::set_permissions(dest, meta.permissions());
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Reads and checks a backup folder: its manifest, and every file's size and hash.
pub fn check(from: &Path) -> Result<Manifest, BackupError> {
    let path = from.join(MANIFEST);
    let text = std::fs::read(&path).map_err(io(&path))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| BackupError::Refused(format!("{} is not a backup manifest: {e}", path.display())))?;
    if manifest.format != FORMAT {
        return Err(BackupError::Refused(format!(
            "backup format '{}' is not {FORMAT}",
            manifest.format
        )));
    }
    for f in &manifest.files {
        let rel = Path::new(&f.path);
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(BackupError::Refused(format!(
                "the manifest names a path outside the backup: {}",
                f.path
            )));
        }
        let (bytes, sha256) = sha256_file(&from.join(rel))?;
        if bytes != f.bytes || sha256 != f.sha256 {
            return Err(BackupError::Refused(format!(
                "{} does not match the manifest (damaged or changed since the backup)",
                f.path
            )));
        }
        if f.kind == "sqlite" {
            crate::store::sqlite::check_database_file(&from.join(rel))?;
        }
    }
    Ok(manifest)
}

/// Restores the backup in `from` into `data`. `data` must be missing or empty,
/// unless `force`: then it is moved aside first, and the new name is returned.
pub fn restore(from: &Path, data: &Path, force: bool) -> Result<(Manifest, Option<PathBuf>), BackupError> {
    let manifest = check(from)?;
    let mut moved = None;
    if data.exists() && std::fs::read_dir(data).map_err(io(data))?.next().is_some() {
        if !force {
            return Err(BackupError::Refused(format!(
                "{} is not empty: stop the node and pass --force to move it aside first",
                data.display()
            )));
        }
        let stamp = crate::fhir::time::format_instant(crate::fhir::time::now_millis()).replace([':', '.'], "-");
        let aside = PathBuf::from(format!("{}.before-restore-{stamp}", data.display()));
        std::fs::rename(data, &aside).map_err(io(data))?;
        moved = Some(aside);
    }
    // Into a sibling first, renamed into place at the end: a failed restore leaves no half folder.
    let staging = PathBuf::from(format!("{}.restoring", data.display()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    for f in &manifest.files {
        let (src, dest) = (from.join(&f.path), staging.join(&f.path));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::copy(&src, &dest).map_err(io(&src))?;
        keep_private(&src, &dest);
        if let Ok(file) = std::fs::File::open(&dest) {
            let _ = file.sync_all();
        }
    }
    if data.exists() {
        std::fs::remove_dir(data).map_err(io(data))?;
    }
    std::fs::rename(&staging, data).map_err(io(&staging))?;
    if let Some(parent) = data.parent() {
        sync_dir(parent);
    }
    Ok((manifest, moved))
}
