//! Fast paths for the CPU (flex) backend, where a burn op is slower than it has to be.
//!
//! Each function takes and returns burn tensors for any backend. On flex with f32 it works
//! on the tensor's storage directly; on every other backend (and under autodiff, which
//! needs burn's own op for the backward pass) it is the burn op.

use std::any::{Any, TypeId};

use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

/// Exact GELU, `x · Φ(x) = ½ x (1 + erf(x / √2))`, as transformers' `gelu`.
///
/// Why: flex applies it with one scalar libm `erff` call per element (replacing that made
/// MiniLM scoring 1.36× faster). Here `erf` is a branch-free rational approximation that
/// the compiler vectorises (AVX2 + FMA when the CPU has them), within 4e-7 of libm over
/// all of f32 (3.6e-7 at worst, near ±3.93).
///
/// Under autodiff on flex (training) it is one op with its own backward pass,
/// `dx = dy · (Φ(x) + x φ(x))`, over the same vectorised `erf` and a vectorised `exp`:
/// burn's composite GELU spent 12 % of a training step in scalar libm calls.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if TypeId::of::<B>() == TypeId::of::<AdFlex>() && x.dtype() == DType::F32 {
        return gelu_tracked(x);
    }
    if !is_flex_f32::<B>(x.dtype()) {
        return gelu_burn(x);
    }
    from_flex(gelu_flex(into_flex(x)))
}

/// The autodiff backend training runs on, on the CPU.
type AdFlex = burn::backend::Autodiff<Flex>;
type AdTensor = burn::tensor::ops::FloatTensor<AdFlex>;

fn gelu_flex(mut t: FlexTensor) -> FlexTensor {
    if !t.is_contiguous() {
        t = t.to_contiguous();
    }
    let range = t.layout().contiguous_offsets();
    // Copies first when the storage is shared (copy-on-write), so no other tensor changes.
    let data = t.storage_mut::<f32>();
    let data = match range {
        Some((start, end)) => &mut data[start..end],
        None => data,
    };
    gelu_in_place(data);
    t
}

/// [`gelu`] on `Autodiff<Flex>`, recorded as one op whose backward is [`gelu_grad`].
fn gelu_tracked<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};

    #[derive(Debug)]
    struct GeluBackward;

    impl Backward<Flex, 1> for GeluBackward {
        type State = FlexTensor;
        fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let x = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |dy| gelu_grad(x, dy));
        }
    }

    let x = into_ad(x);
    let y = gelu_flex(x.primitive.clone());
    let out = match GeluBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(x.primitive, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    from_ad(out)
}

/// The `Autodiff<Flex>` tensor behind `x`; called only when `B` is `Autodiff<Flex>`.
fn into_ad<B: Backend, const D: usize>(x: Tensor<B, D>) -> AdTensor {
    into_primitive(x, "B is Autodiff<Flex>")
}

/// `t` as a tensor of `B`, which is `Autodiff<Flex>` (the inverse of [`into_ad`]).
fn from_ad<B: Backend, const D: usize>(t: AdTensor) -> Tensor<B, D> {
    from_primitive(t, "B is Autodiff<Flex>")
}

/// Whether [`attention_tracked`] applies: `B` is `Autodiff<Flex>` (CPU training) and the
/// tensor is f32.
pub fn is_ad_flex_f32<B: Backend>(dtype: DType) -> bool {
    TypeId::of::<B>() == TypeId::of::<AdFlex>() && dtype == DType::F32
}

/// What the attention op keeps for its backward pass.
#[derive(Clone, Debug)]
struct AttnState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    /// softmax probabilities `[batch, heads, sq, seq]`, before dropout.
    probs: std::sync::Arc<Vec<f32>>,
    /// dropout factors (0 or `1/(1-p)`), the layout of `probs`.
    mask: Option<std::sync::Arc<Vec<f32>>>,
    shape: Shape,
}

/// [`attention`] for training on `Autodiff<Flex>` (check [`is_ad_flex_f32`] first): one op
/// with its own backward pass, with `mask` (dropout factors `[batch, heads, q, seq]`, see
/// [`crate::models::dropout::Dropout::host_mask`]) applied to the probabilities.
///
/// Why: spelled out in burn ops, a training step split the heads out and merged them back
/// with strided copies in both passes and kept every intermediate of the graph; here the
/// heads are read in place with strided gemm calls, as [`attention`] does, and the backward
/// pass is the textbook one (`dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ∘ (dP − rowsum(dP ∘ P))`,
/// `dQ = dS K / √d`, `dK = dSᵀ Q / √d`, the dropout factors applied to `P` and `dP`).
pub fn attention_tracked<B: Backend>(
    queries: Tensor<B, 3>,
    keys: Tensor<B, 3>,
    values: Tensor<B, 3>,
    padding: Tensor<B, 2, Bool>,
    num_heads: usize,
    mask: Option<Vec<f32>>,
) -> Tensor<B, 3> {
    use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};

    #[derive(Debug)]
    struct AttnBackward;

    impl Backward<Flex, 3> for AttnBackward {
        type State = AttnState;
        fn backward(self, ops: Ops<AttnState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let st = ops.state;
            let d_out = grads.consume::<Flex>(&ops.node).to_contiguous();
            let (dq, dk, dv) = attend_backward(&st, f32s(&d_out));
            let Shape {
                batch,
                sq,
                seq,
                hidden,
                ..
            } = st.shape;
            let tensor = |data: Vec<f32>, rows: usize| {
                FlexTensor::from_data(TensorData::new(data, [batch, rows, hidden]))
            };
            let [pq, pk, pv] = ops.parents;
            for (parent, grad) in [
                (pq, tensor(dq, sq)),
                (pk, tensor(dk, seq)),
                (pv, tensor(dv, seq)),
            ] {
                if let Some(node) = parent {
                    grads.register::<Flex>(node.id, grad);
                }
            }
        }
    }

    let [batch, sq, hidden] = queries.dims();
    let seq = keys.dims()[1];
    let (q, k, v) = (into_ad(queries), into_ad(keys), into_ad(values));
    let pad = match downcast::<FlexTensor, B::BoolTensorPrimitive>(padding.into_primitive()) {
        Ok(t) => t.to_contiguous(),
        Err(_) => unreachable!("B is Autodiff<Flex>, whose bool primitive is FlexTensor"),
    };
    let shape = Shape {
        batch,
        sq,
        seq,
        hidden,
        heads: num_heads,
    };
    let flat = |t: &AdTensor| t.primitive.clone().to_contiguous();
    let (qf, kf, vf) = (flat(&q), flat(&k), flat(&v));
    let hd = hidden / num_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let pad = bools(&pad);
    let block = sq * seq;
    let mut probs = vec![0.0f32; batch * num_heads * block];
    let mut dropped = vec![0.0f32; block];
    let mut out = vec![0.0f32; batch * sq * hidden];
    if let Some(m) = &mask {
        assert_eq!(m.len(), probs.len(), "attention dropout mask size");
    }
    let (qs, ks, vs) = (f32s(&qf), f32s(&kf), f32s(&vf));
    for b in 0..batch {
        let pad_b = &pad[b * seq..(b + 1) * seq];
        for h in 0..num_heads {
            let at = (b * num_heads + h) * block;
            let p = &mut probs[at..at + block];
            let (qh, kh, vh) = (
                &qs[b * sq * hidden + h * hd..],
                &ks[b * seq * hidden + h * hd..],
                &vs[b * seq * hidden + h * hd..],
            );
            // p [sq, seq] = scale · q_h k_hᵀ, then the masked softmax of each row.
            gemm_strided(
                [sq, seq, hd],
                (p, seq, 1),
                (qh, hidden, 1),
                (kh, 1, hidden),
                scale,
            );
            p.chunks_exact_mut(seq)
                .for_each(|row| softmax_masked(row, pad_b));
            let p: &[f32] = match &mask {
                Some(m) => {
                    for ((d, &x), &f) in dropped.iter_mut().zip(&*p).zip(&m[at..at + block]) {
                        *d = x * f;
                    }
                    &dropped
                }
                None => p,
            };
            // out_h [sq, hd] = p · v_h
            gemm_strided(
                [sq, hd, seq],
                (&mut out[b * sq * hidden + h * hd..], hidden, 1),
                (p, seq, 1),
                (vh, hidden, 1),
                1.0,
            );
        }
    }
    let y = FlexTensor::from_data(TensorData::new(out, [batch, sq, hidden]));
    let result = match AttnBackward
        .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = AttnState {
                q: qf,
                k: kf,
                v: vf,
                probs: std::sync::Arc::new(probs),
                mask: mask.map(std::sync::Arc::new),
                shape,
            };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    from_ad(result)
}

/// The gradients of `q`, `k` and `v` (each `[batch, rows, hidden]`, heads side by side)
/// from the output's gradient `d_out` `[batch, sq, hidden]`.
fn attend_backward(st: &AttnState, d_out: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Shape {
        batch,
        sq,
        seq,
        hidden,
        heads,
    } = st.shape;
    let hd = hidden / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let (qs, ks, vs) = (f32s(&st.q), f32s(&st.k), f32s(&st.v));
    let block = sq * seq;
    let mut dq = vec![0.0f32; batch * sq * hidden];
    let mut dk = vec![0.0f32; batch * seq * hidden];
    let mut dv = vec![0.0f32; batch * seq * hidden];
    let mut dropped = vec![0.0f32; block];
    let mut dp = vec![0.0f32; block];
    for b in 0..batch {
        for h in 0..heads {
            let at = (b * heads + h) * block;
            let p = &st.probs[at..at + block];
            let mask = st.mask.as_ref().map(|m| &m[at..at + block]);
            let pd: &[f32] = match mask {
                Some(m) => {
                    for ((d, &x), &f) in dropped.iter_mut().zip(p).zip(m) {
                        *d = x * f;
                    }
                    &dropped
                }
                None => p,
            };
            let (qo, ko) = (b * sq * hidden + h * hd, b * seq * hidden + h * hd);
            let doh = &d_out[qo..];
            // dV_h [seq, hd] = p_dropᵀ · dO_h
            gemm_strided(
                [seq, hd, sq],
                (&mut dv[ko..], hidden, 1),
                (pd, 1, seq),
                (doh, hidden, 1),
                1.0,
            );
            // dP [sq, seq] = dO_h · V_hᵀ, then through the dropout factors.
            gemm_strided(
                [sq, seq, hd],
                (&mut dp, seq, 1),
                (doh, hidden, 1),
                (&vs[ko..], 1, hidden),
                1.0,
            );
            if let Some(m) = mask {
                dp.iter_mut().zip(m).for_each(|(d, &f)| *d *= f);
            }
            // dS = P ∘ (dP − rowsum(dP ∘ P)), in place of dP.
            for (row, prow) in dp.chunks_exact_mut(seq).zip(p.chunks_exact(seq)) {
                let dot: f32 = row.iter().zip(prow).map(|(d, p)| d * p).sum();
                row.iter_mut()
                    .zip(prow)
                    .for_each(|(d, &p)| *d = p * (*d - dot));
            }
            // dQ_h = scale · dS · K_h, dK_h = scale · dSᵀ · Q_h
            gemm_strided(
                [sq, hd, seq],
                (&mut dq[qo..], hidden, 1),
                (&dp, seq, 1),
                (&ks[ko..], hidden, 1),
                scale,
            );
            gemm_strided(
                [seq, hd, sq],
                (&mut dk[ko..], hidden, 1),
                (&dp, 1, seq),
                (&qs[qo..], hidden, 1),
                scale,
            );
        }
    }
    (dq, dk, dv)
}

/// `c [m, n] = alpha · a [m, k] · b [k, n]`, each matrix a slice with its (row, column)
/// strides; panics when a matrix does not fit its slice.
fn gemm_strided(
    [m, n, k]: [usize; 3],
    c: (&mut [f32], usize, usize),
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    alpha: f32,
) {
    let fits = |len: usize, rows: usize, cols: usize, rs: usize, cs: usize| {
        rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
    };
    assert!(
        fits(c.0.len(), m, n, c.1, c.2)
            && fits(a.0.len(), m, k, a.1, a.2)
            && fits(b.0.len(), k, n, b.1, b.2),
        "strided gemm out of bounds"
    );
    // SAFETY: the assert above: every index the gemm reads or writes lies in its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.0.as_mut_ptr(),
            c.2 as isize,
            c.1 as isize,
            false,
            a.0.as_ptr(),
            a.2 as isize,
            a.1 as isize,
            b.0.as_ptr(),
            b.2 as isize,
            b.1 as isize,
            0.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `dy · GELU'(x)` with `GELU'(x) = Φ(x) + x φ(x)`.
fn gelu_grad(x: FlexTensor, dy: FlexTensor) -> FlexTensor {
    let x = x.to_contiguous();
    let mut dy = dy.to_contiguous();
    let range = dy.layout().contiguous_offsets();
    let g = dy.storage_mut::<f32>();
    let g = match range {
        Some((start, end)) => &mut g[start..end],
        None => g,
    };
    gelu_grad_in_place(f32s(&x), g);
    dy
}

/// `g[i] *= GELU'(x[i])`, with the best vector instructions the CPU has.
pub fn gelu_grad_in_place(x: &[f32], g: &mut [f32]) {
    assert_eq!(x.len(), g.len(), "GELU backward: input and gradient sizes");
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { gelu_grad_avx2_fma(x, g) };
        return;
    }
    gelu_grad_portable(x, g);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_grad_avx2_fma(x: &[f32], g: &mut [f32]) {
    gelu_grad_portable(x, g);
}

#[inline(always)]
fn gelu_grad_portable(x: &[f32], g: &mut [f32]) {
    // 1/√(2π)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for (g, &v) in g.iter_mut().zip(x) {
        let cdf = 0.5 * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * exp(-0.5 * v * v);
        *g *= v.mul_add(pdf, cdf);
    }
}

/// `exp` for f32 as Cephes' `expf` (range reduction by `ln 2`, degree-5 polynomial), with
/// no branches so that a loop over it vectorises; within 2 ulp of libm on `[-87, 88]`;
/// below that it returns `exp(-87)` ≈ 1.6e-38 (where GELU's density term is 0 anyway).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let k = x.mul_add(std::f32::consts::LOG2_E, 0.5).floor();
    let r = k.mul_add(-0.693_359_4, x);
    let r = k.mul_add(2.121_944_4e-4, r);
    let mut p = r.mul_add(1.987_569_1e-4, 1.398_2e-3);
    p = r.mul_add(p, 8.333_452e-3);
    p = r.mul_add(p, 4.166_579_6e-2);
    p = r.mul_add(p, 1.666_666_5e-1);
    p = r.mul_add(p, 0.5);
    let e = (r * r).mul_add(p, r) + 1.0;
    e * f32::from_bits((((k as i32) + 127) << 23) as u32)
}

/// Scaled dot-product attention, softmax(q kᵀ / √d) v per head, of `queries`
/// `[batch, q, hidden]` over `keys` and `values` `[batch, seq, hidden]`, whose hidden dim
/// holds the heads side by side as the projections produce them; `padding` `[batch, seq]`
/// is true where a key is padding. Returns `[batch, q, hidden]`, heads side by side.
///
/// Why: burn's attention op takes `[batch, heads, seq, head_dim]`, so the heads are split
/// out before it and merged back after, and flex makes each of those five views
/// contiguous with a generic strided copy (13 % of a MiniLM forward pass). On flex this
/// reads the heads in place with strided gemm calls and writes the merged layout directly.
pub fn attention<B: Backend>(
    queries: Tensor<B, 3>,
    keys: Tensor<B, 3>,
    values: Tensor<B, 3>,
    padding: Tensor<B, 2, Bool>,
    num_heads: usize,
) -> Tensor<B, 3> {
    let [batch, sq, hidden] = queries.dims();
    let seq = keys.dims()[1];
    if !is_flex_f32::<B>(queries.dtype()) {
        return attention_burn(queries, keys, values, padding, num_heads);
    }
    let flat = |t: Tensor<B, 3>| into_flex(t).to_contiguous();
    let (q, k, v) = (flat(queries), flat(keys), flat(values));
    let pad = match downcast::<FlexTensor, B::BoolTensorPrimitive>(padding.into_primitive()) {
        Ok(t) => t.to_contiguous(),
        Err(_) => unreachable!("B is Flex, whose bool primitive is FlexTensor"),
    };
    let (q, k, v) = (f32s(&q), f32s(&k), f32s(&v));
    let pad = bools(&pad);
    let mut out = vec![0.0f32; batch * sq * hidden];
    let shape = Shape {
        batch,
        sq,
        seq,
        hidden,
        heads: num_heads,
    };
    attend(q, k, v, pad, &mut out, shape, None);
    from_flex(FlexTensor::from_data(TensorData::new(
        out,
        [batch, sq, hidden],
    )))
}

/// [`attention`] of `[batch, seq, hidden]` queries over keys of the same positions, where
/// with `window: Some(w)` query `i` sees only keys `j` with `|i − j| ≤ w` (ModernBERT's
/// local layers). A query whose keys are all padding gets zeros.
pub fn attention_windowed<B: Backend>(
    queries: Tensor<B, 3>,
    keys: Tensor<B, 3>,
    values: Tensor<B, 3>,
    padding: Tensor<B, 2, Bool>,
    num_heads: usize,
    window: Option<usize>,
) -> Tensor<B, 3> {
    let Some(w) = window else {
        return attention(queries, keys, values, padding, num_heads);
    };
    let [batch, seq, hidden] = queries.dims();
    if !is_flex_f32::<B>(queries.dtype()) {
        let device = queries.device();
        let hd = hidden / num_heads;
        let split = |t: Tensor<B, 3>| t.reshape([batch, seq, num_heads, hd]).swap_dims(1, 2);
        // Far keys masked, and each query keeps its own key so no row is fully masked.
        let far: Vec<bool> = (0..seq * seq)
            .map(|n| {
                let (i, j) = (n / seq, n % seq);
                i.abs_diff(j) > w
            })
            .collect();
        let own: Vec<bool> = (0..seq * seq).map(|n| n / seq != n % seq).collect();
        let grid = |v: Vec<bool>| {
            Tensor::<B, 4, Bool>::from_data(TensorData::new(v, [1, 1, seq, seq]), &device)
                .expand([batch, 1, seq, seq])
        };
        let mask = padding
            .reshape([batch, 1, 1, seq])
            .expand([batch, 1, seq, seq])
            .bool_or(grid(far))
            .bool_and(grid(own));
        let context = burn::tensor::module::attention(
            split(queries),
            split(keys),
            split(values),
            Some(mask),
            None,
            AttentionModuleOptions::default(),
        );
        return context.swap_dims(1, 2).reshape([batch, seq, hidden]);
    }
    let flat = |t: Tensor<B, 3>| into_flex(t).to_contiguous();
    let (q, k, v) = (flat(queries), flat(keys), flat(values));
    let pad = match downcast::<FlexTensor, B::BoolTensorPrimitive>(padding.into_primitive()) {
        Ok(t) => t.to_contiguous(),
        Err(_) => unreachable!("B is Flex, whose bool primitive is FlexTensor"),
    };
    let (q, k, v) = (f32s(&q), f32s(&k), f32s(&v));
    let pad = bools(&pad);
    let mut out = vec![0.0f32; batch * seq * hidden];
    let shape = Shape {
        batch,
        sq: seq,
        seq,
        hidden,
        heads: num_heads,
    };
    attend(q, k, v, pad, &mut out, shape, Some(w));
    from_flex(FlexTensor::from_data(TensorData::new(
        out,
        [batch, seq, hidden],
    )))
}

/// The relative-position terms of DeBERTa's disentangled attention, for
/// [`disentangled_attention`]: position keys/queries `[2·span, hidden]` (heads side by side)
/// and the gather indices `[seq · seq]` row-major, as `RelPos` in deberta_v2.rs builds them.
pub struct Disentangled<'a, B: Backend> {
    /// c2p: `pos_key` and `c2p[i·seq + j]`, the column of `q_i · pos_keyᵀ` added to score (i, j).
    pub c2p: Option<(Tensor<B, 2>, &'a [u32])>,
    /// p2c: `pos_query` and `p2c[j·seq + i]`, the column of `k_j · pos_queryᵀ` added to score (i, j).
    pub p2c: Option<(Tensor<B, 2>, &'a [u32])>,
}

/// DeBERTa's disentangled self-attention of `[batch, seq, hidden]` queries, keys and values
/// (heads side by side): scores `q·kᵀ + c2p + p2c` times `scale`, padding keys masked,
/// softmax, times `v`. `None` when the backend is not flex in f32 (the caller then uses
/// burn's ops, which autodiff needs).
///
/// Why: with burn's ops each gather reads a `[batch, heads, seq, seq]` index tensor
/// expanded from `[seq, seq]` through flex's strided iterator, one closure call per
/// element, and the expanded operands are copied out first; that made DeBERTa-v3-xsmall
/// scoring 2 pairs/s. Here the two products per head are gemm calls and the gathers read
/// the shared `[seq, seq]` indices in place.
pub fn disentangled_attention<B: Backend>(
    queries: Tensor<B, 3>,
    keys: Tensor<B, 3>,
    values: Tensor<B, 3>,
    rel: Disentangled<'_, B>,
    padding: Tensor<B, 2, Bool>,
    num_heads: usize,
    scale: f32,
) -> Option<Tensor<B, 3>> {
    let [batch, seq, hidden] = queries.dims();
    if !is_flex_f32::<B>(queries.dtype()) {
        return None;
    }
    let flat3 = |t: Tensor<B, 3>| into_flex(t).to_contiguous();
    let (q, k, v) = (flat3(queries), flat3(keys), flat3(values));
    let pad = match downcast::<FlexTensor, B::BoolTensorPrimitive>(padding.into_primitive()) {
        Ok(t) => t.to_contiguous(),
        Err(_) => unreachable!("B is Flex, whose bool primitive is FlexTensor"),
    };
    fn pos<B: Backend>(p: Option<(Tensor<B, 2>, &[u32])>) -> Option<(FlexTensor, &[u32], usize)> {
        p.map(|(t, idx)| {
            let rows = t.dims()[0];
            (into_flex(t).to_contiguous(), idx, rows)
        })
    }
    let (c2p, p2c) = (pos(rel.c2p), pos(rel.p2c));
    let (q, k, v, pad) = (f32s(&q), f32s(&k), f32s(&v), bools(&pad));
    let hd = hidden / num_heads;
    let mut out = vec![0.0f32; batch * seq * hidden];
    let mut scores = vec![0.0f32; seq * seq];
    let rows = c2p.as_ref().or(p2c.as_ref()).map_or(0, |p| p.2);
    let mut rel_scores = vec![0.0f32; seq * rows];
    for b in 0..batch {
        let pad_b = &pad[b * seq..(b + 1) * seq];
        for h in 0..num_heads {
            let qh = &q[b * seq * hidden + h * hd..];
            let kh = &k[b * seq * hidden + h * hd..];
            let vh = &v[b * seq * hidden + h * hd..];
            // Each term scaled on its own, as transformers divides each by √(d·factor).
            let heads = Heads { hidden, hd };
            heads.a_bt(&mut scores, qh, kh, seq, seq, scale);
            if let Some((pk, idx, r)) = &c2p {
                heads.a_bt(&mut rel_scores, qh, &f32s(pk)[h * hd..], seq, *r, scale);
                for (i, row) in scores.chunks_exact_mut(seq).enumerate() {
                    let rel = &rel_scores[i * r..(i + 1) * r];
                    for (x, &c) in row.iter_mut().zip(&idx[i * seq..(i + 1) * seq]) {
                        *x += rel[c as usize];
                    }
                }
            }
            if let Some((pq, idx, r)) = &p2c {
                heads.a_bt(&mut rel_scores, kh, &f32s(pq)[h * hd..], seq, *r, scale);
                for j in 0..seq {
                    let rel = &rel_scores[j * r..(j + 1) * r];
                    for (i, &c) in idx[j * seq..(j + 1) * seq].iter().enumerate() {
                        scores[i * seq + j] += rel[c as usize];
                    }
                }
            }
            for row in scores.chunks_exact_mut(seq) {
                softmax_masked(row, pad_b);
            }
            let oh = &mut out[b * seq * hidden + h * hd..];
            heads.p_v(oh, &scores, vh, seq, seq);
        }
    }
    Some(from_flex(FlexTensor::from_data(TensorData::new(
        out,
        [batch, seq, hidden],
    ))))
}

/// ModernBERT's fused projection `qkv` `[batch, seq, 3·hidden]` split into queries, keys
/// and values `[batch, seq, hidden]` (heads side by side), with the rotary embedding
/// `x·cos + rotate_half(x)·sin` applied to queries and keys; `cos`, `sin` are `[seq,
/// head_dim]` row-major. `None` when the backend is not flex in f32 (the caller then uses
/// burn's ops).
///
/// Why: with burn's ops the three slices, the half-swap and the broadcast products each go
/// through flex's generic strided iterator; that was 27 % of a ModernBERT-base forward
/// pass (perf, one thread), more than the attention itself. Here it is one pass per row.
#[allow(clippy::type_complexity)]
pub fn split_qkv_rotary<B: Backend>(
    qkv: Tensor<B, 3>,
    cos: &[f32],
    sin: &[f32],
    heads: usize,
) -> Option<(Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>)> {
    if !is_flex_f32::<B>(qkv.dtype()) {
        return None;
    }
    let [batch, seq, h3] = qkv.dims();
    let h = h3 / 3;
    let hd = h / heads;
    let half = hd / 2;
    let t = into_flex(qkv).to_contiguous();
    let x = f32s(&t);
    let mut q = vec![0.0f32; batch * seq * h];
    let mut k = vec![0.0f32; batch * seq * h];
    let mut v = vec![0.0f32; batch * seq * h];
    let rotate = |src: &[f32], dst: &mut [f32], c: &[f32], s: &[f32]| {
        for (xs, d) in src.chunks_exact(hd).zip(dst.chunks_exact_mut(hd)) {
            let (x1, x2) = xs.split_at(half);
            let (d1, d2) = d.split_at_mut(half);
            for i in 0..half {
                d1[i] = x1[i] * c[i] - x2[i] * s[i];
                d2[i] = x2[i] * c[half + i] + x1[i] * s[half + i];
            }
        }
    };
    for (row, src) in x.chunks_exact(h3).enumerate() {
        let p = row % seq;
        let (c, s) = (&cos[p * hd..(p + 1) * hd], &sin[p * hd..(p + 1) * hd]);
        let out = row * h..(row + 1) * h;
        rotate(&src[..h], &mut q[out.clone()], c, s);
        rotate(&src[h..2 * h], &mut k[out.clone()], c, s);
        v[out].copy_from_slice(&src[2 * h..]);
    }
    let t = |d: Vec<f32>| from_flex(FlexTensor::from_data(TensorData::new(d, [batch, seq, h])));
    Some((t(q), t(k), t(v)))
}

/// GeGLU with exact GELU: `gelu(input) · gate` of `x` `[batch, seq, 2·m]` holding input and
/// gate side by side (ModernBERT's `mlp.Wi` output); `[batch, seq, m]`. `None` when the
/// backend is not flex in f32. Why: as [`split_qkv_rotary`], the two strided halves.
pub fn geglu<B: Backend>(x: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    if !is_flex_f32::<B>(x.dtype()) {
        return None;
    }
    let [batch, seq, m2] = x.dims();
    let m = m2 / 2;
    let t = into_flex(x).to_contiguous();
    let src = f32s(&t);
    let mut out = vec![0.0f32; batch * seq * m];
    for (o, row) in out.chunks_exact_mut(m).zip(src.chunks_exact(m2)) {
        o.copy_from_slice(&row[..m]);
    }
    gelu_in_place(&mut out);
    for (o, row) in out.chunks_exact_mut(m).zip(src.chunks_exact(m2)) {
        for (y, g) in o.iter_mut().zip(&row[m..]) {
            *y *= g;
        }
    }
    Some(from_flex(FlexTensor::from_data(TensorData::new(
        out,
        [batch, seq, m],
    ))))
}

/// GELU on the other backends. Under autodiff (except on flex) it is spelled out with
/// `erf`, whose gradient burn computes exactly.
///
/// Why: burn's default `gelu_backward`, which the cubecl backends (wgpu, CUDA) use, is the
/// derivative of the tanh approximation, not of the exact GELU: on wgpu it put the LoRA
/// gradients of `tests/train_step.rs` 1.4e-3 away from PyTorch's; spelled out, 3.3e-6
/// (flex, whose own backward is exact: 4.0e-6; docs/gpu.md).
fn gelu_burn<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let flex_backward = TypeId::of::<B>() == TypeId::of::<burn::backend::Autodiff<Flex>>();
    if !B::ad_enabled(&x.device()) || flex_backward {
        return activation::gelu(x);
    }
    let cdf = x
        .clone()
        .div_scalar(std::f64::consts::SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    x * cdf
}

/// Whether the fast paths apply: `B` is the flex backend and the tensor is f32.
pub fn is_flex_f32<B: Backend>(dtype: DType) -> bool {
    TypeId::of::<B>() == TypeId::of::<Flex>() && dtype == DType::F32
}

/// The flex tensor behind `x`; called only once [`is_flex_f32`] holds.
fn into_flex<B: Backend, const D: usize>(x: Tensor<B, D>) -> FlexTensor {
    into_primitive(x, "B is Flex, whose float primitive is FlexTensor")
}

/// `t` as a tensor of `B`, which is flex (the inverse of [`into_flex`]).
fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
    from_primitive(t, "B is Flex, whose float primitive is FlexTensor")
}

/// `x`'s float primitive as the concrete `T` the caller has checked `B` to have.
fn into_primitive<T: 'static, B: Backend, const D: usize>(x: Tensor<B, D>, why: &str) -> T {
    match downcast::<T, B::FloatTensorPrimitive>(x.into_primitive().tensor()) {
        Ok(t) => t,
        Err(_) => unreachable!("{why}"),
    }
}

/// The inverse of [`into_primitive`].
fn from_primitive<T: 'static, B: Backend, const D: usize>(t: T, why: &str) -> Tensor<B, D> {
    match downcast::<B::FloatTensorPrimitive, T>(t) {
        Ok(p) => Tensor::from_primitive(TensorPrimitive::Float(p)),
        Err(_) => unreachable!("{why}"),
    }
}

/// [`attention`] with burn's attention op: heads split out, attended, merged back.
fn attention_burn<B: Backend>(
    queries: Tensor<B, 3>,
    keys: Tensor<B, 3>,
    values: Tensor<B, 3>,
    padding: Tensor<B, 2, Bool>,
    num_heads: usize,
) -> Tensor<B, 3> {
    let [batch, sq, hidden] = queries.dims();
    let seq = keys.dims()[1];
    let hd = hidden / num_heads;
    let split = |t: Tensor<B, 3>, s: usize| t.reshape([batch, s, num_heads, hd]).swap_dims(1, 2);
    let mask = padding
        .reshape([batch, 1, 1, seq])
        .expand([batch, 1, sq, seq]);
    let context = burn::tensor::module::attention(
        split(queries, sq),
        split(keys, seq),
        split(values, seq),
        Some(mask),
        None,
        AttentionModuleOptions::default(),
    );
    context.swap_dims(1, 2).reshape([batch, sq, hidden])
}

fn f32s(t: &FlexTensor) -> &[f32] {
    match t.as_slice::<f32>() {
        Some(s) => s,
        None => unreachable!("an f32 tensor made contiguous"),
    }
}

/// A contiguous bool tensor's values (flex stores bools as one byte each).
fn bools(t: &FlexTensor) -> &[u8] {
    let bytes = t.bytes();
    match t.layout().contiguous_offsets() {
        Some((start, end)) => &bytes[start..end],
        None => unreachable!("made contiguous above"),
    }
}

#[derive(Clone, Copy, Debug)]
struct Shape {
    batch: usize,
    sq: usize,
    seq: usize,
    hidden: usize,
    heads: usize,
}

/// One head's matrices inside `[rows, hidden]` row-major buffers that hold the heads side
/// by side: row `r` of a head starts at `r · hidden` and spans `hd` values.
#[derive(Clone, Copy)]
struct Heads {
    hidden: usize,
    hd: usize,
}

impl Heads {
    /// `c [m, n]` (contiguous) = `alpha · a [m, hd] · b [n, hd]ᵀ`, `a` and `b` heads.
    fn a_bt(self, c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, alpha: f32) {
        let Heads { hidden, hd } = self;
        assert!(
            c.len() >= m * n
                && (m == 0 || a.len() >= (m - 1) * hidden + hd)
                && (n == 0 || b.len() >= (n - 1) * hidden + hd),
            "head matrices out of bounds"
        );
        // SAFETY: the assert above: c holds m·n values, a m rows and b n rows of hd values
        // at stride hidden.
        unsafe {
            gemm::gemm(
                m,
                n,
                hd,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                hidden as isize,
                b.as_ptr(),
                hidden as isize,
                1,
                0.0,
                alpha,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }

    /// `out [m, hd]` (a head) = `p [m, n]` (contiguous) `· v [n, hd]` (a head).
    fn p_v(self, out: &mut [f32], p: &[f32], v: &[f32], m: usize, n: usize) {
        let Heads { hidden, hd } = self;
        assert!(
            p.len() >= m * n
                && (m == 0 || out.len() >= (m - 1) * hidden + hd)
                && (n == 0 || v.len() >= (n - 1) * hidden + hd),
            "head matrices out of bounds"
        );
        // SAFETY: the assert above: p holds m·n values, out m rows and v n rows of hd
        // values at stride hidden.
        unsafe {
            gemm::gemm(
                m,
                hd,
                n,
                out.as_mut_ptr(),
                1,
                hidden as isize,
                false,
                p.as_ptr(),
                1,
                n as isize,
                v.as_ptr(),
                1,
                hidden as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

/// The attention kernel on row-major `[batch, rows, hidden]` slices; with `window: Some(w)`
/// query row `i` sees keys `i − w ..= i + w` only.
fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pad: &[u8],
    out: &mut [f32],
    s: Shape,
    window: Option<usize>,
) {
    let Shape {
        batch,
        sq,
        seq,
        hidden,
        heads,
    } = s;
    let hd = hidden / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut probs = vec![0.0f32; sq * seq];
    for b in 0..batch {
        let pad_b = &pad[b * seq..(b + 1) * seq];
        for h in 0..heads {
            let qh = &q[b * sq * hidden + h * hd..];
            let kh = &k[b * seq * hidden + h * hd..];
            let vh = &v[b * seq * hidden + h * hd..];
            let heads = Heads { hidden, hd };
            // probs [sq, seq] = scale · q_h [sq, hd] · k_hᵀ [hd, seq]
            heads.a_bt(&mut probs, qh, kh, sq, seq, scale);
            for (i, row) in probs.chunks_exact_mut(seq).enumerate() {
                match window {
                    None => softmax_masked(row, pad_b),
                    Some(w) => {
                        let (lo, hi) = (i.saturating_sub(w), (i + w + 1).min(seq));
                        row[..lo].fill(0.0);
                        row[hi..].fill(0.0);
                        softmax_masked(&mut row[lo..hi], &pad_b[lo..hi]);
                    }
                }
            }
            let oh = &mut out[b * sq * hidden + h * hd..];
            // out_h [sq, hd] = probs [sq, seq] · v_h [seq, hd]
            heads.p_v(oh, &probs, vh, sq, seq);
        }
    }
}

/// Softmax over one row of scores, padding keys (`pad[j] != 0`) excluded (probability 0).
fn softmax_masked(row: &mut [f32], pad: &[u8]) {
    let mut max = f32::NEG_INFINITY;
    for (x, &p) in row.iter().zip(pad) {
        if p == 0 && *x > max {
            max = *x;
        }
    }
    if max == f32::NEG_INFINITY {
        // Every key is padding (never so for a tokenized pair, which has [CLS]).
        row.fill(0.0);
        return;
    }
    let mut sum = 0.0f32;
    for (x, &p) in row.iter_mut().zip(pad) {
        *x = if p == 0 { (*x - max).exp() } else { 0.0 };
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// `value` as a `T` when it is one (the caller has compared the types' ids).
fn downcast<T: 'static, U: 'static>(value: U) -> Result<T, U> {
    let boxed: Box<dyn Any> = Box::new(value);
    match boxed.downcast::<T>() {
        Ok(t) => Ok(*t),
        Err(boxed) => match boxed.downcast::<U>() {
            Ok(u) => Err(*u),
            Err(_) => unreachable!("the box holds the U it was made from"),
        },
    }
}

/// GELU over a slice, with the best vector instructions the CPU has.
pub fn gelu_in_place(data: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { gelu_avx2_fma(data) };
        return;
    }
    gelu_portable(data);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2_fma(data: &mut [f32]) {
    gelu_portable(data);
}

#[inline(always)]
fn gelu_portable(data: &mut [f32]) {
    for x in data.iter_mut() {
        let v = *x;
        *x = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// `erf` for f32 as Eigen's `generic_fast_erf_float` (also TensorFlow's and XLA's): an odd
/// degree-13 over even degree-8 rational function on `[-4, 4]`, where `erf` reaches ±1 in
/// f32. No branches, so a loop over it vectorises.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.726_142_3e-10, 2.770_681_4e-8);
    p = x2.mul_add(p, -2.101_024e-6);
    p = x2.mul_add(p, -5.692_506_4e-5);
    p = x2.mul_add(p, -7.349_906_3e-4);
    p = x2.mul_add(p, -2.954_600_1e-3);
    p = x2.mul_add(p, -1.609_603_3e-2);
    let mut q = x2.mul_add(-1.456_607_2e-5, -2.133_740_6e-4);
    q = x2.mul_add(q, -1.682_827e-3);
    q = x2.mul_add(q, -7.373_329_2e-3);
    q = x2.mul_add(q, -1.426_474e-2);
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_within_4e_7_of_libm_everywhere() {
        let mut worst = (0.0f32, 0.0f32);
        let mut x = -8.0f32;
        while x <= 8.0 {
            let d = (erf(x) - libm::erff(x)).abs();
            if d > worst.1 {
                worst = (x, d);
            }
            x += 1.0 / 4096.0;
        }
        for x in [
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            1e-8,
            100.0,
            -100.0,
            f32::MAX,
            f32::MIN,
        ] {
            let d = (erf(x) - libm::erff(x)).abs();
            if d > worst.1 {
                worst = (x, d);
            }
        }
        assert!(
            worst.1 <= 4e-7,
            "max |erf - erff| {} at x = {}",
            worst.1,
            worst.0
        );
    }

    #[test]
    fn attention_matches_burns_attention_op() {
        type B = Flex;
        let device = Default::default();
        let (batch, seq, heads, hd) = (3, 7, 4, 8);
        let hidden = heads * hd;
        let random = |seed: u64| {
            let n = batch * seq * hidden;
            // A fixed LCG: the same numbers on every run and machine.
            let mut state = seed;
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
                })
                .collect();
            Tensor::<B, 1>::from_floats(v.as_slice(), &device).reshape([batch, seq, hidden])
        };
        let (q, k, v) = (random(1), random(2), random(3));
        // Row 0 has no padding, row 1 three padded keys, row 2 all keys but the first.
        let lengths = [7usize, 4, 1];
        let pad: Vec<bool> = lengths
            .iter()
            .flat_map(|&l| (0..seq).map(move |j| j >= l))
            .collect();
        let padding =
            Tensor::<B, 1, Bool>::from_bool(pad.as_slice().into(), &device).reshape([batch, seq]);
        for sq in [seq, 1] {
            let queries = q.clone().slice([0..batch, 0..sq]);
            let got = attention(
                queries.clone(),
                k.clone(),
                v.clone(),
                padding.clone(),
                heads,
            );
            let want = attention_burn(queries, k.clone(), v.clone(), padding.clone(), heads);
            assert_eq!(got.dims(), [batch, sq, hidden]);
            let got: Vec<f32> = got.into_data().to_vec().unwrap();
            let want: Vec<f32> = want.into_data().to_vec().unwrap();
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= 1e-5, "{sq} queries: max |Δ| {worst}");
        }
    }

    /// The tracked attention (forward and the gradients of q, k, v, with padding, dropout
    /// and a single query row) against the same attention in burn ops under autodiff.
    #[test]
    fn tracked_attention_matches_burn_ops() {
        use crate::models::dropout::{Dropout, seeded};
        type Ad = burn::backend::Autodiff<Flex>;
        let device = Default::default();
        let (batch, seq, hidden, heads) = (3, 7, 8, 2);
        let hd = hidden / heads;
        let values = |n: usize, salt: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 37 + salt * 11) % 23) as f32 - 11.0) / 9.0)
                .collect()
        };
        let lens = [7usize, 4, 2];
        let pad: Vec<bool> = (0..batch * seq).map(|i| i % seq >= lens[i / seq]).collect();
        for sq in [seq, 1] {
            let run = |ours: bool| {
                let leaf = |rows: usize, salt: usize| {
                    Tensor::<Ad, 1>::from_floats(
                        values(batch * rows * hidden, salt).as_slice(),
                        &device,
                    )
                    .reshape([batch, rows, hidden])
                    .require_grad()
                };
                let (q, k, v) = (leaf(sq, 1), leaf(seq, 2), leaf(seq, 3));
                let padding = Tensor::<Ad, 2, Bool>::from_data(
                    TensorData::new(pad.clone(), [batch, seq]),
                    &device,
                );
                let _stream = seeded(9, 0, batch);
                let drop = Dropout::new(0.2);
                let mask = drop
                    .host_factors::<Ad>(&device, &[batch, heads, sq, seq])
                    .unwrap()
                    .unwrap();
                let out = if ours {
                    attention_tracked(q.clone(), k.clone(), v.clone(), padding, heads, Some(mask))
                } else {
                    let split = |t: Tensor<Ad, 3>, s: usize| {
                        t.reshape([batch, s, heads, hd]).swap_dims(1, 2)
                    };
                    let m = padding
                        .reshape([batch, 1, 1, seq])
                        .expand([batch, 1, sq, seq]);
                    let scores = split(q.clone(), sq)
                        .matmul(split(k.clone(), seq).swap_dims(2, 3))
                        .div_scalar((hd as f64).sqrt())
                        .mask_fill(m, f32::NEG_INFINITY);
                    let factors = Tensor::<Ad, 4>::from_data(
                        TensorData::new(mask, [batch, heads, sq, seq]),
                        &device,
                    );
                    (activation::softmax(scores, 3) * factors)
                        .matmul(split(v.clone(), seq))
                        .swap_dims(1, 2)
                        .reshape([batch, sq, hidden])
                };
                let w = Tensor::<Ad, 1>::from_floats(
                    values(batch * sq * hidden, 5).as_slice(),
                    &device,
                )
                .reshape([batch, sq, hidden]);
                let grads = (out.clone() * w).sum().backward();
                let flat =
                    |t: Tensor<burn_flex::Flex, 3>| -> Vec<f32> { t.into_data().to_vec().unwrap() };
                [
                    flat(out.inner()),
                    flat(q.grad(&grads).unwrap()),
                    flat(k.grad(&grads).unwrap()),
                    flat(v.grad(&grads).unwrap()),
                ]
            };
            let (ours, theirs) = (run(true), run(false));
            for (what, (a, b)) in ["out", "dq", "dk", "dv"]
                .iter()
                .zip(ours.iter().zip(&theirs))
            {
                let worst = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst <= 1e-5, "{sq} queries, {what}: max |Δ| {worst}");
                assert!(a.iter().any(|x| *x != 0.0), "{what} is all zeros");
            }
        }
    }

    #[test]
    fn exp_is_within_2_ulp_of_libm() {
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (got, want) = (exp(x), libm::expf(x));
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {got}, libm {want} ({ulp} ulp)");
            x += 1.0 / 256.0;
        }
        assert!(exp(-200.0) < 1e-37);
    }

    /// The tracked GELU's gradient against burn's composite GELU under autodiff.
    #[test]
    fn tracked_gelu_gradient_matches_burns() {
        type Ad = burn::backend::Autodiff<Flex>;
        let device = Default::default();
        let values: Vec<f32> = (0..1200).map(|i| (i as f32 - 600.0) / 97.0).collect();
        let run = |ours: bool| {
            let x = Tensor::<Ad, 1>::from_floats(values.as_slice(), &device)
                .reshape([12, 100])
                .require_grad();
            let w = Tensor::<Ad, 2>::from_floats([[0.5f32; 100]; 12], &device);
            let y = if ours {
                gelu(x.clone())
            } else {
                activation::gelu(x.clone())
            };
            let grads = (y.clone() * y.clone() * w).sum().backward();
            let dx: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
            let y: Vec<f32> = y.into_data().to_vec().unwrap();
            (y, dx)
        };
        let ((y, dx), (y_ref, dx_ref)) = (run(true), run(false));
        let worst = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
        };
        assert!(worst(&y, &y_ref) <= 1e-6, "forward {}", worst(&y, &y_ref));
        assert!(
            worst(&dx, &dx_ref) <= 1e-5,
            "backward {}",
            worst(&dx, &dx_ref)
        );
    }

    #[test]
    fn gelu_matches_flex_on_every_path() {
        type B = Flex;
        let device = Default::default();
        let values: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 61.0).collect();
        let x = Tensor::<B, 1>::from_floats(values.as_slice(), &device).reshape([10, 100]);
        let want: Vec<f32> = activation::gelu(x.clone()).into_data().to_vec().unwrap();
        // Shared storage (x is used again below), then a transposed (strided) view.
        let shared: Vec<f32> = gelu(x.clone()).into_data().to_vec().unwrap();
        let strided: Vec<f32> = gelu(x.clone().transpose())
            .transpose()
            .into_data()
            .to_vec()
            .unwrap();
        let before: Vec<f32> = x.into_data().to_vec().unwrap();
        assert_eq!(before, values, "the input tensor was changed");
        for got in [shared, strided] {
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= 1e-6, "max |Δ| {worst}");
        }
    }
}
