//! The frame around every stored value, so that a corrupt, truncated or misfiled value is
//! detected on read instead of being decoded into a wrong embedding.
//!
//! Layout: `b"UNCLIPC1"` ++ kind length (`u16` LE) ++ kind ++ first 16 bytes of
//! SHA-256(payload) ++ payload (the prost encoding).

use sha2::{Digest, Sha256};

/// Marks a value written by this crate, format version 1.
pub(crate) const MAGIC: &[u8; 8] = b"UNCLIPC1";

/// How many bytes of the payload's SHA-256 the frame keeps.
const CHECKSUM_LEN: usize = 16;

/// Why a stored value was not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// Shorter than its own header says.
    #[error("truncated frame ({0} bytes)")]
    Truncated(usize),
    /// Does not start with [`MAGIC`].
    #[error("bad magic")]
    BadMagic,
    /// Written for another kind of value than the key names.
    #[error("kind mismatch: key is {expected:?}, value is {found:?}")]
    KindMismatch {
        /// The key's kind.
        expected: String,
        /// The kind in the frame (lossy UTF-8).
        found: String,
    },
    /// The payload does not match its checksum.
    #[error("payload checksum mismatch")]
    Checksum,
    /// The kind is too long for the `u16` length field.
    #[error("kind is {0} bytes, at most 65535 fit in a frame")]
    KindTooLong(usize),
}

/// The first [`CHECKSUM_LEN`] bytes of SHA-256(`payload`).
fn checksum(payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::digest(payload);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

/// Frames a value of `kind` whose payload `write_payload` appends (about `size_hint` bytes),
/// in one allocation: the checksum slot is filled in once the payload is there.
pub(crate) fn encode_with(
    kind: &str,
    size_hint: usize,
    write_payload: impl FnOnce(&mut Vec<u8>),
) -> Result<Vec<u8>, FrameError> {
    let kind_len = u16::try_from(kind.len()).map_err(|_| FrameError::KindTooLong(kind.len()))?;
    let header_len = MAGIC.len() + 2 + kind.len() + CHECKSUM_LEN;
    let mut out = Vec::with_capacity(header_len + size_hint);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&kind_len.to_le_bytes());
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(&[0; CHECKSUM_LEN]);
    write_payload(&mut out);
    let sum = checksum(&out[header_len..]);
    out[header_len - CHECKSUM_LEN..header_len].copy_from_slice(&sum);
    Ok(out)
}

/// Frames `payload` as a value of `kind`.
#[cfg(test)]
pub(crate) fn encode(kind: &str, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    encode_with(kind, payload.len(), |out| out.extend_from_slice(payload))
}

/// Checks the frame of a value read under a key of `kind` and returns its payload.
pub(crate) fn decode<'a>(kind: &str, bytes: &'a [u8]) -> Result<&'a [u8], FrameError> {
    let truncated = || FrameError::Truncated(bytes.len());
    let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(|| {
        if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
            truncated()
        } else {
            FrameError::BadMagic
        }
    })?;
    let (len, rest) = rest.split_first_chunk::<2>().ok_or_else(truncated)?;
    let (found, rest) = rest
        .split_at_checked(usize::from(u16::from_le_bytes(*len)))
        .ok_or_else(truncated)?;
    if found != kind.as_bytes() {
        return Err(FrameError::KindMismatch {
            expected: kind.to_owned(),
            found: String::from_utf8_lossy(found).into_owned(),
        });
    }
    let (sum, payload) = rest
        .split_first_chunk::<CHECKSUM_LEN>()
        .ok_or_else(truncated)?;
    if *sum != checksum(payload) {
        return Err(FrameError::Checksum);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let framed = encode("text", b"payload").unwrap();
        assert!(framed.starts_with(b"UNCLIPC1\x04\x00text"));
        assert_eq!(framed.len(), 8 + 2 + 4 + 16 + 7);
        assert_eq!(decode("text", &framed), Ok(&b"payload"[..]));
    }

    #[test]
    fn empty_payload_round_trips() {
        let framed = encode("prior", b"").unwrap();
        assert_eq!(decode("prior", &framed), Ok(&b""[..]));
    }

    #[test]
    fn wrong_kind_is_rejected() {
        let framed = encode("text", b"payload").unwrap();
        assert_eq!(
            decode("image", &framed),
            Err(FrameError::KindMismatch {
                expected: "image".into(),
                found: "text".into()
            })
        );
    }

    #[test]
    fn flipped_payload_bit_is_rejected() {
        let mut framed = encode("text", b"payload").unwrap();
        *framed.last_mut().unwrap() ^= 1;
        assert_eq!(decode("text", &framed), Err(FrameError::Checksum));
    }

    #[test]
    fn bad_magic_is_rejected() {
        let mut framed = encode("text", b"payload").unwrap();
        framed[7] = b'2';
        assert_eq!(decode("text", &framed), Err(FrameError::BadMagic));
        assert_eq!(decode("text", b"garbage"), Err(FrameError::BadMagic));
    }

    #[test]
    fn every_truncation_is_rejected() {
        let framed = encode("text", b"payload").unwrap();
        let header = 8 + 2 + 4 + 16;
        for len in 0..header {
            assert!(decode("text", &framed[..len]).is_err(), "length {len}");
        }
        // Cutting into the payload breaks the checksum.
        for len in header..framed.len() {
            assert_eq!(decode("text", &framed[..len]), Err(FrameError::Checksum));
        }
    }

    #[test]
    fn overlong_kind_is_refused() {
        let kind = "k".repeat(70_000);
        assert_eq!(encode(&kind, b""), Err(FrameError::KindTooLong(70_000)));
    }
}
