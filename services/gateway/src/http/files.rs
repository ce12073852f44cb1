//! [`FileStore`]: the images of `response_format: "url"` answers, kept in memory for a limited
//! time (`--http-files-ttl-secs`) within a byte bound (`--http-files-mb`), and served at
//! `GET /v1/files/{id}.png` (or `.apng`). Past its time, or pushed out by newer files, an id
//! answers 404. Ids are 128 random bits, so they cannot be guessed.

use std::time::Duration;

use bytes::Bytes;
use moka::future::Cache;

/// A stored file: its bytes and media type.
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// The encoded image.
    pub bytes: Bytes,
    /// `image/png` or `image/apng`.
    pub mime_type: &'static str,
}

/// The bounded, time-limited store.
#[derive(Debug, Clone)]
pub struct FileStore {
    files: Cache<String, StoredFile>,
}

impl FileStore {
    /// A store of at most `max_bytes` whose files live `ttl`.
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        let files = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|id: &String, file: &StoredFile| {
                u32::try_from(file.bytes.len() + id.len()).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .build();
        Self { files }
    }

    /// Stores `bytes` and returns its file name (`ID.png` or `ID.apng`).
    pub async fn put(&self, bytes: Bytes, mime_type: &'static str) -> String {
        let extension = if mime_type == "image/apng" {
            "apng"
        } else {
            "png"
        };
        let id: u128 = rand::random();
        let name = format!("{id:032x}.{extension}");
        self.files
            .insert(name.clone(), StoredFile { bytes, mime_type })
            .await;
        name
    }

    /// The file named `name`, while it lives.
    pub async fn get(&self, name: &str) -> Option<StoredFile> {
        self.files.get(name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file is there under its name and extension, and gone after its time.
    #[tokio::test]
    async fn stores_until_expiry() {
        let store = FileStore::new(1 << 20, Duration::from_millis(200));
        let name = store.put(Bytes::from_static(b"png"), "image/png").await;
        assert!(name.ends_with(".png"), "{name}");
        assert_eq!(store.get(&name).await.unwrap().bytes, "png");
        assert!(store.get("0.png").await.is_none());
        let apng = store.put(Bytes::from_static(b"a"), "image/apng").await;
        assert!(apng.ends_with(".apng"), "{apng}");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(store.get(&name).await.is_none(), "expired");
    }

    /// Files beyond the byte bound push older ones out.
    #[tokio::test]
    async fn bounded() {
        let store = FileStore::new(10_000, Duration::from_secs(60));
        let mut names = Vec::new();
        for _ in 0..20 {
            names.push(store.put(Bytes::from(vec![0; 1000]), "image/png").await);
        }
        store.files.run_pending_tasks().await;
        assert!(store.files.weighted_size() <= 10_000);
        let mut kept = 0;
        for name in &names {
            kept += usize::from(store.get(name).await.is_some());
        }
        assert!(
            kept < 20,
            "{kept} of 20 files of 1000 bytes kept in 10000 bytes"
        );
    }
}
