//! The forward pass: per image, per tile of rows, im2col, `conv = W · cols`, then
//! bias and ReLU, or the max pool (keeping each window's arg-max for the backward
//! pass) and bias and ReLU on the pooled values.

use fennec_runtime::kernels::simd::simd_fn;
use rayon::prelude::*;

use super::geometry::{Geometry, Op, Pool, Tile};
use super::im2col::{cols_of, matmul};

/// Result of [`forward`].
pub struct Forward {
    /// `batch x cout x out_h x out_w`.
    pub out: Vec<f32>,
    /// With a pool: the winning position (`dy * kw + dx`) of each output value.
    pub argmax: Vec<u8>,
}

/// Forward pass on contiguous NCHW data: `x` is `batch x cin x h x w`, `w` is
/// `cout x (cin*kh*kw)`, `b` is `cout`.
pub fn forward(x: &[f32], w: &[f32], b: &[f32], op: &Op) -> Forward {
    let g = &op.g;
    assert_eq!(
        (x.len(), w.len(), b.len()),
        (g.batch * g.in_len(), g.cout * g.k(), g.cout)
    );
    let (k, n, out_len) = (g.k(), g.n(), op.out_len());
    let tiles = op.tiles();
    let mut out = vec![0f32; g.batch * out_len];
    let mut argmax = vec![
        0u8;
        if op.pool.is_some() {
            g.batch * out_len
        } else {
            0
        }
    ];
    let mut argmax_images: Vec<&mut [u8]> = if op.pool.is_some() {
        argmax.chunks_mut(out_len).collect()
    } else {
        (0..g.batch).map(|_| &mut [][..]).collect()
    };
    let scratch = || {
        (
            Vec::new(),
            Vec::new(),
            vec![0i32; op.pool.map_or(0, |p| p.wo)],
        )
    };
    out.par_chunks_mut(out_len)
        .zip(argmax_images.par_iter_mut())
        .zip(x.par_chunks(g.in_len()))
        .for_each_init(scratch, |(cols, conv, pool_at), ((o, am), xb)| {
            for t in &tiles {
                let nt = t.nt(g);
                // The conv rows of the tile: straight into the output without a pool.
                let (dst, dst_rs) = match op.pool {
                    None => (&mut o[t.cy0 * g.wo..], n),
                    Some(_) => {
                        conv.resize(g.cout * nt, 0.0);
                        (&mut conv[..], nt)
                    }
                };
                let (rhs, rhs_rs) = cols_of(xb, g, t.cy0, t.cy1, cols);
                // SAFETY: dst holds cout rows of dst_rs ≥ nt values (the last row
                // exactly nt); w is cout x k; rhs holds k rows of rhs_rs ≥ nt values.
                unsafe {
                    matmul(
                        [g.cout, nt, k],
                        dst.as_mut_ptr(),
                        dst_rs,
                        false,
                        w.as_ptr(),
                        [k, 1],
                        rhs.as_ptr(),
                        [rhs_rs, 1],
                    );
                }
                match op.pool {
                    None => bias_act(dst, dst_rs, nt, b, op.relu),
                    Some(p) => {
                        // max(relu(c + b)) = relu(max(c) + b): bias and ReLU on the pooled
                        // values only (exactly, as rounding is monotonic).
                        pool_tile(conv, g, &p, t, o, am, pool_at);
                        let (plane, rows) = (p.ho * p.wo, (t.py1 - t.py0) * p.wo);
                        bias_act(&mut o[t.py0 * p.wo..], plane, rows, b, op.relu);
                    }
                }
            }
        });
    drop(argmax_images);
    Forward { out, argmax }
}

simd_fn! {
    /// Adds `bias[c]` to the `len` values of row `c` (rows `stride` apart) of `rows`,
    /// then applies the ReLU when `relu`.
    fn bias_act(rows: &mut [f32], stride: usize, len: usize, bias: &[f32], relu: bool) {
        for (c, &b) in bias.iter().enumerate() {
            let row = &mut rows[c * stride..][..len];
            if relu {
                row.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
            } else {
                row.iter_mut().for_each(|v| *v += b);
            }
        }
    }
}

simd_fn! {
    /// Max-pools the conv tile `conv` (`cout x nt`) into pooled rows `t.py0..t.py1` of
    /// one image's output `o` and arg-max `am` (the first maximum in row-major order
    /// wins). `at` is scratch of `p.wo` values.
    fn pool_tile(conv: &[f32], g: &Geometry, p: &Pool, t: &Tile, o: &mut [f32], am: &mut [u8], at: &mut [i32]) {
        let nt = t.nt(g);
        for co in 0..g.cout {
            let plane = &conv[co * nt..(co + 1) * nt];
            for py in t.py0..t.py1 {
                let i0 = (co * p.ho + py) * p.wo;
                let best = &mut o[i0..i0 + p.wo];
                // The window's rows that lie inside the map (padding never wins).
                let top = (py * p.kh) as isize - p.pad_top as isize;
                let rows = (top.max(0) as usize)..((top + p.kh as isize) as usize).min(g.ho);
                for (r, cy) in rows.enumerate() {
                    let dy = (cy as isize - top) as usize;
                    let row = &plane[(cy - t.cy0) * g.wo..][..g.wo];
                    pool_row(row, p, dy, r == 0, best, at);
                }
                for (a, &v) in am[i0..i0 + p.wo].iter_mut().zip(at.iter()) {
                    *a = v as u8;
                }
            }
        }
    }
}

/// Folds one conv row (window row `dy`) into the running maxima `best` and arg-max
/// `at` of a pooled row; `first` starts them.
#[inline(always)]
fn pool_row(row: &[f32], p: &Pool, dy: usize, first: bool, best: &mut [f32], at: &mut [i32]) {
    let base = (dy * p.kw) as i32;
    if p.kw == 2 && p.pad_left == 0 {
        // The common 2x2 case: pairs (branch-free, so that it vectorises), then an
        // odd last column.
        let pairs = row.len() / 2;
        let lanes = best.iter_mut().zip(at.iter_mut()).zip(row.chunks_exact(2));
        if first {
            for ((b, a), pair) in lanes {
                let right = pair[1] > pair[0];
                *b = if right { pair[1] } else { pair[0] };
                *a = base + right as i32;
            }
        } else {
            for ((b, a), pair) in lanes {
                let right = pair[1] > pair[0];
                let v = if right { pair[1] } else { pair[0] };
                let take = v > *b;
                *b = if take { v } else { *b };
                *a = if take { base + right as i32 } else { *a };
            }
        }
        if pairs < best.len() {
            let v = row[2 * pairs];
            if first || v > best[pairs] {
                (best[pairs], at[pairs]) = (v, base);
            }
        }
        return;
    }
    for (px, (b, a)) in best.iter_mut().zip(at.iter_mut()).enumerate() {
        let left = (px * p.kw) as isize - p.pad_left as isize;
        let cols = (left.max(0) as usize)..((left + p.kw as isize) as usize).min(row.len());
        for (c, cx) in cols.enumerate() {
            let v = row[cx];
            if (first && c == 0) || v > *b {
                (*b, *a) = (v, base + (cx as isize - left) as i32);
            }
        }
    }
}
