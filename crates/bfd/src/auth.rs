//! Authentication (RFC 5880 sections 6.7.2 and 6.7.4): simple passwords and
//! keyed / meticulous keyed SHA-1. Signing and checking are pure functions
//! of the packet bytes and the key; the sequence-number window lives here
//! too so the session only asks "is this acceptable?".
//!
//! Keyed MD5 is decoded by the codec but cannot be configured: it is
//! deprecated for new deployments and no MD5 crate is in the workspace.

use crate::packet::{Auth, AuthType, ControlPacket, HEADER_LEN, MAX_PASSWORD_LEN};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// Longest SHA-1 key (it occupies the 20-byte hash field while hashing).
pub const MAX_SHA1_KEY_LEN: usize = 20;

/// The configured authentication of a session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthKey {
    /// Simple password, keyed SHA-1 or meticulous keyed SHA-1.
    #[serde(rename = "type")]
    pub auth_type: AuthType,
    /// Auth Key ID sent and expected.
    pub key_id: u8,
    /// The password or key.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthKey")
            .field("auth_type", &self.auth_type)
            .field("key_id", &self.key_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl AuthKey {
    /// Checks the type and key length.
    pub fn validate(&self) -> Result<(), String> {
        let max = match self.auth_type {
            AuthType::SimplePassword => MAX_PASSWORD_LEN,
            AuthType::KeyedSha1 | AuthType::MeticulousKeyedSha1 => MAX_SHA1_KEY_LEN,
            AuthType::KeyedMd5 | AuthType::MeticulousKeyedMd5 => {
                return Err(format!("{} is not supported", self.auth_type));
            }
        };
        if self.key.is_empty() || self.key.len() > max {
            return Err(format!(
                "{} key is {} bytes, must be 1..={max}",
                self.auth_type,
                self.key.len()
            ));
        }
        Ok(())
    }
}

/// Why an authenticated (or unauthenticated) packet was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The session uses authentication, the packet has none.
    #[error("packet is not authenticated but the session requires {0}")]
    Missing(AuthType),
    /// The packet is authenticated, the session is not.
    #[error("packet carries {0} but the session has no authentication")]
    Unexpected(AuthType),
    /// Types differ.
    #[error("packet carries {got}, the session uses {expected}")]
    WrongType {
        /// Configured.
        expected: AuthType,
        /// Received.
        got: AuthType,
    },
    /// Key ids differ.
    #[error("key id {got} is not the configured {expected}")]
    WrongKeyId {
        /// Configured.
        expected: u8,
        /// Received.
        got: u8,
    },
    /// Password or digest do not match.
    #[error("{0} does not match")]
    BadDigest(AuthType),
    /// Sequence number outside the window of section 6.7.3/6.7.4.
    #[error("sequence number {seq} outside {low}..={high}")]
    Replay {
        /// Received.
        seq: u32,
        /// Lowest accepted.
        low: u32,
        /// Highest accepted.
        high: u32,
    },
}

/// Per-session authentication state: bfd.XmitAuthSeq, bfd.RcvAuthSeq,
/// bfd.AuthSeqKnown.
#[derive(Clone, Debug)]
pub struct AuthState {
    key: AuthKey,
    xmit_seq: u32,
    rcv_seq: u32,
    seq_known: bool,
}

fn padded_key(key: &[u8]) -> [u8; MAX_SHA1_KEY_LEN] {
    let mut k = [0u8; MAX_SHA1_KEY_LEN];
    let n = key.len().min(MAX_SHA1_KEY_LEN);
    k[..n].copy_from_slice(&key[..n]);
    k
}

/// SHA-1 of an encoded packet whose hash field (bytes 32..52) is replaced
/// by the key padded with zeros (section 6.7.4).
pub fn sha1_digest(packet: &[u8], key: &[u8]) -> [u8; 20] {
    let hash_at = HEADER_LEN + 8;
    let mut h = Sha1::new();
    h.update(&packet[..hash_at]);
    h.update(padded_key(key));
    if packet.len() > hash_at + 20 {
        h.update(&packet[hash_at + 20..]);
    }
    h.finalize().into()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AuthState {
    /// State for `key`, with the first sequence number to send.
    pub fn new(key: AuthKey, initial_seq: u32) -> Self {
        AuthState {
            key,
            xmit_seq: initial_seq,
            rcv_seq: 0,
            seq_known: false,
        }
    }

    /// The configured key.
    pub fn key(&self) -> &AuthKey {
        &self.key
    }

    /// Forgets the peer's sequence number (after twice the detection time
    /// without packets, section 6.8.1).
    pub fn forget_peer_seq(&mut self) {
        self.seq_known = false;
    }

    /// Adds the authentication section to `pkt`, advancing the sequence
    /// number. Keyed SHA-1 advances it with every packet too, which the
    /// RFC allows and which keeps a replayed packet from ever matching.
    pub fn sign(&mut self, pkt: &mut ControlPacket) {
        let key_id = self.key.key_id;
        match self.key.auth_type {
            AuthType::SimplePassword => {
                pkt.auth = Some(Auth::SimplePassword {
                    key_id,
                    password: self.key.key.clone(),
                });
            }
            t => {
                self.xmit_seq = self.xmit_seq.wrapping_add(1);
                pkt.auth = Some(Auth::Sha1 {
                    meticulous: t.is_meticulous(),
                    key_id,
                    seq: self.xmit_seq,
                    hash: [0; 20],
                });
                let digest = sha1_digest(&pkt.encode(), &self.key.key);
                if let Some(Auth::Sha1 { hash, .. }) = &mut pkt.auth {
                    *hash = digest;
                }
            }
        }
    }

    /// Checks a received packet (`raw` is its encoding, Length bytes) and,
    /// if it is acceptable, records its sequence number. `detect_mult` is the
    /// packet's, which sizes the replay window.
    pub fn check(&mut self, pkt: &ControlPacket, raw: &[u8]) -> Result<(), AuthError> {
        let expected = self.key.auth_type;
        let Some(auth) = &pkt.auth else {
            return Err(AuthError::Missing(expected));
        };
        let got = auth.auth_type();
        if got != expected {
            return Err(AuthError::WrongType { expected, got });
        }
        if auth.key_id() != self.key.key_id {
            return Err(AuthError::WrongKeyId {
                expected: self.key.key_id,
                got: auth.key_id(),
            });
        }
        match auth {
            Auth::SimplePassword { password, .. } => {
                if !ct_eq(password, &self.key.key) {
                    return Err(AuthError::BadDigest(got));
                }
                Ok(())
            }
            Auth::Sha1 { seq, hash, .. } => {
                let seq = *seq;
                let window = 3 * u32::from(pkt.detect_mult);
                if self.seq_known {
                    let low = if got.is_meticulous() {
                        self.rcv_seq.wrapping_add(1)
                    } else {
                        self.rcv_seq
                    };
                    let high = self.rcv_seq.wrapping_add(window);
                    if seq.wrapping_sub(low) > high.wrapping_sub(low) {
                        return Err(AuthError::Replay { seq, low, high });
                    }
                }
                if !ct_eq(hash, &sha1_digest(raw, &self.key.key)) {
                    return Err(AuthError::BadDigest(got));
                }
                self.rcv_seq = seq;
                self.seq_known = true;
                Ok(())
            }
            Auth::Md5 { .. } => Err(AuthError::BadDigest(got)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Diag, State};

    fn key(t: AuthType) -> AuthKey {
        AuthKey {
            auth_type: t,
            key_id: 7,
            key: b"tabby-secret".to_vec(),
        }
    }

    fn pkt() -> ControlPacket {
        ControlPacket {
            diag: Diag::None,
            state: State::Down,
            poll: false,
            final_: false,
            control_plane_independent: false,
            demand: false,
            multipoint: false,
            detect_mult: 3,
            my_discriminator: 9,
            your_discriminator: 0,
            desired_min_tx: 1_000_000,
            required_min_rx: 300_000,
            required_min_echo_rx: 0,
            auth: None,
        }
    }

    #[test]
    fn sign_then_check_and_replay_window() {
        for t in [AuthType::KeyedSha1, AuthType::MeticulousKeyedSha1] {
            let mut tx = AuthState::new(key(t), 100);
            let mut rx = AuthState::new(key(t), 0);
            let mut p = pkt();
            tx.sign(&mut p);
            let raw = p.encode();
            assert_eq!(raw.len(), 52);
            rx.check(&p, &raw).unwrap();
            // The same packet again: keyed accepts (seq may repeat), meticulous not.
            let again = rx.check(&p, &raw);
            assert_eq!(again.is_ok(), !t.is_meticulous(), "{t}: {again:?}");
            // Far ahead of the window.
            let mut far = pkt();
            let mut tx2 = AuthState::new(key(t), 200);
            tx2.sign(&mut far);
            assert!(matches!(
                rx.check(&far, &far.encode()),
                Err(AuthError::Replay { seq: 201, .. })
            ));
            // After forgetting, anything goes.
            rx.forget_peer_seq();
            rx.check(&far, &far.encode()).unwrap();
            // A flipped bit breaks the digest.
            let mut bad = far.encode();
            bad[12] ^= 1;
            let badp = ControlPacket::decode(&bad).unwrap();
            rx.forget_peer_seq();
            assert_eq!(rx.check(&badp, &bad), Err(AuthError::BadDigest(t)));
        }
    }

    #[test]
    fn mismatches_are_named() {
        let mut rx = AuthState::new(key(AuthType::KeyedSha1), 0);
        let p = pkt();
        assert_eq!(
            rx.check(&p, &p.encode()),
            Err(AuthError::Missing(AuthType::KeyedSha1))
        );
        let mut other = AuthState::new(key(AuthType::MeticulousKeyedSha1), 0);
        let mut q = pkt();
        other.sign(&mut q);
        assert!(matches!(
            rx.check(&q, &q.encode()),
            Err(AuthError::WrongType { .. })
        ));
        let mut k = key(AuthType::KeyedSha1);
        k.key_id = 8;
        let mut q = pkt();
        AuthState::new(k, 0).sign(&mut q);
        assert_eq!(
            rx.check(&q, &q.encode()),
            Err(AuthError::WrongKeyId {
                expected: 7,
                got: 8
            })
        );
        let mut simple = AuthState::new(key(AuthType::SimplePassword), 0);
        let mut q = pkt();
        simple.sign(&mut q);
        simple.check(&q, &q.encode()).unwrap();
        let mut wrong = AuthState::new(
            AuthKey {
                key: b"nope".to_vec(),
                ..key(AuthType::SimplePassword)
            },
            0,
        );
        assert_eq!(
            wrong.check(&q, &q.encode()),
            Err(AuthError::BadDigest(AuthType::SimplePassword))
        );
    }

    #[test]
    fn validation() {
        assert!(key(AuthType::KeyedSha1).validate().is_ok());
        assert!(key(AuthType::KeyedMd5).validate().is_err());
        let long = AuthKey {
            key: vec![b'x'; 21],
            ..key(AuthType::KeyedSha1)
        };
        assert!(long.validate().unwrap_err().contains("1..=20"));
        assert!(format!("{:?}", key(AuthType::KeyedSha1)).contains("redacted"));
    }
}
