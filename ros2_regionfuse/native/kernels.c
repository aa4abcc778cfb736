/* Fused full-resolution kernels of ros2_regionfuse (CPU inference).
 *
 * Each function does in one pass over the image what the torch/OpenCV code of
 * the package does in several: the frame's full-resolution steps are bound by
 * memory traffic, so the number of passes sets their cost. The arithmetic is
 * the torch code's (float32; half-pixel-centre bilinear sampling as torch's
 * upsample_bilinear2d / grid_sample with align_corners=False), in another order
 * of operations. Python reference: ros2_regionfuse/native/__init__.py, which
 * loads this file through ctypes and checks the results in the tests.
 *
 * All arrays are C-contiguous float32 planes; no function keeps a pointer.
 * Every function returns 0, or -1 when it could not allocate its row buffers.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    int i0, i1;     /* source indices */
    float l0, l1;   /* their weights (l0 + l1 = 1) */
} Tap;

/* Source taps of n_out output samples from n_in inputs: half-pixel centres, edge clamped. */
static void make_taps(Tap *t, int n_out, int n_in) {
    const float scale = (float)n_in / (float)n_out;
    for (int i = 0; i < n_out; ++i) {
        float src = scale * ((float)i + 0.5f) - 0.5f;
        if (src < 0.f) src = 0.f;
        int i0 = (int)src;
        if (i0 > n_in - 1) i0 = n_in - 1;
        t[i].i0 = i0;
        t[i].i1 = i0 < n_in - 1 ? i0 + 1 : i0;
        t[i].l1 = src - (float)i0;
        t[i].l0 = 1.f - t[i].l1;
    }
}

/* Horizontal bilinear resampling of one row: w_in -> n_out samples by the taps tx. Exact factor 2
 * (the pyramid) takes a gather-free loop: even outputs 0.25 v[k-1] + 0.75 v[k], odd 0.75 v[k] + 0.25 v[k+1]. */
static void hup_row(const float *restrict v, int w_in, const Tap *tx, int n_out, float *restrict dst) {
    if (n_out == 2 * w_in && w_in >= 2) {
        dst[0] = v[0];
        for (int k = 1; k < w_in; ++k) dst[2 * k] = 0.25f * v[k - 1] + 0.75f * v[k];
        for (int k = 0; k < w_in - 1; ++k) dst[2 * k + 1] = 0.75f * v[k] + 0.25f * v[k + 1];
        dst[n_out - 1] = v[w_in - 1];
        return;
    }
    for (int j = 0; j < n_out; ++j) dst[j] = tx[j].l0 * v[tx[j].i0] + tx[j].l1 * v[tx[j].i1];
}

/* Bilinear upsampling row by row: source rows resampled horizontally once each (two kept, in
 * slots by parity: a row's two taps are consecutive rows), output rows blended vertically. */
typedef struct {
    const float *src;   /* (h_in, w_in) plane */
    int w_in, w_out;
    const Tap *tx;
    int idx[2];
    float *rows[2];     /* w_out each */
} RowCache;

static void cache_init(RowCache *c, const float *src, int w_in, const Tap *tx, int w_out, float *mem) {
    c->src = src; c->w_in = w_in; c->tx = tx; c->w_out = w_out;
    c->idx[0] = c->idx[1] = -1;
    c->rows[0] = mem; c->rows[1] = mem + w_out;
}

static const float *cache_row(RowCache *c, int r) {
    const int k = r & 1;
    if (c->idx[k] != r) {
        hup_row(c->src + (size_t)r * c->w_in, c->w_in, c->tx, c->w_out, c->rows[k]);
        c->idx[k] = r;
    }
    return c->rows[k];
}

/* Output row with vertical tap ty into dst (w_out wide). */
static void up_row(RowCache *c, Tap ty, float *restrict dst) {
    const float *restrict r0 = cache_row(c, ty.i0), *restrict r1 = cache_row(c, ty.i1);
    const float l0 = ty.l0, l1 = ty.l1;
    for (int j = 0; j < c->w_out; ++j) dst[j] = l0 * r0[j] + l1 * r1[j];
}

/* One detail row of a Laplacian level: d = g_row - up2(g1)[row of ty]. */
static void detail_row(const float *restrict g, RowCache *g1, Tap ty, float *restrict d) {
    up_row(g1, ty, d);
    for (int j = 0; j < g1->w_out; ++j) d[j] = g[j] - d[j];
}

/* Mean |detail| of a Laplacian level over f x f blocks (the region network's detail energies).
 *   g: (h, w) Gaussian level; g1: (h/2, w/2) the next level; out: (h/f, w/f).
 * Equals F.avg_pool2d((g - up(g1)).abs(), f) with up = bilinear x2 (align_corners=False). */
int rf_detail_energy(const float *g, const float *g1, int h, int w, int f, float *out) {
    const int h1 = h / 2, w1 = w / 2, ho = h / f, wo = w / f;
    Tap *tx = malloc(sizeof(Tap) * (size_t)w), *ty = malloc(sizeof(Tap) * (size_t)h);
    float *buf = malloc(sizeof(float) * 4 * (size_t)w);
    if (!tx || !ty || !buf) { free(tx); free(ty); free(buf); return -1; }
    make_taps(tx, w, w1);
    make_taps(ty, h, h1);
    RowCache c;
    cache_init(&c, g1, w1, tx, w, buf);
    float *d = buf + 2 * w, *acc = buf + 3 * w;
    const float inv = 1.f / (float)(f * f);
    for (int bi = 0; bi < ho; ++bi) {
        for (int j = 0; j < w; ++j) acc[j] = 0.f;
        for (int r = bi * f; r < (bi + 1) * f; ++r) {
            detail_row(g + (size_t)r * w, &c, ty[r], d);
            for (int j = 0; j < w; ++j) acc[j] += fabsf(d[j]);
        }
        float *o = out + (size_t)bi * wo;
        for (int bj = 0; bj < wo; ++bj) {
            float s = 0.f;
            for (int k = 0; k < f; ++k) s += acc[bj * f + k];
            o[bj] = s * inv;
        }
    }
    free(tx); free(ty); free(buf);
    return 0;
}

/* Horizontal 3-sums of |d| (zero beyond the row's ends): hs[j] = |d[j-1]| + |d[j]| + |d[j+1]|.
 * a: scratch of w + 2. */
static void abs_sum3(const float *restrict d, int w, float *restrict a, float *restrict hs) {
    a[0] = a[w + 1] = 0.f;
    for (int j = 0; j < w; ++j) a[j + 1] = fabsf(d[j]);
    for (int j = 0; j < w; ++j) hs[j] = a[j] + a[j + 1] + a[j + 2];
}

/* One level of the fusion's pyramid blending and reconstruction (RegionFuseNet.forward):
 *   dT = gt - up2(gt1), dY = gy - up2(gy1)            (Laplacian details of the level)
 *   aT, aY = 3x3 means of |dT|, |dY| (zero padding, / 9)
 *   s = sigmoid(temp * (aT - aY) / (aT + aY + 1e-3) + bias)
 *   out = up2(x1) + gain * (dY + s * (dT - dY)), clamped to [0, 1] when clamp != 0
 * gt, gy: (h, w); gt1, gy1, x1: (h/2, w/2) (x1: the coarser levels' reconstruction);
 * bias, gain: (hn, wn) at the network level, upsampled bilinearly to (h, w); out: (h, w).
 * Rows stream through rings of three (details and |detail| 3-sums), so every input is read once. */
int rf_fuse_level(const float *gt, const float *gy, const float *gt1, const float *gy1, const float *x1,
                  int h, int w, const float *bias, const float *gain, int hn, int wn, float temp,
                  int clamp, float *out) {
    const int h1 = h / 2, w1 = w / 2;
    const size_t W = (size_t)w;
    Tap *tx = malloc(sizeof(Tap) * W), *ty = malloc(sizeof(Tap) * (size_t)h);
    Tap *px = malloc(sizeof(Tap) * W), *py = malloc(sizeof(Tap) * (size_t)h);
    /* 12 ring rows, 5 row caches of 2 rows, 3 upsampled rows, a zero row, the |d| scratch */
    float *buf = calloc(12 * W + 10 * W + 3 * W + W + W + 2, sizeof(float));
    if (!tx || !ty || !px || !py || !buf) { free(tx); free(ty); free(px); free(py); free(buf); return -1; }
    make_taps(tx, w, w1);
    make_taps(ty, h, h1);
    make_taps(px, w, wn);
    make_taps(py, h, hn);
    float *dT[3], *dY[3], *sT[3], *sY[3];
    for (int k = 0; k < 3; ++k) {
        dT[k] = buf + (0 + k) * W; dY[k] = buf + (3 + k) * W;
        sT[k] = buf + (6 + k) * W; sY[k] = buf + (9 + k) * W;
    }
    RowCache cT, cY, cX, cB, cG;
    float *mem = buf + 12 * W;
    cache_init(&cT, gt1, w1, tx, w, mem);
    cache_init(&cY, gy1, w1, tx, w, mem + 2 * W);
    cache_init(&cX, x1, w1, tx, w, mem + 4 * W);
    cache_init(&cB, bias, wn, px, w, mem + 6 * W);
    cache_init(&cG, gain, wn, px, w, mem + 8 * W);
    float *ux = buf + 22 * W, *ub = buf + 23 * W, *ug = buf + 24 * W;
    const float *zero = buf + 25 * W;   /* calloc'd, never written */
    float *a = buf + 26 * W;
    for (int r = 0; r < 2 && r < h; ++r) {   /* rows 0 and 1 */
        detail_row(gt + (size_t)r * W, &cT, ty[r], dT[r]);
        detail_row(gy + (size_t)r * W, &cY, ty[r], dY[r]);
        abs_sum3(dT[r], w, a, sT[r]);
        abs_sum3(dY[r], w, a, sY[r]);
    }
    const float ninth = 1.f / 9.f;
    for (int i = 0; i < h; ++i) {
        if (i >= 1 && i + 1 < h) {   /* row i + 1 into its slot */
            const int r = i + 1, k = r % 3;
            detail_row(gt + (size_t)r * W, &cT, ty[r], dT[k]);
            detail_row(gy + (size_t)r * W, &cY, ty[r], dY[k]);
            abs_sum3(dT[k], w, a, sT[k]);
            abs_sum3(dY[k], w, a, sY[k]);
        }
        const int k = i % 3;
        const float *restrict pT = i > 0 ? sT[(i + 2) % 3] : zero, *restrict pY = i > 0 ? sY[(i + 2) % 3] : zero;
        const float *restrict nT = i + 1 < h ? sT[(i + 1) % 3] : zero;
        const float *restrict nY = i + 1 < h ? sY[(i + 1) % 3] : zero;
        const float *restrict cTs = sT[k], *restrict cYs = sY[k], *restrict dt = dT[k], *restrict dy = dY[k];
        up_row(&cX, ty[i], ux);
        up_row(&cB, py[i], ub);
        up_row(&cG, py[i], ug);
        float *restrict o = out + (size_t)i * W;
        for (int j = 0; j < w; ++j) {
            const float at = (pT[j] + cTs[j] + nT[j]) * ninth, ay = (pY[j] + cYs[j] + nY[j]) * ninth;
            const float z = temp * (at - ay) / (at + ay + 1e-3f) + ub[j];
            const float s = 1.f / (1.f + expf(-z));
            o[j] = ux[j] + ug[j] * (dy[j] + s * (dt[j] - dy[j]));
        }
        if (clamp)
            for (int j = 0; j < w; ++j) o[j] = fminf(fmaxf(o[j], 0.f), 1.f);
    }
    free(tx); free(ty); free(px); free(py); free(buf);
    return 0;
}

/* Bilinear sample of the (h, w) plane img at (x, y) pixels, border-clamped as grid_sample's
 * 'border' padding (int offsets: planes below 2**31 pixels). */
static inline float sample(const float *restrict img, float x, float y, int w, int h) {
    x = fminf(fmaxf(x, 0.f), (float)(w - 1));
    y = fminf(fmaxf(y, 0.f), (float)(h - 1));
    const int x0 = (int)x, y0 = (int)y;
    const int x1 = x0 + (x0 < w - 1), y1 = y0 + (y0 < h - 1);
    const float ax = x - (float)x0, ay = y - (float)y0;
    const float top = img[y0 * w + x0] + ax * (img[y0 * w + x1] - img[y0 * w + x0]);
    const float bot = img[y1 * w + x0] + ax * (img[y1 * w + x1] - img[y1 * w + x0]);
    return top + ay * (bot - top);
}

/* Row i of the M-gated bidirectional warp: dst[j] = bwd + m (fwd - bwd) with fwd, bwd the samples
 * of img at (j, i) + flow and (j, i) - flow (one loop, vectorised with gathers). */
static void bidir_row(const float *restrict img, const float *restrict fx, const float *restrict fy,
                      const float *restrict m, int i, int w, int h, float *restrict dst) {
    const float fi = (float)i;
    for (int j = 0; j < w; ++j) {
        const float fwd = sample(img, (float)j + fx[j], fi + fy[j], w, h);
        const float bwd = sample(img, (float)j - fx[j], fi - fy[j], w, h);
        dst[j] = bwd + m[j] * (fwd - bwd);
    }
}

/* The corrector's full-resolution step (models/corrector.py, full_resolution):
 *   low: (5, hl, wl) fields on the padded frame's grid (flow x, flow y in full-resolution pixels,
 *        M, gain, bias), upsampled bilinearly to (hp, wp) and cropped to (h, w);
 *   warp_M(I) = M * I(p + flow) + (1 - M) * I(p - flow) (bilinear, border clamped);
 *   retain (refuse == 0): out = warp_M(F) + gain * (Y - warp_M(Y)) + bias
 *   refuse (refuse != 0): out = F + gain * (warp_M(T) - T) + bias
 * clamped to [0, 1]. fused, vis, th, out, m_out: (h, w); flow_out: (2, h, w). th may be NULL
 * for retain, vis for refuse. */
int rf_corrector_full(const float *low, int hl, int wl, int hp, int wp, const float *fused,
                      const float *vis, const float *th, int h, int w, int refuse,
                      float *out, float *m_out, float *flow_out) {
    const size_t W = (size_t)w, plane = (size_t)hl * wl, hw = (size_t)h * w;
    Tap *tx = malloc(sizeof(Tap) * (size_t)wp), *ty = malloc(sizeof(Tap) * (size_t)hp);
    float *buf = malloc(sizeof(float) * (10 * (size_t)wp + 4 * (size_t)wp));
    if (!tx || !ty || !buf) { free(tx); free(ty); free(buf); return -1; }
    make_taps(tx, wp, wl);
    make_taps(ty, hp, hl);
    RowCache c[5];
    for (int k = 0; k < 5; ++k) cache_init(&c[k], low + k * plane, wl, tx, wp, buf + 2 * k * (size_t)wp);
    float *ug = buf + 10 * (size_t)wp, *ub = ug + wp, *tmp = ub + wp;
    for (int i = 0; i < h; ++i) {
        const size_t row = (size_t)i * W;
        float *restrict fx = flow_out + row, *restrict fy = flow_out + hw + row, *restrict m = m_out + row;
        float *rows[5] = {fx, fy, m, ug, ub};
        for (int k = 0; k < 5; ++k) {   /* the padded grid's row, cropped to w */
            up_row(&c[k], ty[i], tmp);
            for (int j = 0; j < w; ++j) rows[k][j] = tmp[j];
        }
        float *restrict o = out + row;
        if (refuse) {
            const float *restrict t = th + row, *restrict f = fused + row;
            bidir_row(th, fx, fy, m, i, w, h, tmp);
            for (int j = 0; j < w; ++j) o[j] = fminf(fmaxf(f[j] + ug[j] * (tmp[j] - t[j]) + ub[j], 0.f), 1.f);
        } else {
            const float *restrict y = vis + row;
            float *restrict wf = tmp, *restrict wy = tmp + w;
            bidir_row(fused, fx, fy, m, i, w, h, wf);
            bidir_row(vis, fx, fy, m, i, w, h, wy);
            for (int j = 0; j < w; ++j) o[j] = fminf(fmaxf(wf[j] + ug[j] * (y[j] - wy[j]) + ub[j], 0.f), 1.f);
        }
    }
    free(tx); free(ty); free(buf);
    return 0;
}
