//! [`Tensor`] ⇄ `ndarray` conversions and the validation of arrays arriving in requests.
//!
//! A wire tensor is a shape, a [`DType`] and row-major little-endian bytes. Decoding checks, in
//! order: a known dtype that matches what the caller asked for, non-negative dimensions whose
//! product fits in memory, and a byte length of exactly product × element size; booleans must
//! be 0 or 1. FLOAT16 tensors can be read as float32 ([`Tensor::to_f32_array`]) so clients may
//! send half precision anywhere float32 is expected. Encoding is infallible.
//!
//! Errors ([`TensorError`]) say what is wrong but not *where*: the service prefixes the field
//! name ("text.last_hidden_state: …") when it turns them into an INVALID_ARGUMENT status.

use std::fmt;

use half::f16;
use ndarray::{ArrayBase, ArrayD, ArrayViewD, Data, Dimension, IxDyn};
use thiserror::Error;

use crate::v1::{DType, Tensor};

/// Why a wire tensor or a decoded array was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TensorError {
    /// The dtype field holds a value this API does not define (or UNSPECIFIED).
    #[error("dtype {0} is not a valid DType")]
    UnknownDtype(i32),
    /// The tensor has a valid dtype, but not the one the field requires.
    #[error("dtype must be {expected}, got {got}")]
    Dtype {
        /// The accepted dtype(s), e.g. `"FLOAT32 or FLOAT16"`.
        expected: &'static str,
        /// The dtype that was sent.
        got: &'static str,
    },
    /// A dimension below zero.
    #[error("shape {shape:?} has a negative dimension")]
    NegativeDim {
        /// The shape that was sent.
        shape: Vec<i64>,
    },
    /// The product of the dimensions overflows (or cannot be addressed).
    #[error("shape {shape:?} has too many elements")]
    TooLarge {
        /// The shape that was sent.
        shape: Vec<i64>,
    },
    /// `data` is not exactly product(shape) × element size bytes long.
    #[error("shape {shape:?} of {dtype} needs {expected} bytes of data, got {got}")]
    DataLength {
        /// The shape that was sent.
        shape: Vec<i64>,
        /// The dtype that was sent.
        dtype: &'static str,
        /// product(shape) × element size.
        expected: usize,
        /// `data.len()`.
        got: usize,
    },
    /// A BOOL element that is neither 0 nor 1.
    #[error("BOOL data must be 0 or 1, element {index} is {value}")]
    InvalidBool {
        /// Flat (row-major) index of the element.
        index: usize,
        /// Its byte value.
        value: u8,
    },
    /// A NaN or infinite float.
    #[error("must be finite, element {index} is {value}")]
    NonFinite {
        /// Flat (row-major) index of the first offending element.
        index: usize,
        /// Its value (NaN, inf or -inf).
        value: f32,
    },
    /// The array has the wrong rank or size on some axis.
    #[error("must have shape {expected}, got {got:?}")]
    Shape {
        /// The expected shape in words, e.g. `[batch, 77, 32]`.
        expected: String,
        /// The shape that was sent.
        got: Vec<usize>,
    },
}

/// The wire name of a dtype, as written in `tensor.proto`.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::DtypeUnspecified => "DTYPE_UNSPECIFIED",
        DType::Float32 => "FLOAT32",
        DType::Float16 => "FLOAT16",
        DType::Int64 => "INT64",
        DType::Bool => "BOOL",
        DType::Uint8 => "UINT8",
    }
}

/// Bytes per element of a dtype (0 for UNSPECIFIED).
pub fn dtype_size(dtype: DType) -> usize {
    match dtype {
        DType::DtypeUnspecified => 0,
        DType::Float32 => 4,
        DType::Float16 => 2,
        DType::Int64 => 8,
        DType::Bool | DType::Uint8 => 1,
    }
}

/// An element type that can travel in a [`Tensor`].
pub trait Element: Copy + Default + fmt::Debug + Send + Sync + 'static {
    /// The wire dtype of this type.
    const DTYPE: DType;
    /// Bytes per element on the wire.
    const SIZE: usize;
    /// Decodes one element from exactly [`Self::SIZE`] little-endian bytes; `None` if the bytes
    /// are not a valid value (only BOOL has invalid values).
    fn from_le(bytes: &[u8]) -> Option<Self>;
    /// Appends the element's little-endian bytes to `out`.
    fn write_le(self, out: &mut Vec<u8>);
}

impl Element for f32 {
    const DTYPE: DType = DType::Float32;
    const SIZE: usize = 4;
    fn from_le(bytes: &[u8]) -> Option<Self> {
        Some(f32::from_le_bytes(bytes.try_into().ok()?))
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::Float16;
    const SIZE: usize = 2;
    fn from_le(bytes: &[u8]) -> Option<Self> {
        Some(f16::from_le_bytes(bytes.try_into().ok()?))
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Element for i64 {
    const DTYPE: DType = DType::Int64;
    const SIZE: usize = 8;
    fn from_le(bytes: &[u8]) -> Option<Self> {
        Some(i64::from_le_bytes(bytes.try_into().ok()?))
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Element for bool {
    const DTYPE: DType = DType::Bool;
    const SIZE: usize = 1;
    fn from_le(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
}

impl Element for u8 {
    const DTYPE: DType = DType::Uint8;
    const SIZE: usize = 1;
    fn from_le(bytes: &[u8]) -> Option<Self> {
        bytes.first().copied()
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(self);
    }
}

impl Tensor {
    /// Encodes an array (any layout; elements are written in logical row-major order).
    pub fn from_array<T, S, D>(array: &ArrayBase<S, D>) -> Tensor
    where
        T: Element,
        S: Data<Elem = T>,
        D: Dimension,
    {
        let mut data = Vec::with_capacity(array.len() * T::SIZE);
        match array.as_slice() {
            Some(slice) => slice.iter().for_each(|v| v.write_le(&mut data)),
            None => array.iter().for_each(|v| v.write_le(&mut data)),
        }
        Tensor {
            shape: array.shape().iter().map(|&d| d as i64).collect(),
            dtype: T::DTYPE as i32,
            data: data.into(),
        }
    }

    /// The dtype, refusing values outside the enum and UNSPECIFIED.
    pub fn checked_dtype(&self) -> Result<DType, TensorError> {
        match DType::try_from(self.dtype) {
            Ok(DType::DtypeUnspecified) | Err(_) => Err(TensorError::UnknownDtype(self.dtype)),
            Ok(dtype) => Ok(dtype),
        }
    }

    /// The shape as `usize`s, after checking that the data length matches it for `dtype`.
    fn checked_dims(&self, dtype: DType) -> Result<Vec<usize>, TensorError> {
        let mut dims = Vec::with_capacity(self.shape.len());
        let mut elements: usize = 1;
        for &d in &self.shape {
            let d = usize::try_from(d).map_err(|_| TensorError::NegativeDim {
                shape: self.shape.clone(),
            })?;
            elements = elements
                .checked_mul(d)
                .ok_or_else(|| TensorError::TooLarge {
                    shape: self.shape.clone(),
                })?;
            dims.push(d);
        }
        let expected =
            elements
                .checked_mul(dtype_size(dtype))
                .ok_or_else(|| TensorError::TooLarge {
                    shape: self.shape.clone(),
                })?;
        if self.data.len() != expected {
            return Err(TensorError::DataLength {
                shape: self.shape.clone(),
                dtype: dtype_name(dtype),
                expected,
                got: self.data.len(),
            });
        }
        Ok(dims)
    }

    /// The shape, validated against the data length (useful before decoding, e.g. to check the
    /// batch size of a request cheaply).
    pub fn dims(&self) -> Result<Vec<usize>, TensorError> {
        let dtype = self.checked_dtype()?;
        self.checked_dims(dtype)
    }

    /// Decodes into an array of exactly the element type `T`.
    pub fn to_array<T: Element>(&self) -> Result<ArrayD<T>, TensorError> {
        let dtype = self.checked_dtype()?;
        if dtype != T::DTYPE {
            return Err(TensorError::Dtype {
                expected: dtype_name(T::DTYPE),
                got: dtype_name(dtype),
            });
        }
        let dims = self.checked_dims(dtype)?;
        let mut values = Vec::with_capacity(self.data.len() / T::SIZE);
        for (index, chunk) in self.data.chunks_exact(T::SIZE).enumerate() {
            match T::from_le(chunk) {
                Some(v) => values.push(v),
                None => {
                    return Err(TensorError::InvalidBool {
                        index,
                        value: chunk[0],
                    });
                }
            }
        }
        Ok(ArrayD::from_shape_vec(IxDyn(&dims), values)
            .expect("the data length was checked against the shape; this is a bug"))
    }

    /// Decodes a FLOAT32 or FLOAT16 tensor into float32 (half precision is widened exactly).
    /// Does not check finiteness; see [`check_finite`].
    pub fn to_f32_array(&self) -> Result<ArrayD<f32>, TensorError> {
        match self.checked_dtype()? {
            DType::Float16 => Ok(self.to_array::<f16>()?.mapv(f16::to_f32)),
            DType::Float32 => self.to_array::<f32>(),
            other => Err(TensorError::Dtype {
                expected: "FLOAT32 or FLOAT16",
                got: dtype_name(other),
            }),
        }
    }

    /// Decodes a BOOL tensor, or a UINT8 one holding only 0 and 1 (numpy masks often arrive as
    /// uint8).
    pub fn to_bool_array(&self) -> Result<ArrayD<bool>, TensorError> {
        match self.checked_dtype()? {
            DType::Bool => self.to_array::<bool>(),
            DType::Uint8 => {
                let bytes = self.to_array::<u8>()?;
                if let Some((index, &value)) = bytes.iter().enumerate().find(|(_, v)| **v > 1) {
                    return Err(TensorError::InvalidBool { index, value });
                }
                Ok(bytes.mapv(|v| v == 1))
            }
            other => Err(TensorError::Dtype {
                expected: "BOOL or UINT8",
                got: dtype_name(other),
            }),
        }
    }
}

/// Refuses NaN and infinities, naming the first offending element.
pub fn check_finite(array: &ArrayViewD<'_, f32>) -> Result<(), TensorError> {
    match array.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((index, &value)) => Err(TensorError::NonFinite { index, value }),
        None => Ok(()),
    }
}

/// One axis of an expected shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// Any size; the name is only used in messages (e.g. `"batch"`).
    Any(&'static str),
    /// Exactly this size.
    Fixed(usize),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Any(name) => f.write_str(name),
            Dim::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Checks a shape against an expected one (rank and every fixed axis).
pub fn check_shape(got: &[usize], expected: &[Dim]) -> Result<(), TensorError> {
    let matches = got.len() == expected.len()
        && got.iter().zip(expected).all(|(&g, e)| match e {
            Dim::Any(_) => true,
            Dim::Fixed(n) => g == *n,
        });
    if matches {
        Ok(())
    } else {
        let words: Vec<String> = expected.iter().map(ToString::to_string).collect();
        Err(TensorError::Shape {
            expected: format!("[{}]", words.join(", ")),
            got: got.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array2, ArrayD, IxDyn, array};

    use super::*;

    /// Every element type survives a round trip, including non-contiguous views.
    #[test]
    fn round_trips() {
        let a = array![[1.5f32, -2.0, 3.25], [0.0, 1e-8, f32::MAX]];
        assert_eq!(
            Tensor::from_array(&a).to_array::<f32>().unwrap(),
            a.clone().into_dyn()
        );
        let t = a.t();
        let back = Tensor::from_array(&t).to_array::<f32>().unwrap();
        assert_eq!(back, t.to_owned().into_dyn());

        let ids = array![49406i64, -1, i64::MAX];
        assert_eq!(
            Tensor::from_array(&ids).to_array::<i64>().unwrap(),
            ids.into_dyn()
        );
        let mask = array![[true, false], [false, true]];
        assert_eq!(
            Tensor::from_array(&mask).to_array::<bool>().unwrap(),
            mask.into_dyn()
        );
        let px = array![0u8, 128, 255];
        assert_eq!(
            Tensor::from_array(&px).to_array::<u8>().unwrap(),
            px.into_dyn()
        );
        let h = array![f16::from_f32(0.5), f16::from_f32(-3.0)];
        assert_eq!(
            Tensor::from_array(&h).to_f32_array().unwrap(),
            array![0.5f32, -3.0].into_dyn()
        );
    }

    /// The wire layout is row-major little-endian.
    #[test]
    fn layout_is_little_endian_row_major() {
        let t = Tensor::from_array(&array![[1i64, 2]]);
        assert_eq!(t.shape, vec![1, 2]);
        assert_eq!(t.dtype, DType::Int64 as i32);
        assert_eq!(
            &t.data[..],
            &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
        );
        let scalar = Tensor::from_array(&ArrayD::from_elem(IxDyn(&[]), 1.0f32));
        assert!(scalar.shape.is_empty());
        assert_eq!(scalar.to_f32_array().unwrap().len(), 1);
    }

    /// Each malformed tensor is refused with a message naming the problem.
    #[test]
    fn malformed_tensors_are_refused() {
        let good = Tensor::from_array(&Array2::<f32>::zeros((2, 3)));

        let wrong_len = Tensor {
            data: good.data.slice(0..20),
            ..good.clone()
        };
        let e = wrong_len.to_f32_array().unwrap_err();
        assert_eq!(
            e.to_string(),
            "shape [2, 3] of FLOAT32 needs 24 bytes of data, got 20"
        );

        let negative = Tensor {
            shape: vec![-2, -3],
            ..good.clone()
        };
        assert!(matches!(
            negative.dims(),
            Err(TensorError::NegativeDim { .. })
        ));

        let huge = Tensor {
            shape: vec![i64::MAX, i64::MAX],
            ..good.clone()
        };
        assert!(matches!(huge.dims(), Err(TensorError::TooLarge { .. })));

        let unknown = Tensor {
            dtype: 99,
            ..good.clone()
        };
        assert_eq!(
            unknown.to_f32_array().unwrap_err(),
            TensorError::UnknownDtype(99)
        );
        let unspecified = Tensor {
            dtype: 0,
            ..good.clone()
        };
        assert_eq!(
            unspecified.dims().unwrap_err(),
            TensorError::UnknownDtype(0)
        );

        let e = good.to_array::<i64>().unwrap_err();
        assert_eq!(e.to_string(), "dtype must be INT64, got FLOAT32");
        let ids = Tensor::from_array(&array![1i64]);
        assert_eq!(
            ids.to_f32_array().unwrap_err().to_string(),
            "dtype must be FLOAT32 or FLOAT16, got INT64"
        );

        let bad_bool = Tensor {
            shape: vec![3],
            dtype: DType::Bool as i32,
            data: vec![0u8, 1, 2].into(),
        };
        assert_eq!(
            bad_bool.to_array::<bool>().unwrap_err(),
            TensorError::InvalidBool { index: 2, value: 2 }
        );
        let u8_mask = Tensor::from_array(&array![1u8, 0, 1]);
        assert_eq!(
            u8_mask.to_bool_array().unwrap(),
            array![true, false, true].into_dyn()
        );
        let u8_bad = Tensor::from_array(&array![1u8, 5]);
        assert!(u8_bad.to_bool_array().is_err());
    }

    /// NaN and infinities are found and reported with their position.
    #[test]
    fn finiteness() {
        let ok = array![1.0f32, -2.0].into_dyn();
        assert!(check_finite(&ok.view()).is_ok());
        let bad = array![1.0f32, f32::INFINITY, f32::NAN].into_dyn();
        let e = check_finite(&bad.view()).unwrap_err();
        assert_eq!(e.to_string(), "must be finite, element 1 is inf");
    }

    /// Shapes are compared on rank and fixed axes, and the message spells out the expectation.
    #[test]
    fn shapes() {
        let want = [Dim::Any("batch"), Dim::Fixed(77), Dim::Fixed(32)];
        assert!(check_shape(&[4, 77, 32], &want).is_ok());
        let e = check_shape(&[4, 76, 32], &want).unwrap_err();
        assert_eq!(
            e.to_string(),
            "must have shape [batch, 77, 32], got [4, 76, 32]"
        );
        assert!(check_shape(&[4, 77], &want).is_err());
    }
}
