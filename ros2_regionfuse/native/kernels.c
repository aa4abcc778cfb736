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
#include <pthread.h>
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

/* o[j] = inv * (sum of a[j f .. j f + f - 1]), j < wo. */
static inline __attribute__((always_inline)) void group_sums(const float *restrict a, int wo, int f, float inv,
                                                             float *restrict o) {
    for (int j = 0; j < wo; ++j) {
        float t = 0.f;
        for (int k = 0; k < f; ++k) t += a[j * f + k];
        o[j] = t * inv;
    }
}

/* group_sums with the usual block sizes as constants (then the loop vectorises). */
static void block_row_means(const float *restrict a, int wo, int f, float inv, float *restrict o) {
    switch (f) {
    case 2: group_sums(a, wo, 2, inv, o); break;
    case 4: group_sums(a, wo, 4, inv, o); break;
    case 8: group_sums(a, wo, 8, inv, o); break;
    case 16: group_sums(a, wo, 16, inv, o); break;
    default: group_sums(a, wo, f, inv, o); break;
    }
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
        block_row_means(acc, wo, f, inv, out + (size_t)bi * wo);
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
/* Row-split harness: parts[k] (each `size` bytes) are processed by fn, part 0 in the calling thread and
 * the others on threads of their own (a part whose thread cannot start runs here too). The parts write
 * disjoint rows; the callers allocate every buffer (a new thread's first malloc would get a fresh arena
 * whose pages fault in on every call). */
#define MAX_ROW_THREADS 8

typedef int (*RowsFn)(void *part);

typedef struct {
    RowsFn fn;
    void *part;
    int rc;
} RowJob;

static void *row_job_thread(void *arg) {
    RowJob *j = arg;
    j->rc = j->fn(j->part);
    return NULL;
}

static int run_row_parts(RowsFn fn, void *parts, size_t size, int n) {
    RowJob job[MAX_ROW_THREADS];
    pthread_t tid[MAX_ROW_THREADS];
    int started[MAX_ROW_THREADS] = {0};
    for (int k = 0; k < n; ++k) job[k] = (RowJob){fn, (char *)parts + size * (size_t)k, 0};
    for (int k = 1; k < n; ++k) started[k] = pthread_create(&tid[k], NULL, row_job_thread, &job[k]) == 0;
    int rc = fn(job[0].part);
    for (int k = 1; k < n; ++k) {
        if (started[k]) {
            pthread_join(tid[k], NULL);
            if (job[k].rc) rc = job[k].rc;
        } else if (fn(job[k].part)) {
            rc = -1;
        }
    }
    return rc;
}

/* The thread count for h rows: 1..MAX_ROW_THREADS, at least 16 rows per thread. */
static int row_threads(int threads, int h) {
    if (threads > MAX_ROW_THREADS) threads = MAX_ROW_THREADS;
    return threads < 1 || h < 16 * threads ? 1 : threads;
}

typedef struct {
    const float *gt, *gy, *gt1, *gy1, *x1, *bias, *gain;
    int h, w, hn, wn, clamp;
    float temp;
    const Tap *tx, *ty, *px, *py;
    float *buf;   /* 27 * w + 2 floats of this part, zeroed */
    float *out;
    int i0, i1;
} LevelRows;

/* One output row of rf_fuse_level from the |detail| 3-sums of the rows above, at and below (s3: T's
 * three, then Y's), the row's details and upsampled x1, bias, gain. Its own function with restrict
 * parameters, so that the loop (and expf, by libmvec) is vectorised. */
static void blend_row_r(const float *restrict pT, const float *restrict cT, const float *restrict nT,
                        const float *restrict pY, const float *restrict cY, const float *restrict nY,
                        const float *restrict dt, const float *restrict dy, const float *restrict ux,
                        const float *restrict ub, const float *restrict ug, float temp, int clamp, int w,
                        float *restrict o) {
    const float ninth = 1.f / 9.f;
    for (int j = 0; j < w; ++j) {
        const float at = (pT[j] + cT[j] + nT[j]) * ninth, ay = (pY[j] + cY[j] + nY[j]) * ninth;
        const float z = temp * (at - ay) / (at + ay + 1e-3f) + ub[j];
        const float s = 1.f / (1.f + expf(-z));
        o[j] = ux[j] + ug[j] * (dy[j] + s * (dt[j] - dy[j]));
    }
    if (clamp)
        for (int j = 0; j < w; ++j) o[j] = fminf(fmaxf(o[j], 0.f), 1.f);
}

static void blend_row(const float *const s3[6], const float *dt, const float *dy, const float *ux, const float *ub,
                      const float *ug, float temp, int clamp, int w, float *o) {
    blend_row_r(s3[0], s3[1], s3[2], s3[3], s3[4], s3[5], dt, dy, ux, ub, ug, temp, clamp, w, o);
}

/* Output rows [i0, i1) of rf_fuse_level (rows i0 - 1 .. i1 of the details are computed). */
static int fuse_level_rows(void *part) {
    const LevelRows *a = part;
    const int h = a->h, w = a->w, i0 = a->i0;
    const size_t W = (size_t)w;
    float *buf = a->buf;
    float *dT[3], *dY[3], *sT[3], *sY[3];
    for (int k = 0; k < 3; ++k) {
        dT[k] = buf + (0 + k) * W; dY[k] = buf + (3 + k) * W;
        sT[k] = buf + (6 + k) * W; sY[k] = buf + (9 + k) * W;
    }
    RowCache cT, cY, cX, cB, cG;
    float *mem = buf + 12 * W;
    cache_init(&cT, a->gt1, w / 2, a->tx, w, mem);
    cache_init(&cY, a->gy1, w / 2, a->tx, w, mem + 2 * W);
    cache_init(&cX, a->x1, w / 2, a->tx, w, mem + 4 * W);
    cache_init(&cB, a->bias, a->wn, a->px, w, mem + 6 * W);
    cache_init(&cG, a->gain, a->wn, a->px, w, mem + 8 * W);
    float *ux = buf + 22 * W, *ub = buf + 23 * W, *ug = buf + 24 * W;
    const float *zero = buf + 25 * W;   /* zeroed by the caller, never written */
    float *sc = buf + 26 * W;
    for (int r = i0 > 0 ? i0 - 1 : 0; r <= i0 + 1 && r < h; ++r) {   /* rows i0 - 1 .. i0 + 1 */
        const int k = r % 3;
        detail_row(a->gt + (size_t)r * W, &cT, a->ty[r], dT[k]);
        detail_row(a->gy + (size_t)r * W, &cY, a->ty[r], dY[k]);
        abs_sum3(dT[k], w, sc, sT[k]);
        abs_sum3(dY[k], w, sc, sY[k]);
    }
    const float temp = a->temp;
    for (int i = i0; i < a->i1; ++i) {
        if (i > i0 && i + 1 < h) {   /* row i + 1 into its slot */
            const int r = i + 1, k = r % 3;
            detail_row(a->gt + (size_t)r * W, &cT, a->ty[r], dT[k]);
            detail_row(a->gy + (size_t)r * W, &cY, a->ty[r], dY[k]);
            abs_sum3(dT[k], w, sc, sT[k]);
            abs_sum3(dY[k], w, sc, sY[k]);
        }
        const int k = i % 3;
        up_row(&cX, a->ty[i], ux);
        up_row(&cB, a->py[i], ub);
        up_row(&cG, a->py[i], ug);
        const float *s3[6] = {i > 0 ? sT[(i + 2) % 3] : zero, sT[k], i + 1 < h ? sT[(i + 1) % 3] : zero,
                              i > 0 ? sY[(i + 2) % 3] : zero, sY[k], i + 1 < h ? sY[(i + 1) % 3] : zero};
        blend_row(s3, dT[k], dY[k], ux, ub, ug, temp, a->clamp, w, a->out + (size_t)i * W);
    }
    return 0;
}

/* threads > 1: the rows are split over that many threads (the same values). */
int rf_fuse_level(const float *gt, const float *gy, const float *gt1, const float *gy1, const float *x1,
                  int h, int w, const float *bias, const float *gain, int hn, int wn, float temp,
                  int clamp, float *out, int threads) {
    threads = row_threads(threads, h);
    const int h1 = h / 2, w1 = w / 2;
    const size_t W = (size_t)w, per = 27 * W + 2;
    Tap *tx = malloc(sizeof(Tap) * W), *ty = malloc(sizeof(Tap) * (size_t)h);
    Tap *px = malloc(sizeof(Tap) * W), *py = malloc(sizeof(Tap) * (size_t)h);
    float *buf = calloc(per * (size_t)threads, sizeof(float));
    if (!tx || !ty || !px || !py || !buf) { free(tx); free(ty); free(px); free(py); free(buf); return -1; }
    make_taps(tx, w, w1);
    make_taps(ty, h, h1);
    make_taps(px, w, wn);
    make_taps(py, h, hn);
    LevelRows part[MAX_ROW_THREADS];
    for (int k = 0; k < threads; ++k)
        part[k] = (LevelRows){gt, gy, gt1, gy1, x1, bias, gain, h, w, hn, wn, clamp, temp, tx, ty, px, py,
                              buf + per * (size_t)k, out, (int)((long)h * k / threads),
                              (int)((long)h * (k + 1) / threads)};
    const int rc = run_row_parts(fuse_level_rows, part, sizeof(LevelRows), threads);
    free(tx); free(ty); free(px); free(py); free(buf);
    return rc;
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
 * for retain, vis for refuse. threads > 1: the rows are split over that many threads (every
 * output row depends on its own row of the fields only; same values). */
typedef struct {
    const float *low;
    int hl, wl, hp, wp;
    const float *fused, *vis, *th;
    int h, w, refuse;
    float *out, *m_out, *flow_out;
    int i0, i1;
    const Tap *tx, *ty;   /* shared taps */
    float *buf;           /* 14 * wp floats of this part */
} FullRows;

static int corrector_full_rows(void *part) {
    const FullRows *a = part;
    const int h = a->h, w = a->w, wp = a->wp, wl = a->wl;
    const size_t W = (size_t)w, plane = (size_t)a->hl * wl, hw = (size_t)h * w;
    const Tap *tx = a->tx, *ty = a->ty;
    float *buf = a->buf;
    RowCache c[5];
    for (int k = 0; k < 5; ++k) cache_init(&c[k], a->low + k * plane, wl, tx, wp, buf + 2 * k * (size_t)wp);
    float *ug = buf + 10 * (size_t)wp, *ub = ug + wp, *tmp = ub + wp;
    for (int i = a->i0; i < a->i1; ++i) {
        const size_t row = (size_t)i * W;
        float *restrict fx = a->flow_out + row, *restrict fy = a->flow_out + hw + row, *restrict m = a->m_out + row;
        float *rows[5] = {fx, fy, m, ug, ub};
        for (int k = 0; k < 5; ++k) {   /* the padded grid's row, cropped to w */
            up_row(&c[k], ty[i], tmp);
            for (int j = 0; j < w; ++j) rows[k][j] = tmp[j];
        }
        float *restrict o = a->out + row;
        if (a->refuse) {
            const float *restrict t = a->th + row, *restrict f = a->fused + row;
            bidir_row(a->th, fx, fy, m, i, w, h, tmp);
            for (int j = 0; j < w; ++j) o[j] = fminf(fmaxf(f[j] + ug[j] * (tmp[j] - t[j]) + ub[j], 0.f), 1.f);
        } else {
            const float *restrict y = a->vis + row;
            float *restrict wf = tmp, *restrict wy = tmp + w;
            bidir_row(a->fused, fx, fy, m, i, w, h, wf);
            bidir_row(a->vis, fx, fy, m, i, w, h, wy);
            for (int j = 0; j < w; ++j) o[j] = fminf(fmaxf(wf[j] + ug[j] * (y[j] - wy[j]) + ub[j], 0.f), 1.f);
        }
    }
    return 0;
}

int rf_corrector_full(const float *low, int hl, int wl, int hp, int wp, const float *fused,
                      const float *vis, const float *th, int h, int w, int refuse,
                      float *out, float *m_out, float *flow_out, int threads) {
    threads = row_threads(threads, h);
    Tap *tx = malloc(sizeof(Tap) * (size_t)wp), *ty = malloc(sizeof(Tap) * (size_t)hp);
    float *buf = malloc(sizeof(float) * 14 * (size_t)wp * (size_t)threads);
    if (!tx || !ty || !buf) { free(tx); free(ty); free(buf); return -1; }
    make_taps(tx, wp, wl);
    make_taps(ty, hp, hl);
    FullRows part[MAX_ROW_THREADS];
    for (int k = 0; k < threads; ++k) {
        part[k] = (FullRows){low, hl, wl, hp, wp, fused, vis, th, h, w, refuse, out, m_out, flow_out,
                             (int)((long)h * k / threads), (int)((long)h * (k + 1) / threads),
                             tx, ty, buf + 14 * (size_t)wp * (size_t)k};
    }
    const int rc = run_row_parts(corrector_full_rows, part, sizeof(FullRows), threads);
    free(tx); free(ty); free(buf);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Global similarity registration (models/global_align.py: estimate_similarity, the module
 * docstring has the model). One call per frame pair: pooling, edge descriptors, the translation
 * search, the inverse-compositional Gauss-Newton iterations of every level and the confidence.
 * Descriptors are kept as 4 planes (channel-major); sampling is exact bilinear with clamped
 * coordinates (grid_sample's 'border' padding), sums are accumulated in double per row. */

#define SIM_EDGE_EPS 0.02f    /* global_align._EDGE_EPS */
#define SIM_GRAD_EPS 1e-6f    /* global_align._GRAD_EPS */
#define SIM_WINDOW 7          /* global_align._LOCAL_WINDOW */

/* Mean over f x f blocks of the (h, w) plane src (row stride sw), floor size (h / f, w / f).
 * acc: w floats. The f rows of a block row are summed first (contiguous, vectorised). */
static void block_mean(const float *src, int h, int w, int sw, int f, float *dst, float *acc) {
    const int ho = h / f, wo = w / f, wf = wo * f;
    const float inv = 1.f / (float)(f * f);
    for (int i = 0; i < ho; ++i) {
        const float *restrict s0 = src + (size_t)i * f * sw;
        float *restrict a = acc;
        for (int j = 0; j < wf; ++j) a[j] = s0[j];
        for (int r = 1; r < f; ++r) {
            const float *restrict s = s0 + (size_t)r * sw;
            for (int j = 0; j < wf; ++j) a[j] += s[j];
        }
        block_row_means(a, wo, f, inv, dst + (size_t)i * wo);
    }
}

/* Central differences per cell of an (h, w) plane (h, w >= 3); the border rows and columns
 * repeat their neighbour's difference (global_align.central_gradients). */
static void gradients(const float *x, int h, int w, float *gx, float *gy) {
    for (int i = 0; i < h; ++i) {
        const float *restrict r = x + (size_t)i * w;
        float *restrict o = gx + (size_t)i * w;
        for (int j = 1; j < w - 1; ++j) o[j] = 0.5f * (r[j + 1] - r[j - 1]);
        o[0] = o[1];
        o[w - 1] = o[w - 2];
    }
    for (int i = 1; i < h - 1; ++i) {
        const float *restrict a = x + (size_t)(i - 1) * w, *restrict b = x + (size_t)(i + 1) * w;
        float *restrict o = gy + (size_t)i * w;
        for (int j = 0; j < w; ++j) o[j] = 0.5f * (b[j] - a[j]);
    }
    for (int j = 0; j < w; ++j) {
        gy[j] = gy[w + j];
        gy[(size_t)(h - 1) * w + j] = gy[(size_t)(h - 2) * w + j];
    }
}

/* Separable blur of an (h, w) plane by ntaps (odd) taps, replicate border, in place.
 * tmp: h * w floats; pad: w + ntaps floats. */
static void blur_plane(float *x, int h, int w, const float *taps, int ntaps, float *tmp, float *pad) {
    const int r = ntaps / 2;
    for (int i = 0; i < h; ++i) {
        const float *restrict s = x + (size_t)i * w;
        float *restrict p = pad;
        for (int k = 0; k < r; ++k) { p[k] = s[0]; p[r + w + k] = s[w - 1]; }
        for (int j = 0; j < w; ++j) p[r + j] = s[j];
        float *restrict o = tmp + (size_t)i * w;
        for (int j = 0; j < w; ++j) o[j] = taps[0] * p[j];
        for (int k = 1; k < ntaps; ++k) {
            const float t = taps[k];
            for (int j = 0; j < w; ++j) o[j] += t * p[j + k];
        }
    }
    for (int i = 0; i < h; ++i) {
        float *restrict o = x + (size_t)i * w;
        for (int j = 0; j < w; ++j) o[j] = 0.f;
        for (int k = -r; k <= r; ++k) {
            int ii = i + k;
            ii = ii < 0 ? 0 : (ii > h - 1 ? h - 1 : ii);
            const float *restrict s = tmp + (size_t)ii * w;
            const float t = taps[k + r];
            for (int j = 0; j < w; ++j) o[j] += t * s[j];
        }
    }
}

/* The blurred edge descriptor of an (h, w) image (global_align.align_descriptor, gaussian_blur):
 * d = 4 planes (h, w): (gx^2 - gy^2) inv, 2 gx gy inv, |gx| ww, |gy| ww.
 * scratch: 4 h w floats; line: 2 w + max(ntaps, 7) floats. */
static void descriptor(const float *img, int h, int w, const float *taps, int ntaps, float *d,
                       float *scratch, float *line) {
    const size_t n = (size_t)h * w;
    float *gx = scratch, *gy = scratch + n, *mag = scratch + 2 * n, *box = scratch + 3 * n;
    gradients(img, h, w, gx, gy);
    for (size_t k = 0; k < n; ++k) mag[k] = sqrtf(gx[k] * gx[k] + gy[k] * gy[k] + SIM_GRAD_EPS * SIM_GRAD_EPS);
    /* local mean of mag over the in-image part of a 7x7 window: horizontal sums of the
     * zero-padded row divided by the in-image count, then vertical */
    const int r = SIM_WINDOW / 2;
    float *pad = line, *inv_count = line + w + SIM_WINDOW;   /* w + 2 r; w */
    for (int j = 0; j < w; ++j) {
        const int a = j - r < 0 ? 0 : j - r, b = j + r > w - 1 ? w - 1 : j + r;
        inv_count[j] = 1.f / (float)(b - a + 1);
    }
    for (int i = 0; i < h; ++i) {
        const float *restrict s = mag + (size_t)i * w;
        float *restrict p = pad, *restrict o = d + (size_t)i * w;   /* d's first plane as scratch */
        for (int k = 0; k < r; ++k) p[k] = p[r + w + k] = 0.f;
        for (int j = 0; j < w; ++j) p[r + j] = s[j];
        for (int j = 0; j < w; ++j) o[j] = p[j];
        for (int k = 1; k < SIM_WINDOW; ++k)
            for (int j = 0; j < w; ++j) o[j] += p[j + k];
        for (int j = 0; j < w; ++j) o[j] *= inv_count[j];
    }
    for (int i = 0; i < h; ++i) {
        const int a = i - r < 0 ? 0 : i - r, b = i + r > h - 1 ? h - 1 : i + r;
        float *restrict o = box + (size_t)i * w;
        for (int j = 0; j < w; ++j) o[j] = 0.f;
        for (int k = a; k <= b; ++k) {
            const float *restrict s = d + (size_t)k * w;
            for (int j = 0; j < w; ++j) o[j] += s[j];
        }
        const float inv = 1.f / (float)(b - a + 1);
        for (int j = 0; j < w; ++j) o[j] *= inv;
    }
    float *d0 = d, *d1 = d + n, *d2 = d + 2 * n, *d3 = d + 3 * n;
    for (size_t k = 0; k < n; ++k) {
        const float m2 = gx[k] * gx[k] + gy[k] * gy[k];
        const float wgt = mag[k] / (box[k] + SIM_EDGE_EPS);
        const float inv = wgt / (m2 + SIM_GRAD_EPS), ww = wgt / mag[k];
        d0[k] = (gx[k] * gx[k] - gy[k] * gy[k]) * inv;
        d1[k] = 2.f * gx[k] * gy[k] * inv;
        d2[k] = fabsf(gx[k]) * ww;
        d3[k] = fabsf(gy[k]) * ww;
    }
    if (ntaps > 1)
        for (int c = 0; c < 4; ++c) blur_plane(d + c * n, h, w, taps, ntaps, scratch, line);
}

/* Solve a x = b for the 4x4 symmetric positive definite a (Cholesky, double). */
static void solve4(const double a[4][4], const double b[4], double x[4]) {
    double l[4][4] = {{0}}, y[4];
    for (int j = 0; j < 4; ++j) {
        double s = a[j][j];
        for (int k = 0; k < j; ++k) s -= l[j][k] * l[j][k];
        l[j][j] = sqrt(s > 1e-30 ? s : 1e-30);
        for (int i = j + 1; i < 4; ++i) {
            double t = a[i][j];
            for (int k = 0; k < j; ++k) t -= l[i][k] * l[j][k];
            l[i][j] = t / l[j][j];
        }
    }
    for (int i = 0; i < 4; ++i) {
        double s = b[i];
        for (int k = 0; k < i; ++k) s -= l[i][k] * y[k];
        y[i] = s / l[i][i];
    }
    for (int i = 3; i >= 0; --i) {
        double s = y[i];
        for (int k = i + 1; k < 4; ++k) s -= l[k][i] * x[k];
        x[i] = s / l[i][i];
    }
}

/* params <- W(params) o W(step)^-1 (global_align.compose_inverse). */
static void compose_inverse4(double p[4], const double s[4]) {
    const double p1 = 1.0 + p[2], p2 = 1.0 + s[2], n = p2 * p2 + s[3] * s[3];
    const double zr = (p1 * p2 + p[3] * s[3]) / n, zi = (p[3] * p2 - p1 * s[3]) / n;
    const double tx = p[0] - (zr * s[0] - zi * s[1]), ty = p[1] - (zr * s[1] + zi * s[0]);
    p[0] = tx; p[1] = ty; p[2] = zr - 1.0; p[3] = zi;
}

/* One level: where each cell samples the thermal descriptor, and the residuals on the inner
 * rectangle. Level geometry: cell (i, j) lies at x = m[0] j + m[1] i + m[2], y = m[3] j + m[4] i + m[5]. */
typedef struct {
    int h, w, r0, r1, c0, c1;   /* level size; inner rows [r0, r1), columns [c0, c1) */
    const float *dv, *dt;       /* descriptors, 4 planes each */
} SimLevel;

static void sample_matrix(const double p[4], int h, int w, int big, int bigw, int down, double m[6]) {
    const double sx = (double)bigw / w, sy = (double)big / h;
    const double u0 = 0.5 * sx - bigw / 2.0, v0 = 0.5 * sy - big / 2.0;
    m[0] = 1 + p[2] * sx / down; m[1] = -p[3] * sy / down; m[2] = (p[0] + p[2] * u0 - p[3] * v0) / down;
    m[3] = p[3] * sx / down;     m[4] = 1 + p[2] * sy / down; m[5] = (p[1] + p[3] * u0 + p[2] * v0) / down;
}

/* Residual row i (inner columns): res[c * nc + (j - c0)] = dt(W(j, i)) - dv(j, i), c = 0..3.
 * The sampling positions are turned into corner offsets and weights once for the four planes
 * (tap: 2 nc floats, off: 4 nc ints), so each plane's loop is four vector gathers. */
static void residual_row(const SimLevel *L, const double m[6], int i, float *restrict res,
                         float *restrict tap, int *restrict off) {
    const int w = L->w, h = L->h, c0 = L->c0, nc = L->c1 - L->c0;
    const size_t n = (size_t)h * w;
    const float bx = (float)(m[1] * i + m[2]), by = (float)(m[4] * i + m[5]);
    const float m0 = (float)m[0], m3 = (float)m[3], xmax = (float)(w - 1), ymax = (float)(h - 1);
    float *restrict ax = tap, *restrict ay = tap + nc;
    int *restrict o00 = off, *restrict o01 = off + nc, *restrict o10 = off + 2 * nc, *restrict o11 = off + 3 * nc;
    for (int k = 0; k < nc; ++k) {
        const float fj = (float)(c0 + k);
        const float x = fminf(fmaxf(m0 * fj + bx, 0.f), xmax), y = fminf(fmaxf(m3 * fj + by, 0.f), ymax);
        const int x0 = (int)x, y0 = (int)y;
        const int sx = x0 < w - 1, sy = y0 < h - 1 ? w : 0;   /* clamped: the neighbour is itself */
        ax[k] = x - (float)x0;
        ay[k] = y - (float)y0;
        o00[k] = y0 * w + x0;
        o01[k] = o00[k] + sx;
        o10[k] = o00[k] + sy;
        o11[k] = o00[k] + sy + sx;
    }
    for (int c = 0; c < 4; ++c) {
        const float *restrict dt = L->dt + c * n, *restrict dv = L->dv + c * n + (size_t)i * w + c0;
        float *restrict o = res + (size_t)c * nc;
        for (int k = 0; k < nc; ++k) {
            const float p00 = dt[o00[k]], p01 = dt[o01[k]], p10 = dt[o10[k]], p11 = dt[o11[k]];
            const float top = p00 + ax[k] * (p01 - p00), bot = p10 + ax[k] * (p11 - p10);
            o[k] = top + ay[k] * (bot - top) - dv[k];
        }
    }
}

/* Similarity parameters registering thermal to visible (global_align.estimate_similarity_cv).
 *   vis, th: (big, bigw) planes in [0, 1]; factors[nlev], iters[nlev]: level downsampling factors
 *   (coarse to fine, each a power-of-two multiple of the last) and Gauss-Newton iterations;
 *   taps[ntaps]: the descriptor blur (odd ntaps <= 31; 1: none); damping: Levenberg-Marquardt (relative
 *   to the diagonal); search: radius (cells) of the coarsest level's translation search (0: none);
 *   margin: border band left out (fraction of each side).
 * Out: params[4] (tx, ty in px, a, b), gain[0] (relative reduction of the descriptor difference).
 * Returns 0, -1 (allocation failed) or -2 (invalid: a level below 3x3 cells, factors not nested,
 * no level, or not an odd number of taps up to 31). */
int rf_similarity(const float *vis, const float *th, int big, int bigw, int nlev, const int *factors,
                  const int *iters, const float *taps, int ntaps, double damping, int search,
                  double margin, double *params, double *gain) {
    if (nlev < 1 || ntaps < 1 || ntaps > 31 || ntaps % 2 == 0) return -2;
    const int fine = factors[nlev - 1];
    for (int l = 0; l < nlev; ++l) {
        if (factors[l] < 1 || factors[l] % fine || big / factors[l] < 3 || bigw / factors[l] < 3) return -2;
    }
    const int hb = big / fine, wb = bigw / fine;
    const size_t nb = (size_t)hb * wb;
    /* base (2 planes), pooled level (2), descriptors (2 x 4), x-gradients (4), scratch (4: the
     * descriptors' temporaries, then the y-gradients), residual rows (4 wb), sampling taps
     * (2 wb), u (wb), v (hb), a line buffer (2 bigw + 32), corner offsets (4 wb ints) */
    const size_t nfl = nb * 20 + 10 * (size_t)wb + (size_t)hb + 2 * (size_t)bigw + 32;
    float *mem = malloc(sizeof(float) * nfl);
    int *off = malloc(sizeof(int) * 4 * (size_t)wb);
    if (!mem || !off) { free(mem); free(off); return -1; }
    float *base_v = mem, *base_t = mem + nb, *pv = mem + 2 * nb, *pt = mem + 3 * nb;
    float *dv = mem + 4 * nb, *dt = mem + 8 * nb, *gx = mem + 12 * nb, *scratch = mem + 16 * nb;
    float *res = mem + 20 * nb, *tap = res + 4 * (size_t)wb, *uu = tap + 4 * (size_t)wb, *vv = uu + wb;
    float *line = vv + hb;
    block_mean(vis, big, bigw, bigw, fine, base_v, line);
    block_mean(th, big, bigw, bigw, fine, base_t, line);
    double p[4] = {0, 0, 0, 0}, hs[4][4], g[4];
    SimLevel L = {0};
    for (int l = 0; l < nlev; ++l) {
        const int down = factors[l], k = down / fine, h = hb / k, w = wb / k;
        const size_t n = (size_t)h * w;
        const float *sv = base_v, *st = base_t;
        if (k > 1) {
            block_mean(base_v, hb, wb, wb, k, pv, line);
            block_mean(base_t, hb, wb, wb, k, pt, line);
            sv = pv; st = pt;
        }
        descriptor(sv, h, w, taps, ntaps, dv, scratch, line);
        descriptor(st, h, w, taps, ntaps, dt, scratch, line);
        const float lim_u = (float)(bigw * (0.5 - margin)), lim_v = (float)(big * (0.5 - margin));
        int c0 = w, c1 = 0, r0 = h, r1 = 0;
        for (int j = 0; j < w; ++j) {
            uu[j] = (float)((j + 0.5) * ((double)bigw / w) - bigw / 2.0);
            if (fabsf(uu[j]) < lim_u) { if (j < c0) c0 = j; c1 = j + 1; }
        }
        for (int i = 0; i < h; ++i) {
            vv[i] = (float)((i + 0.5) * ((double)big / h) - big / 2.0);
            if (fabsf(vv[i]) < lim_v) { if (i < r0) r0 = i; r1 = i + 1; }
        }
        if (c1 <= c0 || r1 <= r0) c0 = c1 = r0 = r1 = 0;
        L = (SimLevel){h, w, r0, r1, c0, c1, dv, dt};
        if (l == 0 && search > 0) {   /* best integer translation of the whole inner rectangle */
            const int r = search, side = 2 * r + 1;
            double best_s = -INFINITY, centre_s = 0.0;
            int best = side * r + r;
            for (int oy = -r; oy <= r; ++oy)
                for (int ox = -r; ox <= r; ++ox) {
                    double s = 0.0;
                    for (int c = 0; c < 4; ++c)
                        for (int i = r0; i < r1; ++i) {
                            const int ti = i + oy;
                            if (ti < 0 || ti >= h) continue;
                            const float *restrict a = dv + c * n + (size_t)i * w;
                            const float *restrict b = dt + c * n + (size_t)ti * w;
                            const int ja = c0 + ox < 0 ? -ox : c0, jb = c1 + ox > w ? w - ox : c1;
                            float acc = 0.f;
                            for (int j = ja; j < jb; ++j) acc += a[j] * b[j + ox];
                            s += acc;
                        }
                    s /= 4.0 * (double)n;
                    const int idx = (oy + r) * side + (ox + r);
                    if (s > best_s) { best_s = s; best = idx; }
                    if (ox == 0 && oy == 0) centre_s = s;
                }
            if (!(best_s > centre_s * (1 + 1e-4) + 1e-12)) best = side * r + r;
            p[0] = (double)(best % side - r) * down;
            p[1] = (double)(best / side - r) * down;
            p[2] = p[3] = 0.0;
        }
        /* inverse compositional: the Jacobian from the visible descriptor's gradients, per input px */
        float *gxl = gx, *gyl = scratch;   /* 4 planes each (scratch is free after the descriptors) */
        for (int c = 0; c < 4; ++c) gradients(dv + c * n, h, w, gxl + c * n, gyl + c * n);
        const float s = 1.f / (float)down;
        for (int a = 0; a < 4; ++a) for (int b = 0; b < 4; ++b) hs[a][b] = 0.0;
        for (int c = 0; c < 4; ++c)
            for (int i = r0; i < r1; ++i) {
                const float *restrict ax = gxl + c * n + (size_t)i * w, *restrict ay = gyl + c * n + (size_t)i * w;
                const float v = vv[i];
                float q[10] = {0};
                for (int j = c0; j < c1; ++j) {
                    const float jx = ax[j] * s, jy = ay[j] * s;
                    const float j2 = jx * uu[j] + jy * v, j3 = jy * uu[j] - jx * v;
                    q[0] += jx * jx; q[1] += jx * jy; q[2] += jx * j2; q[3] += jx * j3;
                    q[4] += jy * jy; q[5] += jy * j2; q[6] += jy * j3;
                    q[7] += j2 * j2; q[8] += j2 * j3; q[9] += j3 * j3;
                }
                hs[0][0] += q[0]; hs[0][1] += q[1]; hs[0][2] += q[2]; hs[0][3] += q[3];
                hs[1][1] += q[4]; hs[1][2] += q[5]; hs[1][3] += q[6];
                hs[2][2] += q[7]; hs[2][3] += q[8]; hs[3][3] += q[9];
            }
        for (int a = 0; a < 4; ++a) {
            for (int b = 0; b < a; ++b) hs[a][b] = hs[b][a];
            hs[a][a] += damping * hs[a][a] + 1e-9;
        }
        const int nc = c1 - c0;
        for (int it = 0; it < iters[l]; ++it) {
            double m[6], step[4];
            sample_matrix(p, h, w, big, bigw, down, m);
            g[0] = g[1] = g[2] = g[3] = 0.0;
            for (int i = r0; i < r1; ++i) {
                residual_row(&L, m, i, res, tap, off);
                const float v = vv[i];
                float q0 = 0.f, q1 = 0.f, q2 = 0.f, q3 = 0.f;
                for (int c = 0; c < 4; ++c) {
                    const float *restrict ax = gxl + c * n + (size_t)i * w + c0;
                    const float *restrict ay = gyl + c * n + (size_t)i * w + c0;
                    const float *restrict rr = res + (size_t)c * nc, *restrict u = uu + c0;
                    for (int j = 0; j < nc; ++j) {
                        const float jx = ax[j] * s, jy = ay[j] * s;
                        q0 += jx * rr[j]; q1 += jy * rr[j];
                        q2 += (jx * u[j] + jy * v) * rr[j]; q3 += (jy * u[j] - jx * v) * rr[j];
                    }
                }
                g[0] += q0; g[1] += q1; g[2] += q2; g[3] += q3;
            }
            solve4((const double (*)[4])hs, g, step);
            compose_inverse4(p, step);
        }
    }
    /* confidence at the finest level: the descriptor difference at the estimate vs at phi = 0 */
    double m[6], r2 = 0.0, z2 = 0.0;
    const size_t n = (size_t)L.h * L.w;
    const int nc = L.c1 - L.c0;
    sample_matrix(p, L.h, L.w, big, bigw, factors[nlev - 1], m);
    for (int i = L.r0; i < L.r1; ++i) {
        residual_row(&L, m, i, res, tap, off);
        float a = 0.f, b = 0.f;
        for (int c = 0; c < 4; ++c) {
            const float *restrict rr = res + (size_t)c * nc;
            const float *restrict x = L.dt + c * n + (size_t)i * L.w + L.c0, *restrict y = L.dv + c * n + (size_t)i * L.w + L.c0;
            for (int j = 0; j < nc; ++j) { a += rr[j] * rr[j]; b += (x[j] - y[j]) * (x[j] - y[j]); }
        }
        r2 += a; z2 += b;
    }
    const double floor_ = 1e-12 * 4.0 * (double)n;
    gain[0] = 1.0 - r2 / (z2 > floor_ ? z2 : floor_);
    for (int k = 0; k < 4; ++k) params[k] = p[k];
    free(mem);
    free(off);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * 8-bit colour in and out (core/convert.py: unit_luminance, apply_contrast + recolour_uint8). */

/* Luminance in [0, 1] of n interleaved 8-bit RGB pixels: y = kr R + kg G + kb B (weights / 255). */
int rf_luma_u8(const uint8_t *rgb, long n, float kr, float kg, float kb, float *y) {
    for (long k = 0; k < n; ++k) {
        const uint8_t *p = rgb + 3 * k;
        y[k] = kr * (float)p[0] + kg * (float)p[1] + kb * (float)p[2];
    }
    return 0;
}

/* The output colour step for n interleaved 8-bit RGB pixels: the new luminance, mapped by the
 * contrast bounds when contrast != 0 (yc = clamp((y - lo) * scale, 0, 1)), replaces the old one
 * by moving every channel by the same change: out = saturate(round(c + 255 (yc - y_old))),
 * rounding half to even (as OpenCV's saturate_cast). */
int rf_recolour_u8(const uint8_t *rgb, const float *y, const float *y_old, long n, int contrast,
                   float lo, float scale, uint8_t *out) {
    for (long k = 0; k < n; ++k) {
        float yc = y[k];
        if (contrast) yc = fminf(fmaxf((yc - lo) * scale, 0.f), 1.f);
        const float d = (yc - y_old[k]) * 255.f;
        for (int c = 0; c < 3; ++c) {
            const float v = nearbyintf((float)rgb[3 * k + c] + d);
            out[3 * k + c] = (uint8_t)fminf(fmaxf(v, 0.f), 255.f);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * ECC normal equations of core/registration.py's refine_global, one iteration in one pass.
 *
 * wt: (lh, lw, c) the thermal descriptor mapped by the current estimate (whole level); its
 * gradients are central differences, the border rows/columns copying their neighbour's (as
 * registration.gradients). ref: (hi, wi, c) the visible descriptor over the inner cells, zero mean
 * per channel. Inner cells start at (y0, x0) of the level. jac: (n, 2, hi, wi) d(sample position,
 * cells)/d(p_k). n = 0: only the statistics.
 * Out (double): hess[n * n], gw[n] (J^T g . (wt - mean)), gr[n] (J^T g . ref), stats[2] = (ww, rw):
 * sum of (wt - mean)^2 and of ref . wt over the inner cells and channels.
 * Returns 0, -2 (invalid sizes: c outside 1..8, n outside 0..8, inner cells outside the level). */
int rf_ecc_terms(const float *wt, int lh, int lw, int c, const float *ref, int y0, int x0, int hi,
                 int wi, const float *jac, int n, double *hess, double *gw, double *gr, double *stats) {
    if (c < 1 || c > 8 || n < 0 || n > 8 || hi < 1 || wi < 1 || y0 < 0 || x0 < 0 || y0 + hi > lh
        || x0 + wi > lw || lh < 3 || lw < 3) return -2;
    double H[8][8] = {{0}}, A[8][8] = {{0}}, B[8] = {0}, R[8] = {0}, sum[8] = {0}, sq = 0.0, rw = 0.0;
    const size_t plane = (size_t)hi * wi;
    const size_t rowst = (size_t)lw * c;
    for (int i = 0; i < hi; ++i) {
        const int y = y0 + i;
        const int yc = y == 0 ? 1 : (y == lh - 1 ? lh - 2 : y);   /* the row whose difference is copied */
        const float *up = wt + (size_t)(yc - 1) * rowst, *dn = wt + (size_t)(yc + 1) * rowst;
        const float *row = wt + (size_t)y * rowst;
        float h[8][8] = {{0}}, a[8][8] = {{0}}, b[8] = {0}, r[8] = {0}, s[8] = {0}, q = 0.f, rr = 0.f;
        for (int j = 0; j < wi; ++j) {
            const int x = x0 + j;
            const int xc = x == 0 ? 1 : (x == lw - 1 ? lw - 2 : x);
            const float *w = row + (size_t)x * c;
            const float *rf = ref + ((size_t)i * wi + j) * c;
            const size_t at = (size_t)i * wi + j;
            float gxc[8], gyc[8];
            for (int k = 0; k < c; ++k) {
                const float v = w[k];
                s[k] += v;
                q += v * v;
                rr += rf[k] * v;
            }
            if (n == 0) continue;
            for (int k = 0; k < c; ++k) {
                gxc[k] = 0.5f * (row[(size_t)(xc + 1) * c + k] - row[(size_t)(xc - 1) * c + k]);
                gyc[k] = 0.5f * (dn[(size_t)x * c + k] - up[(size_t)x * c + k]);
            }
            float u[8][8];
            for (int p = 0; p < n; ++p) {
                const float jx = jac[(size_t)(2 * p) * plane + at], jy = jac[(size_t)(2 * p + 1) * plane + at];
                for (int k = 0; k < c; ++k) {
                    const float uk = jx * gxc[k] + jy * gyc[k];
                    u[p][k] = uk;
                    a[p][k] += uk;
                    b[p] += uk * w[k];
                    r[p] += uk * rf[k];
                }
            }
            for (int p = 0; p < n; ++p)
                for (int l = p; l < n; ++l) {
                    float t = 0.f;
                    for (int k = 0; k < c; ++k) t += u[p][k] * u[l][k];
                    h[p][l] += t;
                }
        }
        for (int k = 0; k < c; ++k) sum[k] += s[k];
        sq += q;
        rw += rr;
        for (int p = 0; p < n; ++p) {
            B[p] += b[p];
            R[p] += r[p];
            for (int k = 0; k < c; ++k) A[p][k] += a[p][k];
            for (int l = p; l < n; ++l) H[p][l] += h[p][l];
        }
    }
    const double cells = (double)plane;
    double ww = sq;
    for (int k = 0; k < c; ++k) ww -= sum[k] * sum[k] / cells;
    stats[0] = ww;
    stats[1] = rw;
    for (int p = 0; p < n; ++p) {
        double g = B[p];
        for (int k = 0; k < c; ++k) g -= A[p][k] * sum[k] / cells;
        gw[p] = g;
        gr[p] = R[p];
        for (int l = 0; l < n; ++l) hess[p * n + l] = l >= p ? H[p][l] : H[l][p];
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * rf_ecc_terms for an affine motion, from moments: the same outputs as rf_ecc_terms with the
 * affine Jacobian maps jx = s (u, v, 1, 0, 0, 0), jy = s (0, 0, 0, u, v, 1), where the inner cell
 * (i, j) has centred coordinates u = u0 + du j, v = v0 + dv i, without the maps. Per cell only the
 * structure tensor and four gradient products are formed; their moments in u and v are summed per
 * row and weighted by v at the row's end (a third of rf_ecc_terms' arithmetic).
 * Out: hess[36], gw[6], gr[6], stats[2] as rf_ecc_terms. Returns 0 or -2 (invalid sizes). */
int rf_ecc_terms_affine(const float *wt, int lh, int lw, int c, const float *ref, int y0, int x0, int hi,
                        int wi, double u0, double du, double v0, double dv, double s, double *hess,
                        double *gw, double *gr, double *stats) {
    if (c < 1 || c > 8 || hi < 1 || wi < 1 || y0 < 0 || x0 < 0 || y0 + hi > lh || x0 + wi > lw
        || lh < 3 || lw < 3) return -2;
    const size_t rowst = (size_t)lw * c;
    double mean[8] = {0}, sq = 0.0, rw = 0.0;
    for (int i = 0; i < hi; ++i) {
        const float *row = wt + (size_t)(y0 + i) * rowst + (size_t)x0 * c;
        const float *rf = ref + (size_t)i * wi * c;
        float ms[8] = {0}, q = 0.f, rr = 0.f;
        for (int j = 0; j < wi; ++j)
            for (int k = 0; k < c; ++k) {
                const float v = row[(size_t)j * c + k];
                ms[k] += v;
                q += v * v;
                rr += rf[(size_t)j * c + k] * v;
            }
        for (int k = 0; k < c; ++k) mean[k] += ms[k];
        sq += q;
        rw += rr;
    }
    const double cells = (double)hi * wi;
    double ww = sq;
    for (int k = 0; k < c; ++k) {
        ww -= mean[k] * mean[k] / cells;
        mean[k] /= cells;
    }
    float mf[8];
    for (int k = 0; k < c; ++k) mf[k] = (float)mean[k];
    /* moments: T[t][m] for the tensors t = xx, xy, yy and m = 1, u, v, uu, uv, vv;
     * G[g][m] for g = Bx, By, Rx, Ry and m = 1, u, v */
    double T[3][6] = {{0}}, G[4][3] = {{0}};
    for (int i = 0; i < hi; ++i) {
        const int y = y0 + i;
        const int yc = y == 0 ? 1 : (y == lh - 1 ? lh - 2 : y);
        const float *up = wt + (size_t)(yc - 1) * rowst, *dn = wt + (size_t)(yc + 1) * rowst;
        const float *row = wt + (size_t)y * rowst;
        const float *rf = ref + (size_t)i * wi * c;
        float t0[3] = {0}, t1[3] = {0}, t2[3] = {0}, g0[4] = {0}, g1[4] = {0};
        for (int j = 0; j < wi; ++j) {
            const int x = x0 + j;
            const int xc = x == 0 ? 1 : (x == lw - 1 ? lw - 2 : x);
            const float u = (float)(u0 + du * j);
            float sxx = 0.f, sxy = 0.f, syy = 0.f, bx = 0.f, by = 0.f, rx = 0.f, ry = 0.f;
            for (int k = 0; k < c; ++k) {
                const float gx = 0.5f * (row[(size_t)(xc + 1) * c + k] - row[(size_t)(xc - 1) * c + k]);
                const float gy = 0.5f * (dn[(size_t)x * c + k] - up[(size_t)x * c + k]);
                const float iw = row[(size_t)x * c + k] - mf[k], r = rf[(size_t)j * c + k];
                sxx += gx * gx;
                sxy += gx * gy;
                syy += gy * gy;
                bx += gx * iw;
                by += gy * iw;
                rx += gx * r;
                ry += gy * r;
            }
            const float st[3] = {sxx, sxy, syy}, gg[4] = {bx, by, rx, ry};
            for (int t = 0; t < 3; ++t) {
                t0[t] += st[t];
                t1[t] += u * st[t];
                t2[t] += u * u * st[t];
            }
            for (int g = 0; g < 4; ++g) {
                g0[g] += gg[g];
                g1[g] += u * gg[g];
            }
        }
        const double v = v0 + dv * i;
        for (int t = 0; t < 3; ++t) {
            T[t][0] += t0[t];
            T[t][1] += t1[t];
            T[t][2] += v * t0[t];
            T[t][3] += t2[t];
            T[t][4] += v * t1[t];
            T[t][5] += v * v * t0[t];
        }
        for (int g = 0; g < 4; ++g) {
            G[g][0] += g0[g];
            G[g][1] += g1[g];
            G[g][2] += v * g0[g];
        }
    }
    /* basis functions of the Jacobian: (u, v, 1) -> the moment index of a product */
    static const int prod[3][3] = {{3, 4, 1}, {4, 5, 2}, {1, 2, 0}};
    static const int single[3] = {1, 2, 0};
    const double s2 = s * s;
    for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) {
            const int m = prod[a][b];
            hess[a * 6 + b] = s2 * T[0][m];
            hess[a * 6 + 3 + b] = s2 * T[1][m];
            hess[(3 + a) * 6 + b] = s2 * T[1][m];
            hess[(3 + a) * 6 + 3 + b] = s2 * T[2][m];
        }
    for (int a = 0; a < 3; ++a) {
        gw[a] = s * G[0][single[a]];
        gw[3 + a] = s * G[1][single[a]];
        gr[a] = s * G[2][single[a]];
        gr[3 + a] = s * G[3][single[a]];
    }
    stats[0] = ww;
    stats[1] = rw;
    return 0;
}
