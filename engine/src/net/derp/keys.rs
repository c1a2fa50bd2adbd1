//! Node keys, the NaCl box that seals the handshake, and the handshake's JSON payloads
//! (tailnet.md §13.3 "Sealed box", "Client-info JSON", "Server-info JSON").
//!
//! Node keys are X25519 key pairs; a DERP server uses one too. The sealed box is NaCl
//! `crypto_box` (X25519 + XSalsa20-Poly1305) with a random 24-byte nonce written in front of
//! the ciphertext, as Go's `key.NodePrivate.SealTo` does.

use std::fmt;

use crypto_box::aead::Aead;
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use rand_core::{OsRng, RngCore};
use serde_json::{Map, Value};

/// Length of a node public key on the wire.
pub const KEY_LEN: usize = 32;
/// Length of the nonce in front of every sealed box.
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag inside every sealed box.
pub const TAG_LEN: usize = 16;
/// DERP protocol version spoken here (`derp.ProtocolVersion`).
pub const PROTOCOL_VERSION: u32 = 2;

/// A node's (or a DERP server's) X25519 public key: how DERP addresses peers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodePublicKey([u8; KEY_LEN]);

impl NodePublicKey {
    /// Wraps 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Reads a key from the first 32 bytes of `b`; `None` when `b` is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        let bytes: [u8; KEY_LEN] = b.get(..KEY_LEN)?.try_into().ok()?;
        Some(Self(bytes))
    }

    /// Parses 64 hex digits (the `Derp-Public-Key` header form, Go's `UntypedHexString`).
    pub fn from_hex(s: &str) -> Result<Self, KeyParseError> {
        let mut bytes = [0u8; KEY_LEN];
        hex::decode_to_slice(s.trim(), &mut bytes).map_err(|source| KeyParseError {
            input: s.chars().take(80).collect(),
            source,
        })?;
        Ok(Self(bytes))
    }

    /// 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits, for logs (`[0a1b2c3d]`).
    pub fn short(&self) -> ShortKey {
        ShortKey(*self)
    }
}

impl fmt::Debug for NodePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nodekey:{}", self.to_hex())
    }
}

impl fmt::Display for NodePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nodekey:{}", self.to_hex())
    }
}

/// Display adapter printing a key's first 8 hex digits.
#[derive(Clone, Copy)]
pub struct ShortKey(NodePublicKey);

impl fmt::Display for ShortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", hex::encode(&self.0.0[..4]))
    }
}

impl fmt::Debug for ShortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `Derp-Public-Key` (or any key) text that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("{input:?} is not a 32-byte key in hex: {source}")]
pub struct KeyParseError {
    input: String,
    #[source]
    source: hex::FromHexError,
}

/// A node's (or DERP server's) X25519 private key. Never printed; zeroed on drop.
#[derive(Clone)]
pub struct NodePrivateKey {
    secret: SecretKey,
    public: NodePublicKey,
}

impl NodePrivateKey {
    /// A fresh random key from the operating system's RNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// Wraps 32 raw private key bytes (clamping is applied by X25519 itself).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let secret = SecretKey::from_bytes(bytes);
        let public = NodePublicKey(secret.public_key().to_bytes());
        Self { secret, public }
    }

    /// The raw private bytes, for handing the key to another library. Handle with care.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.secret.to_bytes()
    }

    /// The matching public key.
    pub fn public_key(&self) -> NodePublicKey {
        self.public
    }

    /// Seals `msg` to `peer`: random 24-byte nonce ‖ XSalsa20-Poly1305 ciphertext.
    pub fn seal_to(&self, peer: &NodePublicKey, msg: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        self.seal_to_with_nonce(peer, msg, nonce)
    }

    /// [`Self::seal_to`] with a caller-chosen nonce (tests and fuzz seeds only; a nonce must
    /// never be reused with the same key pair).
    pub fn seal_to_with_nonce(
        &self,
        peer: &NodePublicKey,
        msg: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Vec<u8> {
        let sbox = SalsaBox::new(&PublicKey::from_bytes(peer.0), &self.secret);
        let mut out = Vec::with_capacity(NONCE_LEN + msg.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        // Encryption of an in-memory buffer with a valid key cannot fail.
        if let Ok(ct) = sbox.encrypt(&nonce.into(), msg) {
            out.extend_from_slice(&ct);
        }
        out
    }

    /// Opens a box sealed by `peer` to this key.
    pub fn open_from(&self, peer: &NodePublicKey, sealed: &[u8]) -> Result<Vec<u8>, BoxError> {
        let Some((nonce, ct)) = sealed.split_first_chunk::<NONCE_LEN>() else {
            return Err(BoxError::Short { len: sealed.len() });
        };
        let sbox = SalsaBox::new(&PublicKey::from_bytes(peer.0), &self.secret);
        sbox.decrypt(&(*nonce).into(), ct)
            .map_err(|_| BoxError::Open {
                peer: *peer,
                len: sealed.len(),
            })
    }
}

impl fmt::Debug for NodePrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "privkey:[redacted] (public {})", self.public.short())
    }
}

/// A sealed box that could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BoxError {
    #[error("sealed box of {len} bytes is shorter than its 24-byte nonce")]
    Short { len: usize },
    #[error("cannot open the {len}-byte sealed box with key {peer}: wrong key or corrupted")]
    Open { peer: NodePublicKey, len: usize },
}

/// The client-info JSON a client seals to the server (Go's `derp.clientInfo`). `Debug`
/// never shows the mesh key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Protocol version (`version`); 0 when absent.
    pub version: u32,
    /// Pre-shared mesh key (`meshKey`), only for trusted servers of one region.
    pub mesh_key: Option<String>,
    /// Whether the client answers server pings (`CanAckPings`).
    pub can_ack_pings: bool,
    /// Whether the client is a prober (`IsProber`).
    pub is_prober: bool,
}

impl fmt::Debug for ClientInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientInfo")
            .field("version", &self.version)
            .field("mesh_key", &self.mesh_key.as_ref().map(|_| "[redacted]"))
            .field("can_ack_pings", &self.can_ack_pings)
            .field("is_prober", &self.is_prober)
            .finish()
    }
}

impl Default for ClientInfo {
    /// What our client sends: `{"version":2,"CanAckPings":true}`.
    fn default() -> Self {
        Self {
            version: PROTOCOL_VERSION,
            mesh_key: None,
            can_ack_pings: true,
            is_prober: false,
        }
    }
}

impl ClientInfo {
    /// JSON in Go's field order; `meshKey` and `IsProber` only when set.
    pub fn to_json(&self) -> Vec<u8> {
        let mut m = Map::new();
        if self.version != 0 {
            m.insert("version".into(), self.version.into());
        }
        if let Some(k) = self.mesh_key.as_ref().filter(|k| !k.is_empty()) {
            m.insert("meshKey".into(), k.clone().into());
        }
        m.insert("CanAckPings".into(), self.can_ack_pings.into());
        if self.is_prober {
            m.insert("IsProber".into(), true.into());
        }
        // serde_json keeps insertion order only with `preserve_order`; write by hand instead.
        write_object(&m, &["version", "meshKey", "CanAckPings", "IsProber"])
    }

    /// Parses like Go's `encoding/json`: keys match case-insensitively, unknown keys are
    /// ignored, a present key of the wrong type is an error.
    pub fn from_json(b: &[u8]) -> Result<Self, InfoJsonError> {
        let obj = parse_object(b, "client info")?;
        Ok(Self {
            version: get_u32(&obj, "version", "client info")?.unwrap_or(0),
            mesh_key: get_str(&obj, "meshKey", "client info")?.filter(|k| !k.is_empty()),
            can_ack_pings: get_bool(&obj, "CanAckPings", "client info")?.unwrap_or(false),
            is_prober: get_bool(&obj, "IsProber", "client info")?.unwrap_or(false),
        })
    }
}

/// The server-info JSON a server seals to the client (Go's `derp.serverInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Protocol version (`version`); 0 when absent.
    pub version: u32,
    /// Send-rate limit in bytes per second over all frame bytes; 0 = none.
    pub token_bucket_bytes_per_second: u32,
    /// Burst allowed above the rate; 0 = unspecified.
    pub token_bucket_bytes_burst: u32,
}

impl Default for ServerInfo {
    /// What our server sends: `{"version":2}`.
    fn default() -> Self {
        Self {
            version: PROTOCOL_VERSION,
            token_bucket_bytes_per_second: 0,
            token_bucket_bytes_burst: 0,
        }
    }
}

impl ServerInfo {
    /// JSON in Go's field order, zero fields omitted.
    pub fn to_json(&self) -> Vec<u8> {
        let mut m = Map::new();
        if self.version != 0 {
            m.insert("version".into(), self.version.into());
        }
        if self.token_bucket_bytes_per_second != 0 {
            let v = self.token_bucket_bytes_per_second;
            m.insert("TokenBucketBytesPerSecond".into(), v.into());
        }
        if self.token_bucket_bytes_burst != 0 {
            m.insert(
                "TokenBucketBytesBurst".into(),
                self.token_bucket_bytes_burst.into(),
            );
        }
        write_object(
            &m,
            &[
                "version",
                "TokenBucketBytesPerSecond",
                "TokenBucketBytesBurst",
            ],
        )
    }

    /// Parses like Go's `encoding/json` (see [`ClientInfo::from_json`]).
    pub fn from_json(b: &[u8]) -> Result<Self, InfoJsonError> {
        let obj = parse_object(b, "server info")?;
        let what = "server info";
        Ok(Self {
            version: get_u32(&obj, "version", what)?.unwrap_or(0),
            token_bucket_bytes_per_second: get_u32(&obj, "TokenBucketBytesPerSecond", what)?
                .unwrap_or(0),
            token_bucket_bytes_burst: get_u32(&obj, "TokenBucketBytesBurst", what)?.unwrap_or(0),
        })
    }
}

/// Handshake JSON that Go's `encoding/json` would refuse.
#[derive(Debug, thiserror::Error)]
pub enum InfoJsonError {
    #[error("{what} is not a JSON object: {source}")]
    NotJson {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} is JSON but not an object")]
    NotObject { what: &'static str },
    #[error("{what} field {field:?} has the wrong type: {value}")]
    FieldType {
        what: &'static str,
        field: &'static str,
        value: String,
    },
}

fn write_object(m: &Map<String, Value>, order: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    let mut first = true;
    for k in order {
        let Some(v) = m.get(*k) else { continue };
        if !first {
            out.push(b',');
        }
        first = false;
        // Writing a `Value` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, k);
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, v);
    }
    out.push(b'}');
    out
}

fn parse_object(b: &[u8], what: &'static str) -> Result<Map<String, Value>, InfoJsonError> {
    match serde_json::from_slice::<Value>(b) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(InfoJsonError::NotObject { what }),
        Err(source) => Err(InfoJsonError::NotJson { what, source }),
    }
}

/// Go matches JSON keys to fields case-insensitively, preferring an exact match.
fn lookup<'a>(m: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    m.get(field).or_else(|| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(field))
            .map(|(_, v)| v)
    })
}

fn wrong_type(what: &'static str, field: &'static str, v: &Value) -> InfoJsonError {
    let mut value = v.to_string();
    value.truncate(64);
    InfoJsonError::FieldType { what, field, value }
}

fn get_u32(
    m: &Map<String, Value>,
    field: &'static str,
    what: &'static str,
) -> Result<Option<u32>, InfoJsonError> {
    match lookup(m, field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => Err(wrong_type(what, field, v)),
        },
    }
}

fn get_bool(
    m: &Map<String, Value>,
    field: &'static str,
    what: &'static str,
) -> Result<Option<bool>, InfoJsonError> {
    match lookup(m, field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong_type(what, field, v)),
    }
}

fn get_str(
    m: &Map<String, Value>,
    field: &'static str,
    what: &'static str,
) -> Result<Option<String>, InfoJsonError> {
    match lookup(m, field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(wrong_type(what, field, v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_info_json_is_gos_default() {
        assert_eq!(
            ClientInfo::default().to_json(),
            br#"{"version":2,"CanAckPings":true}"#
        );
    }

    #[test]
    fn client_info_json_carries_mesh_key_and_prober_only_when_set() {
        let info = ClientInfo {
            mesh_key: Some("abc".into()),
            is_prober: true,
            ..ClientInfo::default()
        };
        assert_eq!(
            info.to_json(),
            br#"{"version":2,"meshKey":"abc","CanAckPings":true,"IsProber":true}"#
        );
        assert_eq!(ClientInfo::from_json(&info.to_json()).unwrap(), info);
    }

    #[test]
    fn mesh_key_is_never_printed() {
        let info = ClientInfo {
            mesh_key: Some("hunter2".into()),
            ..ClientInfo::default()
        };
        assert!(!format!("{info:?}").contains("hunter2"));
    }

    #[test]
    fn info_json_keys_match_case_insensitively_like_go() {
        let info = ClientInfo::from_json(br#"{"VERSION":2,"canackpings":true,"x":1}"#).unwrap();
        assert_eq!(info, ClientInfo::default());
    }

    #[test]
    fn info_json_field_of_wrong_type_is_refused() {
        let err = ClientInfo::from_json(br#"{"version":"2"}"#).unwrap_err();
        assert!(err.to_string().contains("\"version\""), "{err}");
        assert!(ClientInfo::from_json(b"[1]").is_err());
        assert!(ClientInfo::from_json(b"{").is_err());
    }

    #[test]
    fn server_info_json_is_version_2_with_optional_token_bucket() {
        assert_eq!(ServerInfo::default().to_json(), br#"{"version":2}"#);
        let info = ServerInfo {
            token_bucket_bytes_per_second: 1000,
            token_bucket_bytes_burst: 2000,
            ..ServerInfo::default()
        };
        let json = info.to_json();
        assert_eq!(
            json,
            br#"{"version":2,"TokenBucketBytesPerSecond":1000,"TokenBucketBytesBurst":2000}"#
        );
        assert_eq!(ServerInfo::from_json(&json).unwrap(), info);
    }

    #[test]
    fn sealed_box_opens_with_the_right_keys_only() {
        let a = NodePrivateKey::generate();
        let b = NodePrivateKey::generate();
        let c = NodePrivateKey::generate();
        let sealed = a.seal_to(&b.public_key(), b"hello");
        assert_eq!(sealed.len(), NONCE_LEN + 5 + TAG_LEN);
        assert_eq!(b.open_from(&a.public_key(), &sealed).unwrap(), b"hello");
        assert!(matches!(
            b.open_from(&c.public_key(), &sealed),
            Err(BoxError::Open { .. })
        ));
        assert_eq!(
            b.open_from(&a.public_key(), &sealed[..10]),
            Err(BoxError::Short { len: 10 })
        );
    }

    #[test]
    fn private_key_is_never_printed() {
        let k = NodePrivateKey::from_bytes([7; 32]);
        let shown = format!("{k:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&hex::encode([7u8; 4])));
    }

    #[test]
    fn public_key_hex_round_trips() {
        let k = NodePrivateKey::generate().public_key();
        assert_eq!(NodePublicKey::from_hex(&k.to_hex()).unwrap(), k);
        assert!(NodePublicKey::from_hex("zz").is_err());
    }
}
