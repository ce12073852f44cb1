//! The tensor codec of every stage RPC: any bytes decoded as a `Tensor` message, then read as
//! each element type the services read, are either refused with a `TensorError` or give an
//! array whose length matches its shape; never a panic or an overflow in shape arithmetic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use unclip_proto::v1::Tensor;
use unclip_proto::{Dim, check_finite, check_shape};

fuzz_target!(|bytes: &[u8]| {
    let Ok(tensor) = Tensor::decode(bytes) else {
        return;
    };
    let _ = tensor.checked_dtype();
    let _ = tensor.dims();
    if let Ok(array) = tensor.to_f32_array() {
        assert_eq!(array.len(), array.shape().iter().product::<usize>());
        let _ = check_finite(&array.view());
        let _ = check_shape(array.shape(), &[Dim::Any("batch"), Dim::Fixed(4)]);
    }
    if let Ok(array) = tensor.to_bool_array() {
        assert_eq!(array.len(), array.shape().iter().product::<usize>());
    }
    if let Ok(array) = tensor.to_array::<i64>() {
        assert_eq!(array.len(), array.shape().iter().product::<usize>());
    }
});
