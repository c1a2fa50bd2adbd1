//! Running verified bytes without an executable file on disk (daemon mode).
//!
//! On Linux the bytes go into a sealed memfd ([`super::sealed::memfd`], `MFD_EXEC`,
//! close-on-exec) and the child `execve`s `/proc/self/fd/<N>`: the kernel resolves that link
//! in the child to the same memfd before close-on-exec runs, so an ELF binary starts from the
//! sealed bytes and the descriptor does not follow it into the new program. Its
//! `/proc/<pid>/exe` reads `/memfd:codervpn-compat-<sha1 prefix>-<file> (deleted)`, and
//! `argv[0]` is the name given to [`Executable::command`] (`coder`; `ps -f` shows it). Its
//! `/proc/<pid>/comm` (`ps -e`, `top`, `pgrep`) is the descriptor's number, though: the
//! kernel names a process after the last component of the path it was executed by.
//!
//! A script (`#!`) is different: the kernel starts its interpreter with the path
//! `/proc/self/fd/<N>`, which the interpreter opens after the `execve`, when a close-on-exec
//! descriptor is already gone (the same reason `fexecve` cannot run a script from a
//! close-on-exec descriptor). For scripts, so for the tests' fake daemons, the child clears
//! close-on-exec on its own copy of the descriptor just before `execve`; the script and its
//! children then hold the (read-only, sealed) memfd open.
//!
//! Elsewhere — not Linux, no `memfd_create`, memfds that may not be executed
//! (`vm.memfd_noexec = 2`), or no `/proc` — the bytes go to a fresh mode-0500 file created
//! exclusively in the private cache directory, run by path and deleted when the
//! [`Executable`] is dropped (at once after the child has started). Only a crash in between
//! leaves it behind; the next fetch sweeps such copies ([`super::sealed::sweep_stale_copies`]).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::sealed::{memfd, memfd_name, private_copy};

/// Verified bytes ready to be run: a sealed memfd, or a private copy deleted on drop.
pub struct Executable {
    file: String,
    image: Image,
}

enum Image {
    /// Run as `/proc/self/fd/<fd>`.
    Memfd { fd: OwnedFd, script: bool },
    /// A mode-0500 copy in the cache directory, run by path.
    Copy(PathBuf),
}

impl std::fmt::Debug for Executable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Executable {
    /// `bytes` (already verified) as something to run, named `file` (the artifact's name)
    /// in messages. `staging_dir` must be private (the checked cache directory); it is used
    /// only where memfds cannot be run.
    /// On macOS the copy's code signature is checked against `apple_rule` first (a refusal
    /// is a `PermissionDenied` error naming the failed check; the copy is deleted).
    pub fn new(
        file: &str,
        sha1: &str,
        bytes: &[u8],
        staging_dir: &Path,
        apple_rule: Option<&codervpn_codesign::Artifact>,
    ) -> std::io::Result<Self> {
        if let Some(fd) = memfd(&memfd_name(file, sha1), bytes, true)? {
            match runnable(&fd) {
                Ok(()) => {
                    return Ok(Executable {
                        file: file.to_owned(),
                        image: Image::Memfd {
                            fd,
                            script: bytes.starts_with(b"#!"),
                        },
                    });
                }
                Err(why) => tracing::warn!(
                    file,
                    "cannot run a memfd here ({why}); running a mode-0500 copy in {} instead, \
                     deleted once started",
                    staging_dir.display()
                ),
            }
        }
        let exe = Executable {
            file: file.to_owned(),
            image: Image::Copy(private_copy(staging_dir, file, bytes)?),
        };
        // Dropping `exe` on a refusal deletes the copy.
        super::apple::check_staged(&exe.exec_path(), apple_rule).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{file} refused by its code signature: {e}"),
            )
        })?;
        Ok(exe)
    }

    /// Whether the bytes are run from a sealed memfd (no file on disk).
    pub fn in_memory(&self) -> bool {
        matches!(self.image, Image::Memfd { .. })
    }

    /// What `execve` is given: `/proc/self/fd/<N>`, or the private copy's path.
    pub fn exec_path(&self) -> PathBuf {
        match &self.image {
            Image::Memfd { fd, .. } => {
                use std::os::fd::AsRawFd;
                PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            }
            Image::Copy(path) => path.clone(),
        }
    }

    /// For messages: `coder-linux-amd64 (sealed memfd)` or the copy's path.
    pub fn describe(&self) -> String {
        match &self.image {
            Image::Memfd { .. } => format!("{} (sealed memfd)", self.file),
            Image::Copy(path) => path.display().to_string(),
        }
    }

    /// A command running these bytes with `argv[0]` = `arg0`. Keep `self` until the child
    /// has been spawned (`Command::spawn` returns once `execve` has succeeded).
    pub fn command(&self, arg0: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(self.exec_path());
        cmd.arg0(arg0);
        if let Image::Memfd { fd, script: true } = &self.image {
            use std::os::fd::AsRawFd;
            let raw = fd.as_raw_fd();
            // SAFETY: only an async-signal-safe fcntl between fork and exec, on a
            // descriptor the child inherited from us (see the module documentation).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::fcntl(raw, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd
    }
}

impl Drop for Executable {
    fn drop(&mut self) {
        if let Image::Copy(path) = &self.image
            && let Err(e) = std::fs::remove_file(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the executable copy");
        }
    }
}

/// Whether `execve("/proc/self/fd/<fd>")` can work: `/proc` is there and the memfd has its
/// execute bits (a kernel with `vm.memfd_noexec = 1` may have made it non-executable).
fn runnable(fd: &OwnedFd) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let meta = std::fs::metadata(&path).map_err(|e| format!("{path}: {e}"))?;
    if meta.permissions().mode() & 0o100 == 0 {
        return Err(format!(
            "the memfd is not executable (mode {:04o}; vm.memfd_noexec?)",
            meta.permissions().mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_script_runs_from_the_memfd_and_nothing_is_written_to_the_staging_dir() {
        let dir = tempfile::tempdir().unwrap();
        let script = b"#!/bin/sh\necho \"$0 $*\"; readlink \"/proc/$$/fd/${0##*/}\"\n";
        let exe =
            Executable::new("fake-coder", "0123456789abcdef", script, dir.path(), None).unwrap();
        assert!(exe.in_memory());

        let out = exe
            .command("coder")
            .args(["version", "--output=json"])
            .output()
            .unwrap();
        let out = String::from_utf8(out.stdout).unwrap();

        let fd_path = exe.exec_path().display().to_string();
        assert!(fd_path.starts_with("/proc/self/fd/"), "{fd_path}");
        assert_eq!(
            out,
            format!(
                "{fd_path} version --output=json\n/memfd:codervpn-compat-0123456789ab-fake-coder (deleted)\n"
            )
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// An ELF binary (a copy of `ls`) runs from the memfd as `coder` and does not inherit
    /// the descriptor: its `/proc/self/exe` is the memfd, no descriptor of its names one, and
    /// its complaint about a missing file starts with its `argv[0]`.
    #[test]
    fn a_binary_runs_from_the_memfd_as_coder_without_the_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let ls = std::fs::read("/bin/ls").expect("/bin/ls");
        let exe = Executable::new("fake-ls", "fedcba9876543210", &ls, dir.path(), None).unwrap();
        assert!(exe.in_memory());

        let out = exe
            .command("coder")
            .args(["-l", "/proc/self/fd/", "/proc/self/exe", "/nonexistent"])
            .output()
            .unwrap();

        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.contains("/memfd:codervpn-compat-fedcba987654-fake-ls (deleted)"),
            "{stdout}"
        );
        assert_eq!(stdout.matches("memfd:").count(), 1, "{stdout}");
        assert!(stderr.starts_with("coder: "), "{stderr}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
