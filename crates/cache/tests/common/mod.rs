//! Test support: a prost message standing in for the gateway's tensors (the real
//! `redis-server` is the test kit's).

#![allow(dead_code)] // Each test binary uses a different part of this module.

/// A small message like the gateway's `Tensor`: shape, dtype and data.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Embedding {
    /// Dimensions.
    #[prost(int64, repeated, tag = "1")]
    pub shape: Vec<i64>,
    /// Element type, e.g. `float32`.
    #[prost(string, tag = "2")]
    pub dtype: String,
    /// Little-endian element bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

impl Embedding {
    /// A `[1, n]` float32 embedding whose bytes are derived from `seed`.
    pub fn new(n: usize, seed: u8) -> Self {
        Self {
            shape: vec![1, n as i64],
            dtype: "float32".into(),
            data: (0..n * 4).map(|i| (i as u8).wrapping_add(seed)).collect(),
        }
    }
}

/// A check like the gateway's: dtype and shape must be what the caller expects.
pub fn expect_shape(shape: &'static [i64]) -> impl Fn(&Embedding) -> Result<(), String> {
    move |e: &Embedding| {
        if e.dtype != "float32" {
            return Err(format!("dtype {} is not float32", e.dtype));
        }
        if e.shape != shape {
            return Err(format!("shape {:?} is not {shape:?}", e.shape));
        }
        Ok(())
    }
}
