//! Batching across calls: the executor thread runs several queued jobs of one graph as one
//! `Session::run`, their inputs stacked along the batch axis and the outputs split back by rows.
//!
//! Every graph of a model repository takes a dynamic batch and a per-row timestep, so calls
//! from different requests, at different steps of their loops, can share one run. Jobs are
//! stacked only when every input has the same shape but for the batch axis; a graph qualifies
//! only when every input and output has the same symbolic batch axis first.

use ndarray::{ArrayD, Axis, Slice, concatenate};

use crate::executor::Inputs;
use crate::manifest::{ComponentSpec, Dim};
use crate::value::TensorData;

/// Whether calls of the graph `spec` can be stacked: every input and output has one and the
/// same symbolic axis first.
pub fn batchable(spec: &ComponentSpec) -> bool {
    let first = |shape: &[Dim]| match shape.first() {
        Some(Dim::Symbolic(name)) => Some(name.clone()),
        _ => None,
    };
    let Some(axis) = spec.inputs.first().and_then(|i| first(&i.shape)) else {
        return false;
    };
    spec.inputs
        .iter()
        .map(|i| first(&i.shape))
        .chain(spec.outputs.iter().map(|o| first(&o.shape)))
        .all(|name| name.as_deref() == Some(axis.as_str()))
}

/// The batch size of checked inputs (their first axis; they all agree).
pub fn rows(inputs: &Inputs) -> usize {
    inputs.first().map_or(0, |(_, data)| data.shape()[0])
}

/// Whether `b` can be stacked under `a`: the same inputs in the same order (checked inputs
/// follow the manifest's order), the same dtypes, the same shapes but for the first axis.
pub fn compatible(a: &Inputs, b: &Inputs) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((name_a, x), (name_b, y))| {
            name_a == name_b
                && x.dtype_name() == y.dtype_name()
                && x.shape().len() == y.shape().len()
                && x.shape()[1..] == y.shape()[1..]
        })
}

/// Stacks compatible inputs along the batch axis.
pub fn stack(jobs: Vec<Inputs>) -> Result<Inputs, String> {
    let mut jobs = jobs.into_iter();
    let Some(first) = jobs.next() else {
        return Ok(Vec::new());
    };
    let mut columns: Vec<(String, Vec<TensorData>)> =
        first.into_iter().map(|(n, d)| (n, vec![d])).collect();
    for job in jobs {
        for ((_, column), (_, data)) in columns.iter_mut().zip(job) {
            column.push(data);
        }
    }
    columns
        .into_iter()
        .map(|(name, parts)| Ok((name, concat(parts)?)))
        .collect()
}

fn cat<T: Clone>(parts: Vec<ArrayD<T>>) -> Result<ArrayD<T>, String> {
    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
    concatenate(Axis(0), &views).map_err(|e| format!("stacking inputs: {e}"))
}

/// One array of the parts (all of one dtype) along axis 0.
fn concat(parts: Vec<TensorData>) -> Result<TensorData, String> {
    macro_rules! all {
        ($variant:ident) => {{
            let arrays = parts
                .into_iter()
                .map(|p| match p {
                    TensorData::$variant(a) => Ok(a),
                    other => Err(format!("mixed dtypes: {}", other.dtype_name())),
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(TensorData::$variant(cat(arrays)?))
        }};
    }
    match parts.first() {
        Some(TensorData::F32(_)) => all!(F32),
        Some(TensorData::F16(_)) => all!(F16),
        Some(TensorData::I64(_)) => all!(I64),
        Some(TensorData::Bool(_)) => all!(Bool),
        Some(TensorData::U8(_)) => all!(U8),
        None => Err("nothing to stack".into()),
    }
}

/// `data`'s rows cut into consecutive pieces of `sizes` rows.
pub fn split(data: &TensorData, sizes: &[usize]) -> Result<Vec<TensorData>, String> {
    let total: usize = sizes.iter().sum();
    if data.shape().first() != Some(&total) {
        return Err(format!(
            "an output of shape {:?} for {total} stacked rows",
            data.shape()
        ));
    }
    let mut start = 0;
    let mut pieces = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let range = Slice::from(start..start + size);
        let piece = match data {
            TensorData::F32(a) => TensorData::F32(a.slice_axis(Axis(0), range).to_owned()),
            TensorData::F16(a) => TensorData::F16(a.slice_axis(Axis(0), range).to_owned()),
            TensorData::I64(a) => TensorData::I64(a.slice_axis(Axis(0), range).to_owned()),
            TensorData::Bool(a) => TensorData::Bool(a.slice_axis(Axis(0), range).to_owned()),
            TensorData::U8(a) => TensorData::U8(a.slice_axis(Axis(0), range).to_owned()),
        };
        pieces.push(piece);
        start += size;
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    fn job(x: Array2<f32>, t: Vec<i64>) -> Inputs {
        vec![
            ("sample".into(), TensorData::F32(x.into_dyn())),
            (
                "timestep".into(),
                TensorData::I64(ndarray::Array1::from(t).into_dyn()),
            ),
        ]
    }

    /// Stacking puts rows in job order, per-row timesteps included; splitting gives each job
    /// its rows back.
    #[test]
    fn stack_and_split() {
        let a = job(array![[1.0, 2.0]], vec![999]);
        let b = job(array![[3.0, 4.0], [5.0, 6.0]], vec![500, 500]);
        assert!(compatible(&a, &b));
        assert_eq!((rows(&a), rows(&b)), (1, 2));
        let stacked = stack(vec![a, b]).unwrap();
        assert_eq!(
            stacked[0].1,
            TensorData::F32(array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]].into_dyn())
        );
        assert_eq!(
            stacked[1].1,
            TensorData::I64(array![999, 500, 500].into_dyn())
        );
        let pieces = split(&stacked[0].1, &[1, 2]).unwrap();
        assert_eq!(
            pieces[1],
            TensorData::F32(array![[3.0, 4.0], [5.0, 6.0]].into_dyn())
        );
        assert!(split(&stacked[0].1, &[1, 1]).is_err());
    }

    /// Other widths, other names or other dtypes are not stacked.
    #[test]
    fn incompatible_jobs() {
        let a = job(array![[1.0, 2.0]], vec![1]);
        assert!(!compatible(&a, &job(array![[1.0, 2.0, 3.0]], vec![1])));
        let mut renamed = job(array![[1.0, 2.0]], vec![1]);
        renamed[1].0 = "t".into();
        assert!(!compatible(&a, &renamed));
        let mut other_dtype = job(array![[1.0, 2.0]], vec![1]);
        other_dtype[1].1 = TensorData::F32(array![1.0f32].into_dyn());
        assert!(!compatible(&a, &other_dtype));
    }
}
