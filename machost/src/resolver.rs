//! Split DNS on macOS: one file per DNS suffix in `/etc/resolver/` (resolver(5)), naming the
//! in-tunnel resolver. The system asks it for names under that suffix only.
//!
//! Every file we write starts with a marker line naming our process, so that we remove
//! only our own files — never a file the user or another VPN put there — and so that the
//! next start can clean up after a run that was killed (its process is gone).

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where macOS looks for per-domain resolver files.
pub const RESOLVER_DIR: &str = "/etc/resolver";
const MARKER: &str = "# written by codervpn, pid ";

/// Why a resolver file could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("{0:?} is not a DNS suffix this can write a resolver file for")]
    BadSuffix(String),
    #[error("{} exists and is not ours (left as it is); remove it to let codervpn resolve {suffix}", path.display())]
    NotOurs { path: PathBuf, suffix: String },
    #[error("{} belongs to codervpn process {pid}, which still runs; stop it first", path.display())]
    InUse { path: PathBuf, pid: u32 },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ResolverError + '_ {
    move |source| ResolverError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The resolver files of one run: written by [`ResolverFiles::apply`], removed by
/// [`ResolverFiles::remove`] (and on drop).
#[derive(Debug)]
pub struct ResolverFiles {
    dir: PathBuf,
    pid: u32,
    written: Vec<PathBuf>,
}

impl ResolverFiles {
    /// Files in `dir` (normally [`RESOLVER_DIR`]) for the process `pid`.
    pub fn new(dir: impl Into<PathBuf>, pid: u32) -> Self {
        Self {
            dir: dir.into(),
            pid,
            written: Vec::new(),
        }
    }

    /// Writes one file per suffix (`coder`, `me.coder`…: no trailing dot needed), each
    /// naming `nameservers`, replacing files of earlier runs of ours whose process is gone
    /// (`alive` says whether a pid still runs). A file that is not ours is an error, and
    /// nothing is written then.
    pub fn apply(
        &mut self,
        suffixes: &[String],
        nameservers: &[IpAddr],
        alive: impl Fn(u32) -> bool,
    ) -> Result<(), ResolverError> {
        let mut plan = Vec::new();
        for s in suffixes {
            let name = valid_suffix(s)?;
            let path = self.dir.join(&name);
            match owner(&path).map_err(io_err(&path))? {
                Owner::Nobody => {}
                Owner::Us(pid) if pid == self.pid || !alive(pid) => {}
                Owner::Us(pid) => return Err(ResolverError::InUse { path, pid }),
                Owner::Foreign => return Err(ResolverError::NotOurs { path, suffix: name }),
            }
            plan.push(path);
        }
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let mut body = format!("{MARKER}{}; removed when it stops\n", self.pid);
        for ns in nameservers {
            body.push_str(&format!("nameserver {ns}\n"));
        }
        for path in plan {
            write_atomically(&path, body.as_bytes()).map_err(io_err(&path))?;
            if !self.written.contains(&path) {
                self.written.push(path);
            }
        }
        Ok(())
    }

    /// Removes the files this run wrote (those still ours). Returns how many went.
    pub fn remove(&mut self) -> Result<usize, ResolverError> {
        let mut removed = 0;
        for path in std::mem::take(&mut self.written) {
            if owner(&path).map_err(io_err(&path))? == Owner::Us(self.pid) {
                fs::remove_file(&path).map_err(io_err(&path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl Drop for ResolverFiles {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// A suffix as a file name: DNS labels of letters, digits and hyphens, dot-separated.
fn valid_suffix(s: &str) -> Result<String, ResolverError> {
    let name = s.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(ResolverError::BadSuffix(s.to_owned()));
    }
    Ok(name)
}

#[derive(Debug, PartialEq, Eq)]
enum Owner {
    Nobody,
    Us(u32),
    Foreign,
}

fn owner(path: &Path) -> io::Result<Owner> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Owner::Nobody),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(Owner::Foreign),
        Err(e) => return Err(e),
    };
    let pid = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix(MARKER))
        .and_then(|rest| rest.split(';').next())
        .and_then(|p| p.trim().parse().ok());
    Ok(pid.map_or(Owner::Foreign, Owner::Us))
}

/// Writes `path` whole or not at all (a temporary file renamed over it), mode 0644.
fn write_atomically(path: &Path, body: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("codervpn-tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> Vec<IpAddr> {
        vec!["fd60:627a:a42b::53".parse().unwrap()]
    }

    #[test]
    fn files_name_the_tunnel_resolver_and_go_on_remove() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = ResolverFiles::new(dir.path().join("resolver"), 4242);
        files
            .apply(&["coder.".into(), "Me.Coder".into()], &ns(), |_| true)
            .unwrap();
        let coder = fs::read_to_string(dir.path().join("resolver/coder")).unwrap();
        assert_eq!(
            coder,
            "# written by codervpn, pid 4242; removed when it stops\nnameserver fd60:627a:a42b::53\n"
        );
        assert!(dir.path().join("resolver/me.coder").exists());
        assert_eq!(files.remove().unwrap(), 2);
        assert_eq!(
            fs::read_dir(dir.path().join("resolver")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_file_that_is_not_ours_is_left_alone_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("coder");
        fs::write(&theirs, "nameserver 10.0.0.1\n").unwrap();
        let mut files = ResolverFiles::new(dir.path(), 1);
        let err = files
            .apply(&["other".into(), "coder".into()], &ns(), |_| true)
            .unwrap_err();
        assert!(matches!(err, ResolverError::NotOurs { .. }), "{err}");
        assert!(err.to_string().contains("not ours"), "{err}");
        assert_eq!(
            fs::read_to_string(&theirs).unwrap(),
            "nameserver 10.0.0.1\n"
        );
        assert!(
            !dir.path().join("other").exists(),
            "nothing written on refusal"
        );
    }

    #[test]
    fn a_killed_runs_file_is_taken_over_and_a_live_ones_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = ResolverFiles::new(dir.path(), 100);
        old.apply(&["coder".into()], &ns(), |_| true).unwrap();
        std::mem::forget(old); // killed: no remove, no drop
        let mut alive = ResolverFiles::new(dir.path(), 200);
        let err = alive
            .apply(&["coder".into()], &ns(), |pid| pid == 100)
            .unwrap_err();
        assert!(
            matches!(err, ResolverError::InUse { pid: 100, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("process 100, which still runs"),
            "{err}"
        );
        let mut next = ResolverFiles::new(dir.path(), 200);
        next.apply(&["coder".into()], &ns(), |_| false).unwrap();
        let text = fs::read_to_string(dir.path().join("coder")).unwrap();
        assert!(
            text.starts_with("# written by codervpn, pid 200;"),
            "{text}"
        );
        drop(next);
        assert!(!dir.path().join("coder").exists(), "removed on drop");
    }

    #[test]
    fn suffixes_that_are_not_dns_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = ResolverFiles::new(dir.path(), 1);
        for bad in ["", ".", "../etc", "a/b", "a..b", "-x.coder", "sp ace"] {
            let err = files.apply(&[bad.into()], &ns(), |_| true).unwrap_err();
            assert!(matches!(err, ResolverError::BadSuffix(_)), "{bad:?}: {err}");
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
