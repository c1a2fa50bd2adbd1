//! The private cache directory: verified artifacts are written there (and staged to be
//! loaded or run where memfds cannot be used), so nobody but root and us may be able to change
//! what it holds — not through the directory itself, and not through any directory above
//! it, whose owner could rename the whole branch away and put another in its place.
//!
//! Every directory from `/` down is checked as the kernel would walk it: each must be owned
//! by root or us and not writable by group or others, unless it has the sticky bit (`/tmp`:
//! others may add entries there but not rename or delete ours, and the next one down must
//! be ours or root's anyway). A symlink on the way is followed, and must itself be owned by
//! root or us; the directory holding it has been checked already, so nobody else can swap
//! it, and its target is walked by the same rules. The cache directory itself must be a real
//! directory (no symlink), owned by root or us, and not group- or other-writable.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::DownloadError;

/// Symlinks followed before giving up, as the kernel's `ELOOP` limit.
const MAX_SYMLINKS: usize = 40;

/// Creates `dir` (mode 0700) if needed and refuses one that is not a real directory, is
/// owned by someone other than root or us, or is writable by group or others — and one
/// with a directory above it that others could change (see the module documentation).
pub fn ensure_private_dir(dir: &Path) -> Result<(), DownloadError> {
    let problem = |problem: String| DownloadError::CacheDir {
        dir: dir.to_owned(),
        problem,
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| problem(format!("cannot create: {e}")))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(problem(format!("cannot create: {e}"))),
    }
    let me = euid();
    let meta = std::fs::symlink_metadata(dir).map_err(|e| problem(e.to_string()))?;
    if !meta.file_type().is_dir() {
        return Err(problem("is not a directory (symlinks are refused)".into()));
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(problem(format!(
            "is owned by uid {}, neither root nor the current user (uid {me})",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(problem(format!(
            "is writable by group or others (mode {mode:04o}); use chmod 700"
        )));
    }
    let absolute = std::path::absolute(dir).map_err(|e| problem(e.to_string()))?;
    match absolute.parent() {
        Some(parent) => check_ancestors(parent, me).map_err(problem),
        None => Ok(()),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Walks `path` (absolute) from `/`, following symlinks, checking every directory met.
fn check_ancestors(path: &Path, me: u32) -> Result<(), String> {
    let mut at = PathBuf::from("/");
    check_dir(
        &at,
        &std::fs::symlink_metadata(&at).map_err(|e| e.to_string())?,
        me,
    )?;
    // Components still to walk, the next one last.
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, path);
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            // `at` has no symlinks in it, so its parent is the lexical one.
            at.pop();
            continue;
        }
        let next = at.join(&name);
        let meta = std::fs::symlink_metadata(&next)
            .map_err(|e| format!("cannot check {}: {e}", next.display()))?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(format!(
                    "too many symlinks on the way to {}",
                    path.display()
                ));
            }
            if meta.uid() != me && meta.uid() != 0 {
                return Err(format!(
                    "the symlink {} above it is owned by uid {}, neither root nor the current user (uid {me})",
                    next.display(),
                    meta.uid()
                ));
            }
            let target = std::fs::read_link(&next)
                .map_err(|e| format!("cannot read the symlink {}: {e}", next.display()))?;
            if target.is_absolute() {
                at = PathBuf::from("/");
            }
            push_components(&mut todo, &target);
            continue;
        }
        if !meta.file_type().is_dir() {
            return Err(format!("{} above it is not a directory", next.display()));
        }
        check_dir(&next, &meta, me)?;
        at = next;
    }
    Ok(())
}

/// Pushes `path`'s components so that the first is popped first (`.` and `/` dropped).
fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    let names: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    todo.extend(names.into_iter().rev());
}

/// A directory above the cache directory: owned by root or us, and writable by nobody
/// else unless sticky.
fn check_dir(dir: &Path, meta: &std::fs::Metadata, me: u32) -> Result<(), String> {
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "{} above it is owned by uid {}, neither root nor the current user (uid {me}), \
             who could replace the cache directory",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "{} above it is writable by group or others without the sticky bit (mode \
             {mode:04o}), so they could replace the cache directory; use a cache directory \
             only root and you can change the way to",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_world_writable_ancestor_without_the_sticky_bit_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let cache = open.join("deeper").join("cache");

        let err = ensure_private_dir(&cache).unwrap_err().to_string();

        assert_eq!(
            err,
            format!(
                "cache directory {}: {} above it is writable by group or others without the \
                 sticky bit (mode 0777), so they could replace the cache directory; use a \
                 cache directory only root and you can change the way to",
                cache.display(),
                open.display()
            )
        );
    }

    #[test]
    fn a_group_writable_ancestor_is_refused_and_a_sticky_one_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o770);
        let err = ensure_private_dir(&shared.join("cache")).unwrap_err();
        assert!(err.to_string().contains("mode 0770"), "{err}");

        chmod(&shared, 0o1777);
        ensure_private_dir(&shared.join("cache")).unwrap();
        let mode = std::fs::metadata(shared.join("cache"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o700);
    }

    /// A symlink above the cache directory is followed: into a safe directory it is fine,
    /// into an open one (even far from the cache path as written) it is refused.
    #[test]
    fn a_symlink_above_is_judged_by_where_it_leads() {
        let tmp = tempfile::tempdir().unwrap();
        let safe = tmp.path().join("safe");
        std::fs::create_dir(&safe).unwrap();
        symlink(&safe, tmp.path().join("to-safe")).unwrap();
        ensure_private_dir(&tmp.path().join("to-safe").join("cache")).unwrap();

        let open = tmp.path().join("open");
        std::fs::create_dir_all(open.join("inner")).unwrap();
        chmod(&open, 0o777);
        symlink("open/inner", tmp.path().join("to-open")).unwrap();
        let err = ensure_private_dir(&tmp.path().join("to-open").join("cache")).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("{} above it is writable", open.display())),
            "{err}"
        );
    }

    #[test]
    fn dot_dot_is_walked_as_the_kernel_does() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir_all(open.join("sub")).unwrap();
        chmod(&open, 0o777);
        // `safe/../open/sub/cache` lies under `open`, though no component is called so last.
        std::fs::create_dir(tmp.path().join("safe")).unwrap();
        let err = ensure_private_dir(&tmp.path().join("safe/../open/sub/cache")).unwrap_err();
        assert!(err.to_string().contains("mode 0777"), "{err}");
    }

    /// Needs root to give a directory away; skipped otherwise.
    #[test]
    fn an_ancestor_owned_by_someone_else_is_refused() {
        if euid() != 0 {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let err = ensure_private_dir(&theirs.join("cache")).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "{} above it is owned by uid 65534",
                theirs.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn the_cache_directory_itself_must_not_be_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        chmod(&tmp.path().join("real"), 0o700);
        symlink("real", tmp.path().join("cache")).unwrap();
        let err = ensure_private_dir(&tmp.path().join("cache")).unwrap_err();
        assert!(err.to_string().contains("symlinks are refused"), "{err}");
    }
}
