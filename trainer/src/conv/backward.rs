//! The backward pass: the output gradient routed back through the pool's arg-max
//! and masked by the ReLU, then `dW += g · colsᵀ`, `db += Σ g` and, when the input
//! needs a gradient, `dcols = Wᵀ · g` scattered back with col2im.

use fennec_runtime::kernels::simd::simd_fn;
use rayon::prelude::*;

use super::geometry::{Geometry, Op, Pool, Tile};
use super::im2col::{col2im_add, cols_of, matmul};

/// Gradients of one operation.
pub struct Grads {
    /// `batch x cin x h x w`, when asked for.
    pub dx: Option<Vec<f32>>,
    /// `cout x (cin*kh*kw)` (= `[cout, cin, kh, kw]`).
    pub dw: Vec<f32>,
    /// `cout`.
    pub db: Vec<f32>,
}

/// Backward pass. `dy` is the gradient of the result; `out` is the result itself,
/// needed when a ReLU is fused (its gradient is `dy` where `out > 0`, else 0);
/// `argmax` is [`Forward::argmax`](super::Forward::argmax) when a pool is fused.
pub fn backward(
    x: &[f32],
    w: &[f32],
    out: Option<&[f32]>,
    argmax: &[u8],
    dy: &[f32],
    op: &Op,
    want_dx: bool,
) -> Grads {
    let g = &op.g;
    let (k, n, in_len, out_len) = (g.k(), g.n(), g.in_len(), op.out_len());
    assert_eq!(
        (x.len(), w.len(), dy.len()),
        (g.batch * in_len, g.cout * k, g.batch * out_len)
    );
    assert!(
        !op.relu || out.is_some_and(|o| o.len() == dy.len()),
        "a fused ReLU needs the output"
    );
    assert!(
        op.pool.is_none() || argmax.len() == dy.len(),
        "a fused pool needs the arg-max"
    );
    let tiles = op.tiles();
    let mut dw_parts = vec![0f32; g.batch * g.cout * k];
    let mut db_parts = vec![0f32; g.batch * g.cout];
    let mut dx = if want_dx {
        vec![0f32; g.batch * in_len]
    } else {
        Vec::new()
    };
    let mut dx_images: Vec<Option<&mut [f32]>> = if want_dx {
        dx.chunks_mut(in_len).map(Some).collect()
    } else {
        (0..g.batch).map(|_| None).collect()
    };

    struct Scratch {
        cols: Vec<f32>,
        grad: Vec<f32>,
        dcols: Vec<f32>,
    }
    let scratch = || Scratch {
        cols: Vec::new(),
        grad: Vec::new(),
        dcols: Vec::new(),
    };
    dw_parts
        .par_chunks_mut(g.cout * k)
        .zip(db_parts.par_chunks_mut(g.cout))
        .zip(dx_images.par_iter_mut())
        .enumerate()
        .for_each_init(scratch, |s, (img, ((dw, db), dx))| {
            let xb = &x[img * in_len..(img + 1) * in_len];
            let dyb = &dy[img * out_len..(img + 1) * out_len];
            let ob = out.map(|o| &o[img * out_len..(img + 1) * out_len]);
            let ab = op.pool.map(|_| &argmax[img * out_len..(img + 1) * out_len]);
            for (ti, t) in tiles.iter().enumerate() {
                let nt = t.nt(g);
                // The gradient of the conv rows of this tile (after the ReLU mask), `cout x nt`.
                s.grad.resize(g.cout * nt, 0.0);
                match (op.pool, ab) {
                    (Some(p), Some(ab)) => unpool_tile(dyb, ob, ab, g, &p, t, &mut s.grad),
                    _ => conv_grad_tile(dyb, ob, g, t, &mut s.grad),
                }
                add_row_sums(&s.grad, nt, db);
                let (cols, cols_rs) = cols_of(xb, g, t.cy0, t.cy1, &mut s.cols);
                // dW (cout x k) += grad (cout x nt) · colsᵀ (nt x k).
                // SAFETY: sizes as documented on each buffer above.
                unsafe {
                    matmul(
                        [g.cout, k, nt],
                        dw.as_mut_ptr(),
                        k,
                        ti > 0,
                        s.grad.as_ptr(),
                        [nt, 1],
                        cols.as_ptr(),
                        [1, cols_rs],
                    );
                }
                let Some(dx) = dx else { continue };
                // dcols (k x nt) = Wᵀ (k x cout) · grad (cout x nt), then col2im.
                if g.pointwise() {
                    // SAFETY: dx holds k (= cin) rows of n ≥ cy0*wo + nt values.
                    unsafe {
                        let dst = dx.as_mut_ptr().add(t.cy0 * g.wo);
                        matmul(
                            [k, nt, g.cout],
                            dst,
                            n,
                            false,
                            w.as_ptr(),
                            [1, k],
                            s.grad.as_ptr(),
                            [nt, 1],
                        );
                    }
                } else {
                    s.dcols.resize(k * nt, 0.0);
                    // SAFETY: dcols is k x nt.
                    unsafe {
                        matmul(
                            [k, nt, g.cout],
                            s.dcols.as_mut_ptr(),
                            nt,
                            false,
                            w.as_ptr(),
                            [1, k],
                            s.grad.as_ptr(),
                            [nt, 1],
                        );
                    }
                    col2im_add(&s.dcols, g, t.cy0, t.cy1, dx);
                }
            }
        });
    drop(dx_images);

    // Sum the per-image parts in image order: the same result for any thread count.
    let sum = |parts: &[f32], len: usize| {
        let mut chunks = parts.chunks_exact(len);
        let mut total = chunks.next().expect("batch ≥ 1").to_vec();
        for p in chunks {
            total.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        total
    };
    Grads {
        dx: want_dx.then_some(dx),
        dw: sum(&dw_parts, g.cout * k),
        db: sum(&db_parts, g.cout),
    }
}

simd_fn! {
    /// The gradient of conv rows `t.cy0..t.cy1` (`cout x nt`) from the output's
    /// gradient `dyb`, masked by `ob > 0` (the output) when a ReLU is fused.
    fn conv_grad_tile(dyb: &[f32], ob: Option<&[f32]>, g: &Geometry, t: &Tile, grad: &mut [f32]) {
        let (n, nt) = (g.n(), t.nt(g));
        for co in 0..g.cout {
            let src = &dyb[co * n + t.cy0 * g.wo..][..nt];
            let dst = &mut grad[co * nt..(co + 1) * nt];
            match ob {
                Some(ob) => {
                    let mask = &ob[co * n + t.cy0 * g.wo..][..nt];
                    for ((d, &v), &m) in dst.iter_mut().zip(src).zip(mask) {
                        *d = if m > 0.0 { v } else { 0.0 };
                    }
                }
                None => dst.copy_from_slice(src),
            }
        }
    }
}

simd_fn! {
    /// `sums[c] += Σ rows[c]` for rows of `len` values.
    fn add_row_sums(rows: &[f32], len: usize, sums: &mut [f32]) {
        for (sum, row) in sums.iter_mut().zip(rows.chunks_exact(len)) {
            // Eight partial sums: vectorisable, and a fixed order (deterministic).
            let mut acc = [0f32; 8];
            let chunks = row.chunks_exact(8);
            let tail: f32 = chunks.remainder().iter().sum();
            for c in chunks {
                for (a, v) in acc.iter_mut().zip(c) {
                    *a += v;
                }
            }
            *sum += acc.iter().sum::<f32>() + tail;
        }
    }
}

simd_fn! {
    /// Routes the pooled gradient `dyb` of rows `t.py0..t.py1` back to the arg-max
    /// positions of the conv tile `grad` (`cout x nt`, zero elsewhere); with a fused
    /// ReLU (`ob`, the pooled output), windows whose maximum is not positive pass
    /// nothing.
    fn unpool_tile(dyb: &[f32], ob: Option<&[f32]>, ab: &[u8], g: &Geometry, p: &Pool, t: &Tile, grad: &mut [f32]) {
        let nt = t.nt(g);
        grad.fill(0.0);
        let pairs = p.kw == 2 && p.pad_left == 0;
        // Offset of each window position from the window's top-left corner in the tile.
        let offsets: Vec<isize> = (0..p.kh * p.kw).map(|a| ((a / p.kw) * g.wo + a % p.kw) as isize).collect();
        for co in 0..g.cout {
            let plane = &mut grad[co * nt..(co + 1) * nt];
            for py in t.py0..t.py1 {
                let i0 = (co * p.ho + py) * p.wo;
                let (d, a) = (&dyb[i0..i0 + p.wo], &ab[i0..i0 + p.wo]);
                let mask = ob.map(|o| &o[i0..i0 + p.wo]);
                let top = (py * p.kh) as isize - p.pad_top as isize;
                if pairs {
                    // 2-wide windows: write each covered conv row densely.
                    let rows = (top.max(0) as usize)..((top + p.kh as isize) as usize).min(g.ho);
                    for cy in rows {
                        let base = ((cy as isize - top) * 2) as u8;
                        let row = &mut plane[(cy - t.cy0) * g.wo..][..g.wo];
                        unpool_row(row, d, a, mask, base);
                    }
                    continue;
                }
                let row_base = (top - t.cy0 as isize) * g.wo as isize - p.pad_left as isize;
                for px in 0..p.wo {
                    if mask.is_some_and(|m| m[px] <= 0.0) {
                        continue;
                    }
                    let pos = row_base + (px * p.kw) as isize + offsets[a[px] as usize];
                    plane[pos as usize] = d[px];
                }
            }
        }
    }
}

/// One conv row under 2-wide windows: each pair gets the window's gradient at the
/// arg-max (`base` or `base + 1`, the row's positions), masked by `mask > 0`.
#[inline(always)]
fn unpool_row(row: &mut [f32], d: &[f32], a: &[u8], mask: Option<&[f32]>, base: u8) {
    let pairs = row.len() / 2;
    match mask {
        Some(m) => {
            for ((pair, (&d, &a)), &m) in row.chunks_exact_mut(2).zip(d.iter().zip(a)).zip(m) {
                let d = if m > 0.0 { d } else { 0.0 };
                pair[0] = if a == base { d } else { 0.0 };
                pair[1] = if a == base + 1 { d } else { 0.0 };
            }
        }
        None => {
            for (pair, (&d, &a)) in row.chunks_exact_mut(2).zip(d.iter().zip(a)) {
                pair[0] = if a == base { d } else { 0.0 };
                pair[1] = if a == base + 1 { d } else { 0.0 };
            }
        }
    }
    if pairs < d.len() && 2 * pairs < row.len() {
        let keep = a[pairs] == base && mask.is_none_or(|m| m[pairs] > 0.0);
        row[2 * pairs] = if keep { d[pairs] } else { 0.0 };
    }
}
