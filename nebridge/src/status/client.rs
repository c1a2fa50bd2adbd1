//! The client side of the status socket and the table `codervpn status` prints.

use super::*;

/// Connects to the status socket at `path` and returns the first snapshot (blocking, with
/// a 5 s timeout).
pub fn fetch_status(path: &Path) -> Result<StatusSnapshot, StatusError> {
    let io_err = |what| {
        move |source| StatusError::Socket {
            path: path.to_owned(),
            what,
            source,
        }
    };
    let stream = std::os::unix::net::UnixStream::connect(path).map_err(io_err("connecting"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io_err("setting a read timeout"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(io_err("reading"))?;
    parse_line(path, &line)
}

/// A connection to the status socket that asks questions (`codervpn ping`, `metrics`, …).
pub struct StatusConn {
    path: PathBuf,
    reader: BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl StatusConn {
    pub fn connect(path: &Path) -> Result<Self, StatusError> {
        let io_err = |what| {
            move |source| StatusError::Socket {
                path: path.to_owned(),
                what,
                source,
            }
        };
        let writer = std::os::unix::net::UnixStream::connect(path).map_err(io_err("connecting"))?;
        let reader = BufReader::new(writer.try_clone().map_err(io_err("connecting"))?);
        Ok(Self {
            path: path.to_owned(),
            reader,
            writer,
        })
    }

    /// Sends `request` and waits up to `timeout` for its answer (status lines before it
    /// are skipped). An answer of kind `error` is an error.
    pub fn ask(
        &mut self,
        request: &serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, StatusError> {
        use std::io::Write;
        let path = self.path.clone();
        let io_err = |what| {
            let path = path.clone();
            move |source| StatusError::Socket { path, what, source }
        };
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .map_err(io_err("sending a request"))?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            self.reader
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(io_err("setting a read timeout"))?;
            let mut line = String::new();
            self.reader
                .read_line(&mut line)
                .map_err(io_err("reading the answer"))?;
            if line.is_empty() {
                return Err(StatusError::Closed {
                    path: self.path.clone(),
                });
            }
            let value: serde_json::Value =
                serde_json::from_str(&line).map_err(|source| StatusError::BadLine {
                    path: self.path.clone(),
                    source,
                })?;
            if let Some(kind) = value.get("kind").and_then(|k| k.as_str()) {
                if kind == "error" {
                    let message = value["message"].as_str().unwrap_or("unknown error");
                    return Err(StatusError::Answer {
                        message: message.to_owned(),
                    });
                }
                return Ok(value);
            }
            // A status snapshot sent before the request was read, or a refusal.
            parse_line(&self.path, &line)?;
        }
    }
}

/// One line from the status socket: a snapshot, or the server's refusal as an error.
pub fn parse_line(path: &Path, line: &str) -> Result<StatusSnapshot, StatusError> {
    if line.trim().is_empty() {
        return Err(StatusError::Closed {
            path: path.to_owned(),
        });
    }
    let snapshot = serde_json::from_str(line).map_err(|source| StatusError::BadLine {
        path: path.to_owned(),
        source,
    });
    // A refusal is `{"error": "…"}` alone; a snapshot always has `state` and the rest.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Refusal {
        error: String,
    }
    match serde_json::from_str::<Refusal>(line) {
        Ok(Refusal { error }) => Err(StatusError::Refused {
            path: path.to_owned(),
            message: error,
        }),
        Err(_) => snapshot,
    }
}

/// The table `codervpn status` prints.
pub fn format_table(s: &StatusSnapshot) -> String {
    let mut out = match &s.error {
        Some(e) => format!("Coder Connect: {} ({e})\n", s.state),
        None => format!("Coder Connect: {}\n", s.state),
    };
    if s.workspaces.is_empty() {
        out.push_str("No workspaces.\n");
    } else {
        let header = [
            "WORKSPACE",
            "AGENT",
            "STATUS",
            "LATENCY",
            "PATH",
            "HANDSHAKE",
            "HOST",
        ];
        let mut rows: Vec<[String; 7]> = vec![header.map(str::to_owned)];
        for ws in &s.workspaces {
            if ws.agents.is_empty() {
                rows.push([
                    ws.name.clone(),
                    "-".into(),
                    status_text(AgentStatus::Off).into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("({})", ws.status),
                ]);
            }
            for a in &ws.agents {
                rows.push([
                    ws.name.clone(),
                    a.name.clone(),
                    status_text(a.status).into(),
                    a.latency_ms
                        .map(|l| format!("{l:.0} ms"))
                        .unwrap_or_else(|| "-".into()),
                    path_text(a),
                    a.handshake_age_secs
                        .map(age_text)
                        .unwrap_or_else(|| "never".into()),
                    a.host.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
        }
        let mut widths = [0usize; 7];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  "));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    if s.invalid_agents > 0 {
        out.push_str(&format!(
            "{} invalid agent(s) (unknown workspace, no FQDN or bad id) not shown.\n",
            s.invalid_agents
        ));
    }
    out
}

fn status_text(s: AgentStatus) -> &'static str {
    match s {
        AgentStatus::Off => "off",
        AgentStatus::Connecting => "connecting",
        AgentStatus::NoRecentHandshake => "no recent handshake",
        AgentStatus::Okay => "okay",
        AgentStatus::HighLatency => "high latency",
    }
}

fn path_text(a: &AgentView) -> String {
    match (a.p2p, &a.derp_region) {
        (None, _) => "-".into(),
        (Some(true), _) => "p2p".into(),
        (Some(false), Some(region)) => format!("DERP {region}"),
        (Some(false), None) => "DERP".into(),
    }
}

fn age_text(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}
