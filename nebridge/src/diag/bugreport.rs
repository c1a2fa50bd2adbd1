//! `codervpn bugreport`: one `.tar.gz` with what a maintainer asks for first — version, OS,
//! the status document, the network view and a netcheck, the last log lines, the network
//! settings applied — with the token, `--header` values and the session's private keys
//! replaced by `[redacted]` before anything is written.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;

/// The directory inside the archive.
pub const TOP: &str = "codervpn-bugreport";

/// Writes `files` (name, text) to a new gzipped tar at `path`, mode 0600; an existing file
/// is not replaced.
pub fn write_archive(path: &Path, files: &[(String, String)]) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let mut tar = tar::Builder::new(GzEncoder::new(file, Compression::default()));
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for (name, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, format!("{TOP}/{name}"), text.as_bytes())?;
    }
    let gz = tar.into_inner()?;
    gz.finish()?.flush()
}

/// This machine: kernel (uname) and distribution (`/etc/os-release`).
pub fn os_description() -> String {
    // SAFETY: a zeroed utsname is a valid out-parameter for uname.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is valid for writes.
    let kernel = if unsafe { libc::uname(&mut u) } == 0 {
        let f = |a: &[libc::c_char]| {
            // SAFETY: uname NUL-terminates every field.
            unsafe { std::ffi::CStr::from_ptr(a.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        };
        format!(
            "{} {} {} {}",
            f(&u.sysname),
            f(&u.release),
            f(&u.version),
            f(&u.machine)
        )
    } else {
        "unknown".to_owned()
    };
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    format!("kernel: {kernel}\n\n/etc/os-release:\n{release}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_archive_holds_every_file_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.tar.gz");
        let files = vec![
            ("a.txt".to_owned(), "alpha\n".to_owned()),
            ("b.json".to_owned(), "{}".to_owned()),
        ];
        write_archive(&path, &files).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(&path).unwrap(),
        ));
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            seen.push((e.path().unwrap().display().to_string(), s));
        }
        assert_eq!(
            seen,
            vec![
                (format!("{TOP}/a.txt"), "alpha\n".to_owned()),
                (format!("{TOP}/b.json"), "{}".to_owned())
            ]
        );
        assert!(
            write_archive(&path, &files).is_err(),
            "an existing file is not replaced"
        );
    }
}
