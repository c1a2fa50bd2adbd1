//! Running a system tool from the settings code (`resolvectl`, `resolvconf`): stdin given
//! or closed, stdout and stderr captured, and a deadline — a tool that hangs (a stuck
//! D-Bus, a resolvconf lock) is killed and reported, so `up` and its exit never wait on it
//! for ever. Blocking: call it from a blocking thread.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one run may take (Debian's resolvconf waits up to 10 s for its lock).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(15);

/// A tool's run failed; names the command line.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {detail}")]
pub struct ToolError {
    pub command: String,
    pub detail: String,
}

/// `bin args…`, for messages.
fn command_line(bin: &Path, args: &[&str]) -> String {
    format!("{} {}", bin.display(), args.join(" "))
}

/// Runs `bin` with `args` (and `stdin`) within `limit`; its stdout, if it exited with 0.
pub fn run(
    bin: &Path,
    args: &[&str],
    stdin: Option<String>,
    limit: Duration,
) -> Result<String, ToolError> {
    let out = run_any_status(bin, args, stdin, limit)?;
    if !out.status.success() {
        return Err(ToolError {
            command: command_line(bin, args),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `bin` with `args` (and `stdin`) within `limit`, whatever its exit status.
pub fn run_any_status(
    bin: &Path,
    args: &[&str],
    stdin: Option<String>,
    limit: Duration,
) -> Result<Output, ToolError> {
    let fail = |detail: String| ToolError {
        command: command_line(bin, args),
        detail,
    };
    let mut child = Command::new(bin)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes())
            .map_err(|e| fail(format!("writing its input: {e}")))?;
    }
    // These tools print a few lines, well within a pipe's buffer: poll for the exit, then
    // read. A child that never exits is killed (not yet reaped, so the pid is still its
    // own).
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer within {limit:?}")));
            }
            Err(e) => return Err(fail(format!("waiting for it: {e}"))),
        }
    }
    child
        .wait_with_output()
        .map_err(|e| fail(format!("reading its output: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_hanging_tool_is_killed_at_the_deadline() {
        let t0 = Instant::now();
        let e = run(
            Path::new("sleep"),
            &["30"],
            None,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(e.to_string(), "`sleep 30` failed: no answer within 200ms");
    }

    #[test]
    fn output_input_and_failures_are_reported() {
        let out = run(Path::new("cat"), &[], Some("hello\n".into()), TOOL_TIMEOUT).unwrap();
        assert_eq!(out, "hello\n");
        let e = run(
            Path::new("sh"),
            &["-c", "echo nope >&2; exit 3"],
            None,
            TOOL_TIMEOUT,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`sh -c echo nope >&2; exit 3` failed: exit status: 3: nope"
        );
        let e = run(Path::new("/nonexistent/tool"), &[], None, TOOL_TIMEOUT).unwrap_err();
        assert!(e.detail.starts_with("cannot run it: "), "{e}");
    }
}
