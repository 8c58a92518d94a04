//! The audit file: JSON lines appended and fsynced, rotated by size.
//!
//! `FileSink::open` creates the file (mode 0640) if it is missing and appends to it; `append`
//! writes a batch of lines and fsyncs once. Before a line that would take the file past
//! `max_bytes` (unless the file is empty: a line is never split), `rotate` renames `FILE.(n-1)` to
//! `FILE.n` down to `FILE` to `FILE.1`, deleting what falls past `keep`, fsyncs the directory and
//! starts a new `FILE`. With `keep = 0` the full file is deleted instead.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An open audit file.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: File,
    size: u64,
}

impl FileSink {
    /// Opens (or creates) `path` for appending.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<FileSink> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(FileSink { path: path.to_owned(), max_bytes, keep, file, size })
    }

    /// Appends each line (a newline is added) and fsyncs, rotating where a line would take the
    /// file past `max_bytes`.
    pub fn append(&mut self, lines: &[Vec<u8>]) -> std::io::Result<()> {
        for line in lines {
            let length = line.len() as u64 + 1;
            if self.size > 0 && self.size + length > self.max_bytes {
                self.rotate()?;
            }
            let mut bytes = Vec::with_capacity(line.len() + 1);
            bytes.extend_from_slice(line);
            bytes.push(b'\n');
            self.file.write_all(&bytes)?;
            self.size += length;
        }
        self.file.sync_data()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            match std::fs::remove_file(numbered(self.keep)) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            for n in (1..self.keep).rev() {
                if numbered(n).exists() {
                    std::fs::rename(numbered(n), numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    #[test]
    fn lines_are_appended_and_rotated_keeping_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut sink = FileSink::open(&path, 22, 2).unwrap();
        let line = |n: u32| format!("{{\"n\":{n:04}}}").into_bytes(); // 11 bytes with the newline
        for n in 0..7 {
            sink.append(&[line(n)]).unwrap();
        }
        // Two lines per file: 0 1 | 2 3 | 4 5 | 6; keep 2 rotated files.
        assert_eq!(lines(&path), ["{\"n\":0006}"]);
        assert_eq!(lines(&dir.path().join("audit.jsonl.1")), ["{\"n\":0004}", "{\"n\":0005}"]);
        assert_eq!(lines(&dir.path().join("audit.jsonl.2")), ["{\"n\":0002}", "{\"n\":0003}"]);
        assert!(!dir.path().join("audit.jsonl.3").exists());
        // Reopened, it appends to what is there.
        drop(sink);
        let mut sink = FileSink::open(&path, 22, 2).unwrap();
        sink.append(&[line(7)]).unwrap();
        assert_eq!(lines(&path), ["{\"n\":0006}", "{\"n\":0007}"]);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut sink = FileSink::open(&path, 4, 0).unwrap();
        sink.append(&[b"0123456789".to_vec(), b"abcdefghij".to_vec()]).unwrap();
        assert_eq!(lines(&path), ["abcdefghij"]);
    }
}
