//! Secrets at rest (BRIEF §3 invariant 4).
//!
//! Access and refresh tokens are sealed with XChaCha20-Poly1305 under a key
//! derived from the operator's master key; the portal and the field are bound
//! in as associated data, so a ciphertext copied into another row or column
//! fails to open. The application token is never stored: verifying a delivery
//! needs only `HMAC-SHA256(hash_key, token)` compared in constant time.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Format byte of a sealed value; a new algorithm or key scheme gets a new one.
const SEALED_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Why a master key or a sealed value was refused. Never carries key or
/// plaintext bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("master key must be 64 hex characters (32 bytes)")]
    BadMasterKey,
    #[error("sealed value is malformed or was not sealed with this master key")]
    Unseal,
    #[error("the system random source failed")]
    Random,
}

/// The keys derived from the master key. Cheap to clone.
#[derive(Clone)]
pub struct Keyring {
    seal: [u8; 32],
    hash: [u8; 32],
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring([redacted])")
    }
}

impl Keyring {
    /// From the 64-hex-character master key (`B24GATE_MASTER_KEY`).
    pub fn from_hex(master_hex: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(master_hex.trim()).map_err(|_| CryptoError::BadMasterKey)?;
        let master: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadMasterKey)?;
        Ok(Self::from_master(&master))
    }

    /// A fresh random master key, for `demo` and tests only: the server
    /// refuses to start without a configured one.
    pub fn generate() -> Result<(Self, String), CryptoError> {
        let mut master = [0u8; 32];
        getrandom::fill(&mut master).map_err(|_| CryptoError::Random)?;
        Ok((Self::from_master(&master), hex::encode(master)))
    }

    fn from_master(master: &[u8; 32]) -> Self {
        Self {
            seal: derive(master, b"b24gate/v1/seal"),
            hash: derive(master, b"b24gate/v1/application-token-hash"),
        }
    }

    /// Seals `plaintext` for one column of one row, named by `context`
    /// (e.g. `"credentials.access_token:<member_id>"`).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let cipher = XChaCha20Poly1305::new((&self.seal).into());
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let sealed = cipher
            .encrypt(
                &XNonce::try_from(&nonce[..]).map_err(|_| CryptoError::Unseal)?,
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Unseal)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a value sealed by [`Keyring::seal`] with the same `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != SEALED_V1 {
            return Err(CryptoError::Unseal);
        }
        let (nonce, body) = sealed[1..].split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new((&self.seal).into());
        cipher
            .decrypt(
                &XNonce::try_from(nonce).map_err(|_| CryptoError::Unseal)?,
                Payload {
                    msg: body,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Unseal)
    }

    /// The keyed hash stored in place of an application token (or used as a
    /// token fingerprint). 32 bytes.
    pub fn token_hash(&self, token: &str) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.hash).expect("any key length");
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Constant-time check of `token` against a stored [`Keyring::token_hash`].
    pub fn token_matches(&self, token: &str, stored_hash: &[u8]) -> bool {
        let candidate = self.token_hash(token);
        candidate.len() == stored_hash.len() && bool::from(candidate.ct_eq(stored_hash))
    }

    /// A short, non-reversible fingerprint of a token for display and lookups
    /// (16 hex characters of its keyed hash).
    pub fn fingerprint(&self, token: &str) -> String {
        hex::encode(&self.token_hash(token)[..8])
    }
}

fn derive(master: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(master).expect("any key length");
    mac.update(label);
    let mut out = [0u8; 32];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::from_hex(&"ab".repeat(32)).unwrap()
    }

    #[test]
    fn seal_round_trips_and_binds_context() {
        let k = ring();
        let sealed = k
            .seal("credentials.access_token:m1", b"secret-token")
            .unwrap();
        assert_eq!(
            k.open("credentials.access_token:m1", &sealed).unwrap(),
            b"secret-token"
        );
        assert_eq!(
            k.open("credentials.access_token:m2", &sealed),
            Err(CryptoError::Unseal)
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            k.open("credentials.access_token:m1", &tampered),
            Err(CryptoError::Unseal)
        );
        assert_eq!(k.open("x", &[1, 2, 3]), Err(CryptoError::Unseal));
    }

    #[test]
    fn another_master_key_cannot_open() {
        let sealed = ring().seal("c", b"v").unwrap();
        let other = Keyring::from_hex(&"cd".repeat(32)).unwrap();
        assert_eq!(other.open("c", &sealed), Err(CryptoError::Unseal));
    }

    #[test]
    fn token_hash_verifies_in_constant_time() {
        let k = ring();
        let h = k.token_hash("51856fefc120afa4b628cc82d3935cce");
        assert!(k.token_matches("51856fefc120afa4b628cc82d3935cce", &h));
        assert!(!k.token_matches("51856fefc120afa4b628cc82d3935ccf", &h));
        assert!(!k.token_matches("51856fefc120afa4b628cc82d3935cce", &h[..31]));
        assert_eq!(k.fingerprint("t").len(), 16);
    }

    #[test]
    fn bad_master_keys_are_refused() {
        for bad in ["", "zz", &"ab".repeat(31), &"ab".repeat(33)] {
            assert_eq!(
                Keyring::from_hex(bad).unwrap_err(),
                CryptoError::BadMasterKey
            );
        }
        assert!(format!("{:?}", ring()).contains("redacted"));
    }
}
