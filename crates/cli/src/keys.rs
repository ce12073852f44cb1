//! `unclip api-key new NAME`: a fresh random API key and its line for the gateway's
//! `--api-keys` file, which holds only the key's SHA-256 (so the file is not a secret that
//! opens the gateway).

use sha2::{Digest, Sha256};

use crate::args::NewKeyArgs;

/// A new key: `uk_` and 64 hex digits (256 bits from the thread's CSPRNG).
pub fn new_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("uk_{}", hex(&bytes))
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `--api-keys` line of `key`: `NAME SHA256 [max_concurrent=N] [images_per_minute=N]`.
pub fn key_line(args: &NewKeyArgs, key: &str) -> anyhow::Result<String> {
    let name = &args.name;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    anyhow::ensure!(
        valid,
        "the key name {name:?} must be letters, digits, '-', '_' or '.'"
    );
    let mut line = format!("{name} {}", hex(&Sha256::digest(key.as_bytes())));
    if let Some(n) = args.max_concurrent {
        line.push_str(&format!(" max_concurrent={n}"));
    }
    if let Some(n) = args.images_per_minute {
        line.push_str(&format!(" images_per_minute={n}"));
    }
    Ok(line)
}

/// Prints a new key and its file line.
pub fn print_new(args: &NewKeyArgs) -> anyhow::Result<()> {
    let key = new_key();
    let line = key_line(args, &key)?;
    println!("key:  {key}");
    println!("line: {line}");
    eprintln!(
        "Give the key to the caller (it is shown once); add the line to the gateway's --api-keys file."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys are fresh and long; the line carries the name, the key's SHA-256 and the limits.
    #[test]
    fn keys_and_lines() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 64);
        let args = NewKeyArgs {
            name: "team-a".into(),
            max_concurrent: Some(4),
            images_per_minute: None,
        };
        // sha256("abc")
        assert_eq!(
            key_line(&args, "abc").unwrap(),
            "team-a ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad max_concurrent=4"
        );
        let bad = NewKeyArgs {
            name: "a b".into(),
            ..args
        };
        assert!(key_line(&bad, "abc").is_err());
    }
}
