//! Private directories for the commands that write a data dir besides
//! `serve` (`restore`, `store copy`): 0700 dirs and 0600 files whatever
//! the caller's umask, and a new data dir built aside and renamed into
//! place, so a command that fails or refuses leaves nothing behind.

use std::{
    io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

/// Makes everything this process creates from now on private: 0700 dirs,
/// 0600 files, including the files the database library creates itself
/// (which take no mode from us). `serve` does the same before it creates
/// its data dir.
pub(crate) fn private_umask() {
    // SAFETY: umask only swaps the process's file-creation mask.
    unsafe { libc::umask(0o077) };
}

/// A data dir being built next to where it goes: created 0700 (with any
/// missing parents, 0700 too) under a temporary name. [`NewDir::commit`]
/// renames it into place; dropped without that, it is removed with the
/// parents it created.
pub(crate) struct NewDir {
    target: PathBuf,
    building: PathBuf,
    /// Parents this created, outermost first.
    parents: Vec<PathBuf>,
    committed: bool,
}

impl NewDir {
    /// Starts building `target`, which must not exist.
    pub(crate) fn create(target: &Path) -> io::Result<NewDir> {
        let name = target.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no directory")
        })?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut missing = Vec::new();
        let mut at = parent.as_path();
        while !at.as_os_str().is_empty() && !at.exists() {
            missing.push(at.to_owned());
            match at.parent() {
                Some(p) => at = p,
                None => break,
            }
        }
        missing.reverse();
        let mut dir = NewDir {
            target: target.to_owned(),
            building: parent.join(format!(
                ".{}.partial-{}",
                name.to_string_lossy(),
                std::process::id()
            )),
            parents: Vec::new(),
            committed: false,
        };
        for p in missing {
            private_dir(&p)?;
            dir.parents.push(p);
        }
        private_dir(&dir.building)?;
        Ok(dir)
    }

    /// Where to build.
    pub(crate) fn path(&self) -> &Path {
        &self.building
    }

    /// Moves the built dir into place.
    pub(crate) fn commit(mut self) -> io::Result<()> {
        if self.target.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} appeared meanwhile", self.target.display()),
            ));
        }
        std::fs::rename(&self.building, &self.target)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for NewDir {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.building);
        for p in self.parents.iter().rev() {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// Creates one directory, 0700 whatever the umask.
fn private_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(path)?;
    // The umask may have taken bits away from the owner too.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Invariant: a new dir and the parents it needed are 0700, and appear
    /// under the target's name only when committed.
    #[test]
    fn a_committed_dir_is_private_and_in_place() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("a/b/data");
        let dir = NewDir::create(&target).unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        assert!(!target.exists(), "not in place before commit");
        dir.commit().unwrap();
        assert!(target.join("f").exists());
        for p in [root.path().join("a"), root.path().join("a/b"), target] {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
        }
    }

    /// Invariant: a dir dropped before commit leaves nothing behind, not
    /// even the parents it created.
    #[test]
    fn an_abandoned_dir_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let dir = NewDir::create(&root.path().join("a/b/data")).unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        drop(dir);
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }
}
