//! Holding verified bytes where nobody can change them before they are loaded or run: a
//! sealed memfd on Linux, else a fresh mode-0500 file in the private cache directory.
//!
//! A memfd lives in memory only; once sealed (`F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK |
//! F_SEAL_SEAL`) its bytes are fixed for good, even to us, and it disappears with its last
//! descriptor. Its descriptor is always 3 or above, so that a child's stdio setup never
//! lands on it.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The memfd name of an artifact: `codervpn-compat-<sha1 prefix>-<file>`, seen in
/// `/proc/<pid>/maps` and `/proc/<pid>/exe` as `/memfd:<name> (deleted)`.
pub(crate) fn memfd_name(file: &str, sha1: &str) -> String {
    let short = sha1.get(..12).unwrap_or(sha1);
    format!("codervpn-compat-{short}-{file}")
}

/// `bytes` in a sealed, close-on-exec memfd called `name`, or `None` where memfds do not
/// exist (`ENOSYS`, `EINVAL`). `executable` asks for one `execve` may run (`MFD_EXEC`, for
/// kernels that default to non-executable memfds), and gets `None` where executable memfds
/// are forbidden (`vm.memfd_noexec = 2`: `EACCES`); the caller checks the mode it got.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn memfd(
    name: &str,
    bytes: &[u8],
    executable: bool,
) -> std::io::Result<Option<OwnedFd>> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    let create = |flags| {
        // SAFETY: `name` is a valid C string; the flags are plain bits.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            // SAFETY: `fd` was just created and is ours alone.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    };
    let created = if executable {
        // Kernels before 6.3 do not know MFD_EXEC (EINVAL); their memfds are executable.
        create(base | libc::MFD_EXEC).or_else(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => create(base),
            _ => Err(e),
        })
    } else {
        create(base)
    };
    let fd = match created {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) => {
            return Ok(None);
        }
        Err(e) if executable && e.raw_os_error() == Some(libc::EACCES) => return Ok(None),
        Err(e) => return Err(e),
    };
    let fd = above_stdio(fd)?;
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes)?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own fd; F_ADD_SEALS only restricts future changes.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some(OwnedFd::from(f)))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn memfd(
    _name: &str,
    _bytes: &[u8],
    _executable: bool,
) -> std::io::Result<Option<OwnedFd>> {
    Ok(None)
}

/// `fd` moved to a number of 3 or more (close-on-exec), so that a child's stdin, stdout or
/// stderr setup cannot replace it before it is executed.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: duplicating a descriptor we own; the copy is new and ours alone.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `copy` was just created by F_DUPFD_CLOEXEC.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// The prefix of [`private_copy`]'s names for `file`.
fn copy_prefix(file: &str) -> String {
    format!(".{file}.verified-")
}

/// Writes `bytes` to a new mode-0500 file created exclusively in `dir` and returns its path
/// (`.<file>.verified-<pid>-<n>`). The caller deletes it as soon as it is loaded or started.
pub(crate) fn private_copy(dir: &Path, file: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{}{}-{n}", copy_prefix(file), std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o500)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Deletes the [`private_copy`] files of `file` in `dir` whose process is gone: earlier
/// versions left every daemon's copy behind, and a crash can leave one. Copies of live
/// processes (this one included) are kept: they may be about to run. Returns how many went.
pub(crate) fn sweep_stale_copies(dir: &Path, file: &str) -> usize {
    let prefix = copy_prefix(file);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|p| p.parse::<libc::pid_t>().ok())
            .filter(|&p| p > 0)
        else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if !gone {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(
                path = %entry.path().display(), error = %e,
                "cannot remove a stale executable copy"
            ),
        }
    }
    if removed > 0 {
        tracing::info!(dir = %dir.display(), removed, "removed stale executable copies of {file}");
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_memfd_is_sealed_against_every_change() {
        use std::io::Write;
        let fd = memfd("codervpn-compat-test-sealed", b"verified", true)
            .unwrap()
            .unwrap();
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        assert!(raw > 2);
        // SAFETY: F_GET_SEALS on our own fd.
        let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
        let want = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        assert_eq!(seals & want, want);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{raw}"))
            .unwrap();
        assert!(f.write_all(b"changed").is_err());
        let meta = std::fs::metadata(format!("/proc/self/fd/{raw}")).unwrap();
        assert_ne!(meta.permissions().mode() & 0o111, 0, "not executable");
    }

    #[test]
    fn only_the_copies_of_dead_processes_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let file = "coder-linux-amd64";
        let stale = dir.path().join(format!(".{file}.verified-{dead_pid}-0"));
        std::fs::write(&stale, b"old").unwrap();
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o500)).unwrap();
        let mine = private_copy(dir.path(), file, b"in use").unwrap();
        let other = dir.path().join(format!(".other.verified-{dead_pid}-0"));
        std::fs::write(&other, b"not ours to judge").unwrap();

        assert_eq!(sweep_stale_copies(dir.path(), file), 1);

        assert!(!stale.exists());
        assert!(mine.exists());
        assert!(other.exists());
    }
}
