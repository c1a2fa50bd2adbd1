//! A session behind the C API: the engine's embedded mode on a runtime this session owns,
//! with the host's C callbacks as its manager-side handlers.

use std::ffi::{CStr, c_char, c_void};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use codervpn_engine::host::StartParams;
use codervpn_engine::host::TunnelExit;
use codervpn_engine::host::embedded::{self, Handlers};
use codervpn_engine::host::{JoinOptions, TailnetConnector};
use codervpn_proto::manager::ManagerClient;
use codervpn_proto::vpn;
use prost::Message;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::{
    CODERVPN_ERR_BAD_FD, CODERVPN_ERR_HANDSHAKE, CODERVPN_ERR_INVALID_CONFIG,
    CODERVPN_ERR_NULL_ARGUMENT, CODERVPN_ERR_RUNTIME, CODERVPN_ERR_START_FAILED,
    CODERVPN_ERR_STOP_FAILED, CODERVPN_ERR_WRONG_THREAD, CODERVPN_ERROR_BUFFER_LEN, Error,
    codervpn_callbacks, codervpn_config, optional_str, required_str,
};

/// `start` is answered within the tunnel's own 60 s bound; this only guards against a
/// tunnel that stopped answering altogether.
const START_TIMEOUT: Duration = Duration::from_secs(75);
/// How long `stop` waits for the tunnel's `StopResponse`, then for the tunnel to end.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stop waits for the host's callbacks still running to return.
const CALLBACK_GRACE: Duration = Duration::from_secs(5);

/// A validated `codervpn_config`.
pub(crate) struct Config {
    request: vpn::StartRequest,
    socks5: Option<SocketAddr>,
}

impl Config {
    /// Copies and validates `cfg` (and `tun_fd`) into a `StartRequest`.
    ///
    /// # Safety
    ///
    /// As `codervpn_start`'s contract on `cfg`.
    pub(crate) unsafe fn from_c(cfg: *const codervpn_config, tun_fd: i32) -> Result<Self, Error> {
        if cfg.is_null() {
            return Err(Error::new(CODERVPN_ERR_NULL_ARGUMENT, "cfg is NULL"));
        }
        // SAFETY: non-NULL and valid per the contract.
        let cfg = unsafe { &*cfg };
        // SAFETY (all `*_str` calls below): the contract makes each string NULL or
        // NUL-terminated.
        let coder_url = unsafe { required_str(cfg.coder_url, "cfg.coder_url") }?;
        let api_token = unsafe { required_str(cfg.session_token, "cfg.session_token") }?;
        let device_id = unsafe { optional_str(cfg.device_id, "cfg.device_id") }?;
        let device_os = unsafe { optional_str(cfg.device_os, "cfg.device_os") }?;
        let version =
            unsafe { optional_str(cfg.coder_desktop_version, "cfg.coder_desktop_version") }?;
        let socks5 = match unsafe { optional_str(cfg.socks5_addr, "cfg.socks5_addr") }? {
            None => None,
            Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| {
                Error::new(
                    CODERVPN_ERR_INVALID_CONFIG,
                    format!("cfg.socks5_addr {s:?}: {e} (want IP:PORT)"),
                )
            })?),
        };
        // SAFETY: forwarded contract on `headers`/`headers_len`.
        let headers = unsafe { headers_from_c(cfg) }?;
        check_tun_fd(tun_fd)?;
        let request = vpn::StartRequest {
            tunnel_file_descriptor: tun_fd,
            coder_url,
            api_token,
            headers,
            device_id: device_id.unwrap_or_default(),
            device_os: device_os.unwrap_or_default(),
            coder_desktop_version: version.unwrap_or_default(),
        };
        // The tunnel validates the same way; failing here gives the host a typed code.
        StartParams::from_request(&request)
            .map_err(|e| Error::new(CODERVPN_ERR_INVALID_CONFIG, e.to_string()))?;
        Ok(Self { request, socks5 })
    }
}

/// # Safety
///
/// `cfg.headers` must point to `cfg.headers_len` valid elements (or be NULL with 0).
unsafe fn headers_from_c(cfg: &codervpn_config) -> Result<Vec<vpn::start_request::Header>, Error> {
    if cfg.headers_len == 0 {
        return Ok(Vec::new());
    }
    if cfg.headers.is_null() {
        return Err(Error::new(
            CODERVPN_ERR_NULL_ARGUMENT,
            format!("cfg.headers is NULL with headers_len {}", cfg.headers_len),
        ));
    }
    // SAFETY: non-NULL, `headers_len` elements per the contract.
    let raw = unsafe { std::slice::from_raw_parts(cfg.headers, cfg.headers_len) };
    raw.iter()
        .enumerate()
        .map(|(i, h)| {
            // SAFETY: each string NULL or NUL-terminated per the contract.
            let name = unsafe { required_str(h.name, &format!("cfg.headers[{i}].name")) }?;
            let value = unsafe { required_str(h.value, &format!("cfg.headers[{i}].value")) }?;
            if name.trim().is_empty() {
                return Err(Error::new(
                    CODERVPN_ERR_INVALID_CONFIG,
                    format!("cfg.headers[{i}].name is empty"),
                ));
            }
            Ok(vpn::start_request::Header { name, value })
        })
        .collect()
}

fn check_tun_fd(fd: i32) -> Result<(), Error> {
    if fd == -1 {
        return Ok(());
    }
    // SAFETY: F_GETFD only queries flags; an invalid fd yields -1/EBADF.
    if fd < -1 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Error::new(
            CODERVPN_ERR_BAD_FD,
            format!("tun_fd {fd} is neither -1 (userspace) nor an open descriptor"),
        ));
    }
    Ok(())
}

/// Blocking on the session's runtime from one of its own threads (a callback) — or any
/// Tokio thread — would deadlock or panic.
pub(crate) fn refuse_runtime_thread() -> Result<(), Error> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Err(Error::new(
            CODERVPN_ERR_WRONG_THREAD,
            "called from a callback or another Tokio runtime thread; call it from a thread of your own",
        )),
        Err(_) => Ok(()),
    }
}

/// A started session.
pub(crate) struct Session {
    rt: Runtime,
    client: ManagerClient,
    tunnel: JoinHandle<TunnelExit>,
    forwarder: JoinHandle<()>,
    /// Host callbacks running right now.
    in_callbacks: Arc<AtomicUsize>,
}

impl Session {
    /// Starts the embedded tunnel, then sends it `start` and waits for the answer.
    pub(crate) fn start(
        config: Config,
        callbacks: codervpn_callbacks,
        ctx: *mut c_void,
    ) -> Result<Self, Error> {
        refuse_runtime_thread()?;
        codervpn_engine::host::install_subscriber();
        codervpn_engine::host::ignore_sigpipe_if_default();
        let host = Host {
            callbacks,
            ctx,
            running: Arc::default(),
        };
        let in_callbacks = host.running.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("codervpn")
            .enable_all()
            .build()
            .map_err(|e| Error::new(CODERVPN_ERR_RUNTIME, format!("starting the runtime: {e}")))?;
        let connector = TailnetConnector::new(JoinOptions {
            socks5: config.socks5,
            ..Default::default()
        });
        let (settings_host, log_host) = (host.clone(), host.clone());
        let handlers = Handlers {
            on_settings: Box::new(move |req| {
                let bytes = req.encode_to_vec();
                let host = settings_host.clone();
                Box::pin(async move {
                    // The host may block until the system applied them.
                    tokio::task::spawn_blocking(move || host.network_settings(&bytes))
                        .await
                        .unwrap_or_else(|e| Err(format!("network settings callback: {e}")))
                })
            }),
            on_log: Some(Box::new(move |l| log_host.log(&l))),
        };
        let tunnel = rt
            .block_on(embedded::start_with(connector, handlers))
            .map_err(|e| {
                let code = match &e {
                    embedded::EmbeddedError::SocketPair(_) => CODERVPN_ERR_RUNTIME,
                    embedded::EmbeddedError::Handshake(_) => CODERVPN_ERR_HANDSHAKE,
                };
                Error::new(code, e.to_string())
            })?;
        let forwarder = rt.spawn(forward_updates(tunnel.updates, host));
        let session = Session {
            rt,
            client: tunnel.client,
            tunnel: tunnel.tunnel,
            forwarder,
            in_callbacks,
        };
        let started = session.rt.block_on(async {
            tokio::time::timeout(START_TIMEOUT, session.client.start(config.request)).await
        });
        let message = match started {
            Ok(Ok(r)) if r.success => return Ok(session),
            Ok(Ok(r)) => r.error_message,
            Ok(Err(e)) => format!("the tunnel stopped answering: {e}"),
            Err(_) => format!("no answer to start within {START_TIMEOUT:?}"),
        };
        let _ = session.stop();
        Err(Error::new(CODERVPN_ERR_START_FAILED, message))
    }

    /// Stops the tunnel and waits for every thread of the runtime to end — at most
    /// [`CALLBACK_GRACE`] for a host callback that does not return.
    pub(crate) fn stop(self) -> Result<(), Error> {
        let Session {
            rt,
            client,
            tunnel,
            forwarder,
            in_callbacks,
        } = self;
        let confirmed = rt.block_on(async {
            let confirmed = tokio::time::timeout(STOP_TIMEOUT, client.stop()).await;
            match tokio::time::timeout(EXIT_TIMEOUT, tunnel).await {
                Ok(Ok(exit)) => debug!(?exit, "embedded tunnel ended"),
                Ok(Err(e)) => debug!(error = %e, "embedded tunnel task failed"),
                Err(_) => debug!("embedded tunnel still running; dropping it"),
            }
            confirmed
        });
        drop(client);
        forwarder.abort();
        // Waits for the worker and blocking threads, but not forever: a host callback that
        // never returns would hold its thread (and this call) for good.
        rt.shutdown_timeout(CALLBACK_GRACE);
        let stuck = in_callbacks.load(Ordering::SeqCst);
        if stuck > 0 {
            return Err(Error::new(
                CODERVPN_ERR_STOP_FAILED,
                format!(
                    "stopped, but {stuck} host callback(s) had not returned {CALLBACK_GRACE:?} later; \
                     they keep their thread and may still use ctx when they do"
                ),
            ));
        }
        match confirmed {
            Ok(Ok(r)) if r.success => Ok(()),
            Ok(Ok(r)) => Err(Error::new(
                CODERVPN_ERR_STOP_FAILED,
                format!("the tunnel refused to stop: {}", r.error_message),
            )),
            Ok(Err(e)) => Err(Error::new(
                CODERVPN_ERR_STOP_FAILED,
                format!("the tunnel stopped answering: {e}"),
            )),
            Err(_) => Err(Error::new(
                CODERVPN_ERR_STOP_FAILED,
                format!("no answer to stop within {STOP_TIMEOUT:?}"),
            )),
        }
    }
}

/// Hands each update to the host, in order, on a blocking thread (a slow callback holds no
/// runtime worker). Updates that arrive while a callback runs are merged into the next one.
async fn forward_updates(mut updates: embedded::PeerUpdates, host: Host) {
    while let Some(u) = updates.recv().await {
        let host = host.clone();
        let bytes = u.encode_to_vec();
        if tokio::task::spawn_blocking(move || host.peer_update(&bytes))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The host's callbacks and context, and how many of its callbacks are running.
#[derive(Clone)]
struct Host {
    callbacks: codervpn_callbacks,
    ctx: *mut c_void,
    running: Arc<AtomicUsize>,
}

/// Counts one host callback while it runs.
struct Running<'a>(&'a AtomicUsize);

impl<'a> Running<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

// SAFETY: `codervpn_start`'s contract makes `ctx` usable from any thread, and the
// callbacks are plain C function pointers.
unsafe impl Send for Host {}
// SAFETY: as above.
unsafe impl Sync for Host {}

impl Host {
    fn network_settings(&self, request: &[u8]) -> Result<(), String> {
        let Some(f) = self.callbacks.network_settings else {
            return Ok(());
        };
        let mut error: Vec<c_char> = vec![0; CODERVPN_ERROR_BUFFER_LEN];
        let _running = Running::new(&self.running);
        // SAFETY: the host's callback, with its own ctx, a buffer of `request.len()`
        // bytes valid during the call and a zeroed buffer of `error.len()`.
        let rc = unsafe {
            f(
                self.ctx,
                request.as_ptr(),
                request.len(),
                error.as_mut_ptr(),
                error.len(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        if let Some(last) = error.last_mut() {
            *last = 0;
        }
        // SAFETY: NUL-terminated: the last element was just set to 0.
        let message = unsafe { CStr::from_ptr(error.as_ptr()) }.to_string_lossy();
        if message.is_empty() {
            Err(format!("the host refused the network settings (code {rc})"))
        } else {
            Err(message.into_owned())
        }
    }

    fn peer_update(&self, update: &[u8]) {
        if let Some(f) = self.callbacks.peer_update {
            let _running = Running::new(&self.running);
            // SAFETY: the host's callback with its ctx and a buffer valid during the call.
            unsafe { f(self.ctx, update.as_ptr(), update.len()) };
        }
    }

    fn log(&self, l: &vpn::Log) {
        let Some(f) = self.callbacks.log else {
            return;
        };
        let line = log_line(l);
        let _running = Running::new(&self.running);
        // SAFETY: the host's callback with its ctx and a NUL-terminated line valid
        // during the call.
        unsafe { f(self.ctx, l.level, line.as_ptr()) };
    }
}

/// "message name=value …" without interior NULs.
fn log_line(l: &vpn::Log) -> std::ffi::CString {
    let mut line = l.message.clone();
    for field in &l.fields {
        line.push(' ');
        line.push_str(&field.name);
        line.push('=');
        line.push_str(&field.value);
    }
    std::ffi::CString::new(line.replace('\0', " ")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(s: &str) -> std::ffi::CString {
        std::ffi::CString::new(s).unwrap()
    }

    fn config(url: &std::ffi::CString, token: &std::ffi::CString) -> codervpn_config {
        codervpn_config {
            coder_url: url.as_ptr(),
            session_token: token.as_ptr(),
            headers: std::ptr::null(),
            headers_len: 0,
            device_id: std::ptr::null(),
            device_os: std::ptr::null(),
            coder_desktop_version: std::ptr::null(),
            socks5_addr: std::ptr::null(),
        }
    }

    #[test]
    fn config_copies_url_token_and_telemetry() {
        let (url, token, os) = (
            cstr("https://coder.example.com"),
            cstr("t0k"),
            cstr("macOS"),
        );
        let mut c = config(&url, &token);
        c.device_os = os.as_ptr();
        let cfg = unsafe { Config::from_c(&c, -1) }.unwrap();
        assert_eq!(cfg.request.coder_url, "https://coder.example.com");
        assert_eq!(cfg.request.api_token, "t0k");
        assert_eq!(cfg.request.device_os, "macOS");
        assert_eq!(cfg.request.tunnel_file_descriptor, -1);
        assert!(cfg.socks5.is_none());
    }

    #[test]
    fn missing_token_is_a_null_argument() {
        let url = cstr("https://coder.example.com");
        let mut c = config(&url, &url);
        c.session_token = std::ptr::null();
        let err = unsafe { Config::from_c(&c, -1) }.err().unwrap();
        assert_eq!(err.code, CODERVPN_ERR_NULL_ARGUMENT);
        assert!(err.message.contains("session_token"), "{}", err.message);
    }

    #[test]
    fn non_utf8_url_is_refused() {
        let bad = std::ffi::CString::new(vec![0xff, 0xfe]).unwrap();
        let token = cstr("t");
        let c = config(&bad, &token);
        let err = unsafe { Config::from_c(&c, -1) }.err().unwrap();
        assert_eq!(err.code, crate::CODERVPN_ERR_INVALID_UTF8);
    }

    #[test]
    fn relative_url_is_an_invalid_config() {
        let (url, token) = (cstr("coder.example.com"), cstr("t"));
        let err = unsafe { Config::from_c(&config(&url, &token), -1) }
            .err()
            .unwrap();
        assert_eq!(err.code, CODERVPN_ERR_INVALID_CONFIG);
    }

    #[test]
    fn headers_are_copied_and_null_headers_with_a_length_refused() {
        let (url, token, n, v) = (cstr("https://c.example"), cstr("t"), cstr("X-A"), cstr("1"));
        let hs = [crate::codervpn_header {
            name: n.as_ptr(),
            value: v.as_ptr(),
        }];
        let mut c = config(&url, &token);
        c.headers = hs.as_ptr();
        c.headers_len = 1;
        let cfg = unsafe { Config::from_c(&c, -1) }.unwrap();
        assert_eq!(cfg.request.headers[0].name, "X-A");
        assert_eq!(cfg.request.headers[0].value, "1");
        c.headers = std::ptr::null();
        let err = unsafe { Config::from_c(&c, -1) }.err().unwrap();
        assert_eq!(err.code, CODERVPN_ERR_NULL_ARGUMENT);
    }

    #[test]
    fn closed_tun_fd_is_a_bad_fd() {
        let (url, token) = (cstr("https://c.example"), cstr("t"));
        let err = unsafe { Config::from_c(&config(&url, &token), 1_000_000) }
            .err()
            .unwrap();
        assert_eq!(err.code, CODERVPN_ERR_BAD_FD);
    }

    #[test]
    fn bad_socks5_address_is_an_invalid_config() {
        let (url, token, s) = (cstr("https://c.example"), cstr("t"), cstr("localhost"));
        let mut c = config(&url, &token);
        c.socks5_addr = s.as_ptr();
        let err = unsafe { Config::from_c(&c, -1) }.err().unwrap();
        assert_eq!(err.code, CODERVPN_ERR_INVALID_CONFIG);
    }

    #[test]
    fn log_line_appends_fields() {
        let l = vpn::Log {
            level: 1,
            message: "peer up".into(),
            logger_names: vec![],
            fields: vec![vpn::log::Field {
                name: "agent".into(),
                value: "dev".into(),
            }],
        };
        assert_eq!(log_line(&l).to_str().unwrap(), "peer up agent=dev");
    }
}
