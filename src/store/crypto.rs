//! Encryption at rest for what the store keeps in Redis.
//!
//! ChaCha20-Poly1305 with a random 96-bit nonce per value and the full Redis
//! key as associated data, so a sealed value copied under another key (say,
//! one user's grant under another's name) does not open. The AEAD key and
//! the login-link key are both derived from `store.encryption_key` with
//! HKDF-SHA256 under distinct labels: one secret to hand every replica,
//! and neither derived key tells anything about the other.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;

/// A format marker, so a later format can tell old values apart.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

fn derive(master: &[u8; 32], label: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit: cannot fail.
    let _ = Hkdf::<Sha256>::new(None, master).expand(label.as_bytes(), &mut out);
    out
}

/// The login-link HMAC key of a fleet: every replica derives the same one.
pub fn link_key(master: &[u8; 32]) -> Vec<u8> {
    derive(master, "atomgit-proxy login-link key v1").to_vec()
}

/// Seals and opens values stored under Redis keys.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    pub fn new(master: &[u8; 32]) -> Sealer {
        let key = derive(master, "atomgit-proxy store aead v1");
        Sealer {
            cipher: ChaCha20Poly1305::new(&key.into()),
        }
    }

    /// `version || nonce || ciphertext+tag`.
    pub fn seal(&self, redis_key: &str, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: redis_key.as_bytes(),
                },
            )
            // Only fails for messages beyond 256 GiB.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext, or `None` for a value sealed under another key, with
    /// another encryption key, or tampered with.
    pub fn open(&self, redis_key: &str, data: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = data.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: redis_key.as_bytes(),
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_key_and_show_nothing() {
        let sealer = Sealer::new(&[7; 32]);
        let a = sealer.seal("p:{user:alice}:grant", b"refresh_secret");
        let b = sealer.seal("p:{user:alice}:grant", b"refresh_secret");
        assert_ne!(a, b, "a fresh nonce per value");
        assert!(!a.windows(7).any(|w| w == b"refresh"));
        assert_eq!(
            sealer.open("p:{user:alice}:grant", &a).as_deref(),
            Some(&b"refresh_secret"[..])
        );
        assert_eq!(sealer.open("p:{user:mallory}:grant", &a), None);
        assert_eq!(Sealer::new(&[8; 32]).open("p:{user:alice}:grant", &a), None);
        let mut tampered = a.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(sealer.open("p:{user:alice}:grant", &tampered), None);
        assert_ne!(link_key(&[7; 32]), link_key(&[8; 32]));
    }
}
