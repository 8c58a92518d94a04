//! The node's own files hold every flag and config value in the clear, while reading them over
//! the API needs a token: the data directory, the store, the last-known-good copies and the
//! backups are made readable by the node's user alone, whatever the umask, and a looser mode
//! found on an existing one is warned about at start.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Directories the node makes: the owner alone lists and enters them.
pub const DIR_MODE: u32 = 0o700;
/// Files the node makes: the owner alone reads and writes them.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents with [`DIR_MODE`]; warns when `dir` already exists
/// open to the group or others (the operator may have meant it; the node does not undo it).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        warn_if_open(dir);
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    // The builder's mode goes through the umask, which can only take rights away.
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Creates (or truncates) `path` with [`FILE_MODE`].
pub fn create_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Gives `path`, a file the node just made through a library that used the umask's mode (redb),
/// [`FILE_MODE`].
pub fn restrict(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE))
}

/// Warns when `path` can be read by the group or others.
pub fn warn_if_open(path: &Path) {
    if let Ok(metadata) = std::fs::metadata(path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "readable by other users, and it holds every value in the clear; chmod it to {:o}",
                if metadata.is_dir() { DIR_MODE } else { FILE_MODE }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_node_makes_is_its_users_alone_whatever_the_umask() {
        // SAFETY: umask only sets this process's file mode mask; the value is restored below.
        let before = unsafe { libc::umask(0o000) };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        create_dir(&data).unwrap();
        let file = data.join("f");
        create_file(&file).unwrap();
        unsafe { libc::umask(before) };
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), DIR_MODE);
        assert_eq!(mode(&file), FILE_MODE);
    }
}
