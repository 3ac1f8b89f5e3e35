//! Making sled's writes durable. sled 0.34's `flush` writes its log buffer and waits with
//! `sync_file_range`, which neither flushes the drive's write cache nor the file's metadata, and
//! it never syncs the separate files it uses for large values (`blobs/`). So after every flush we
//! `fdatasync` the main file ourselves, and when large values may have been written we also sync
//! the new blob files and their directory.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct Durability {
    db: sled::Db,
    main_file: File,
    blob_dir: PathBuf,
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl Durability {
    pub fn open(db: &sled::Db, path: &Path) -> std::io::Result<Self> {
        let main_file = File::open(path.join("db"))?;
        // The files sled created at open must survive a power loss too.
        File::open(path)?.sync_all()?;
        Ok(Durability {
            db: db.clone(),
            main_file,
            blob_dir: path.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        })
    }

    /// Flushes sled and makes everything written so far durable. `deep`: also sync blob files.
    pub async fn sync(&self, deep: bool) -> std::io::Result<()> {
        self.db.flush_async().await.map_err(std::io::Error::other)?;
        self.main_file.sync_data()?;
        if deep {
            self.sync_blobs()?;
        }
        Ok(())
    }

    fn sync_blobs(&self) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(&self.blob_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self.synced_blobs.lock().expect("poisoned");
        let mut any = false;
        let mut present = HashSet::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            present.insert(name.clone());
            if synced.contains(&name) {
                continue;
            }
            match File::open(entry.path()) {
                Ok(f) => f.sync_all()?,
                // Removed by sled meanwhile: nothing to make durable.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            synced.insert(name);
            any = true;
        }
        synced.retain(|n| present.contains(n));
        if any {
            File::open(&self.blob_dir)?.sync_all()?;
        }
        Ok(())
    }
}
