//! [`TensorData`]: an owned array of one of the element types the graphs use, so that named
//! inputs and outputs of different dtypes can travel together through an executor's channel.

use half::f16;
use ndarray::ArrayD;

use crate::manifest::DataType;

/// An owned n-dimensional array of one element type.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// float32.
    F32(ArrayD<f32>),
    /// float16.
    F16(ArrayD<f16>),
    /// int64 (token ids, timesteps).
    I64(ArrayD<i64>),
    /// bool (attention masks).
    Bool(ArrayD<bool>),
    /// uint8 (only in tensors.safetensors: `uncond_attention_mask`).
    U8(ArrayD<u8>),
}

impl TensorData {
    /// The element type's name, as in manifests and safetensors error messages.
    pub fn dtype_name(&self) -> &'static str {
        match self {
            TensorData::F32(_) => "float32",
            TensorData::F16(_) => "float16",
            TensorData::I64(_) => "int64",
            TensorData::Bool(_) => "bool",
            TensorData::U8(_) => "uint8",
        }
    }

    /// The manifest dtype, if the element type is one a graph may declare.
    pub fn data_type(&self) -> Option<DataType> {
        match self {
            TensorData::F32(_) => Some(DataType::Float32),
            TensorData::F16(_) => Some(DataType::Float16),
            TensorData::I64(_) => Some(DataType::Int64),
            TensorData::Bool(_) => Some(DataType::Bool),
            TensorData::U8(_) => None,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            TensorData::F32(a) => a.shape(),
            TensorData::F16(a) => a.shape(),
            TensorData::I64(a) => a.shape(),
            TensorData::Bool(a) => a.shape(),
            TensorData::U8(a) => a.shape(),
        }
    }

    /// The values as float32: float32 as is, float16 widened; `None` for other types.
    pub fn into_f32(self) -> Option<ArrayD<f32>> {
        match self {
            TensorData::F32(a) => Some(a),
            TensorData::F16(a) => Some(a.mapv(f16::to_f32)),
            _ => None,
        }
    }
}

impl From<ArrayD<f32>> for TensorData {
    fn from(a: ArrayD<f32>) -> Self {
        TensorData::F32(a)
    }
}

impl From<ArrayD<f16>> for TensorData {
    fn from(a: ArrayD<f16>) -> Self {
        TensorData::F16(a)
    }
}

impl From<ArrayD<i64>> for TensorData {
    fn from(a: ArrayD<i64>) -> Self {
        TensorData::I64(a)
    }
}

impl From<ArrayD<bool>> for TensorData {
    fn from(a: ArrayD<bool>) -> Self {
        TensorData::Bool(a)
    }
}

impl From<ArrayD<u8>> for TensorData {
    fn from(a: ArrayD<u8>) -> Self {
        TensorData::U8(a)
    }
}
