//! Landing a finished task at the caller's path.
//!
//! The cache is never the output: the file is cloned (reflink, where the filesystem shares
//! extents) or copied, so a user editing the output cannot change what this daemon serves.
//! A hard link is made only on request (`--link`), and then the shared inode is made
//! read-only. The file appears at the output path whole or not at all: it is first written
//! to a hidden temporary name beside the output and renamed over the output only after that
//! succeeded. The whole-file digest, when the caller gave one, is checked before anything
//! is written.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use ferry_types::{FileDigest, PieceIndex, PieceLayout};

use crate::DaemonError;

/// Checks the output path before a download starts, so a bad path fails fast.
pub fn check_output(output: &Path) -> Result<(), DaemonError> {
    if !output.is_absolute() {
        return Err(DaemonError::BadRequest(format!("output path {} must be absolute", output.display())));
    }
    if output.is_dir() {
        return Err(DaemonError::BadRequest(format!(
            "output {} is a directory; give a file path such as {}/FILE",
            output.display(),
            output.display()
        )));
    }
    match output.parent() {
        Some(dir) if dir.is_dir() => Ok(()),
        Some(dir) => {
            Err(DaemonError::BadRequest(format!("output directory {} does not exist; create it first", dir.display())))
        }
        None => Err(DaemonError::BadRequest(format!("output path {} has no directory", output.display()))),
    }
}

pub fn verify_digest(content: &Path, expected: &FileDigest) -> Result<(), DaemonError> {
    let read_err = |source| DaemonError::WriteOutput { path: content.display().to_string(), source };
    let mut f = std::fs::File::open(content).map_err(read_err)?;
    let mut h = expected.hasher(f.metadata().map_err(read_err)?.len());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let actual = h.finish();
    if &actual != expected {
        return Err(DaemonError::DigestMismatch { expected: expected.to_string(), actual: actual.to_string() });
    }
    Ok(())
}

/// Clones, copies or (with `link`) hard-links `content` to `output` through a temporary name.
pub fn land(content: &Path, output: &Path, link: bool) -> Result<(), DaemonError> {
    check_output(output)?;
    let err = |source| DaemonError::WriteOutput { path: output.display().to_string(), source };
    let tmp = temp_path(output);
    let placed = if link { hard_link_read_only(content, &tmp) } else { clone_or_copy(content, &tmp) };
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    std::fs::rename(&tmp, output).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

fn hard_link_read_only(content: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(content, std::fs::Permissions::from_mode(0o444))?;
    std::fs::hard_link(content, to)
}

/// A reflink where the filesystem supports it (no bytes copied, no space used until either
/// side changes), else a copy in the kernel (`copy_file_range` under `io::copy`).
fn clone_or_copy(content: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut src = std::fs::File::open(content)?;
    let mut dst = std::fs::OpenOptions::new().write(true).create_new(true).open(to)?;
    // SAFETY: both descriptors are open for the duration of the call.
    let cloned = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0;
    if !cloned {
        std::io::copy(&mut src, &mut dst)?;
    }
    Ok(())
}

/// An output written while its task's pieces arrive, so a download does not end with a
/// copy of the whole file: each verified piece is also written, from memory, into a
/// temporary file beside the output (by `Shared::store_piece`), and landing fills whatever
/// was not written that way from the cache, then renames. Dropped without landing, the
/// temporary file is removed.
pub struct OutputSink {
    tmp: PathBuf,
    /// Where the temporary file is noted, so a daemon that dies before landing it removes it
    /// at its next start.
    journal: Option<std::sync::Arc<ferry_storage::Store>>,
    file: std::fs::File,
    layout: PieceLayout,
    written: Mutex<Vec<bool>>,
    landed: AtomicBool,
}

impl OutputSink {
    pub fn create(
        output: &Path,
        layout: PieceLayout,
        journal: Option<std::sync::Arc<ferry_storage::Store>>,
    ) -> Result<Self, DaemonError> {
        check_output(output)?;
        let tmp = temp_path(output);
        let err = |source| DaemonError::WriteOutput { path: output.display().to_string(), source };
        if let Some(j) = &journal {
            if let Err(e) = j.output_started(&tmp) {
                tracing::debug!(error = %e, "could not note a temporary output");
            }
        }
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(err)?;
        let sink = Self {
            tmp,
            journal,
            file,
            layout,
            written: Mutex::new(vec![false; layout.piece_count() as usize]),
            landed: AtomicBool::new(false),
        };
        sink.file.set_len(layout.content_length()).map_err(err)?;
        Ok(sink)
    }

    /// Writes one verified piece at its offset.
    pub fn write_piece(&self, index: PieceIndex, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(bytes, self.layout.offset(index))?;
        self.mark(index);
        Ok(())
    }

    /// Writes part of a piece as it streams by; [`OutputSink::mark`] once all of it is.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }

    /// The whole piece is written here.
    pub fn mark(&self, index: PieceIndex) {
        self.written.lock().unwrap_or_else(|e| e.into_inner())[index.get() as usize] = true;
    }

    /// Copies the pieces not written yet from the complete content file, then renames the
    /// temporary file to `output`.
    pub fn land(&self, content: &Path, output: &Path) -> Result<(), DaemonError> {
        let err = |source| DaemonError::WriteOutput { path: output.display().to_string(), source };
        let missing: Vec<PieceIndex> = {
            let w = self.written.lock().unwrap_or_else(|e| e.into_inner());
            self.layout.indices().filter(|i| !w[i.get() as usize]).collect()
        };
        if !missing.is_empty() {
            let src = std::fs::File::open(content).map_err(err)?;
            for i in missing {
                copy_range(&src, &self.file, self.layout.offset(i), self.layout.len(i) as usize).map_err(err)?;
            }
        }
        std::fs::rename(&self.tmp, output).map_err(err)?;
        self.landed.store(true, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for OutputSink {
    fn drop(&mut self) {
        if !self.landed.load(Ordering::Relaxed) {
            let _ = std::fs::remove_file(&self.tmp);
        }
        if let Some(j) = &self.journal {
            let _ = j.output_ended(&self.tmp);
        }
    }
}

/// `len` bytes at `offset` from `src` to the same offset of `dst`, in the kernel where it can
/// (`copy_file_range`), else through a buffer: the cache and the output may be on different
/// filesystems, where Linux refuses the former (EXDEV).
fn copy_range(src: &std::fs::File, dst: &std::fs::File, offset: u64, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (mut off_in, mut off_out) = (offset as libc::loff_t, offset as libc::loff_t);
    let mut left = len;
    while left > 0 {
        // SAFETY: both descriptors are open; the offsets are valid out-parameters.
        let n = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, left, 0) };
        match n {
            n if n > 0 => left -= n as usize,
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                let unsupported = [libc::EXDEV, libc::ENOSYS, libc::EOPNOTSUPP, libc::EINVAL];
                if !unsupported.contains(&e.raw_os_error().unwrap_or(0)) {
                    return Err(e);
                }
                return copy_range_buffered(src, dst, off_in as u64, left);
            }
        }
    }
    Ok(())
}

fn copy_range_buffered(src: &std::fs::File, dst: &std::fs::File, offset: u64, len: usize) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len.min(1 << 20)];
    let mut done = 0usize;
    while done < len {
        let n = buf.len().min(len - done);
        src.read_exact_at(&mut buf[..n], offset + done as u64)?;
        dst.write_all_at(&buf[..n], offset + done as u64)?;
        done += n;
    }
    Ok(())
}

fn temp_path(output: &Path) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    output.with_file_name(format!(".{name}.ferry-{:08x}", rand::random::<u32>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_copies_without_copy_file_range_too() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&a, &bytes).unwrap();
        std::fs::write(&b, vec![0u8; bytes.len()]).unwrap();
        let src = std::fs::File::open(&a).unwrap();
        let dst = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
        copy_range_buffered(&src, &dst, 1000, 2_500_000).unwrap();
        let got = std::fs::read(&b).unwrap();
        assert_eq!(&got[1000..2_501_000], &bytes[1000..2_501_000]);
        assert!(got[..1000].iter().all(|x| *x == 0) && got[2_501_000..].iter().all(|x| *x == 0));
    }

    #[test]
    fn lands_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("c");
        std::fs::write(&content, b"hello").unwrap();
        let out = dir.path().join("out");
        land(&content, &out, false).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"hello");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // The output is not the cache: overwriting it leaves the content alone.
        std::fs::write(&out, b"HELLO").unwrap();
        assert_eq!(std::fs::read(&content).unwrap(), b"hello");
    }

    #[test]
    fn link_on_request_shares_a_read_only_inode() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("c");
        std::fs::write(&content, b"hello").unwrap();
        let out = dir.path().join("out");
        land(&content, &out, true).unwrap();
        let (a, b) = (std::fs::metadata(&content).unwrap(), std::fs::metadata(&out).unwrap());
        assert_eq!(a.ino(), b.ino());
        assert_eq!(b.permissions().mode() & 0o222, 0, "a linked output is read-only");
    }

    #[test]
    fn a_sink_lands_written_pieces_and_fills_the_rest_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("c");
        let piece = 16 * 1024;
        let bytes: Vec<u8> = (0..40 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&content, &bytes).unwrap();
        let layout = PieceLayout::new(bytes.len() as u64, piece as u32).unwrap();
        let out = dir.path().join("out");
        let sink = OutputSink::create(&out, layout, None).unwrap();
        sink.write_piece(layout.index(1).unwrap(), &bytes[piece..2 * piece]).unwrap();
        sink.land(&content, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), bytes);
        drop(sink);
        assert!(out.exists(), "a landed sink keeps its file");
        // One that never lands leaves nothing behind.
        let other = dir.path().join("other");
        drop(OutputSink::create(&other, layout, None).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn refuses_missing_dir_and_directory_output() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_output(&dir.path().join("nope/out")).is_err());
        assert!(check_output(dir.path()).is_err());
        assert!(check_output(Path::new("relative")).is_err());
    }

    #[test]
    fn digest_mismatch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("c");
        std::fs::write(&content, b"abc").unwrap();
        let good: FileDigest =
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".parse().unwrap();
        verify_digest(&content, &good).unwrap();
        let bad: FileDigest = format!("sha256:{}", "00".repeat(32)).parse().unwrap();
        assert!(matches!(verify_digest(&content, &bad), Err(DaemonError::DigestMismatch { .. })));
    }
}
