/* Optional compiled kernel of pipeline.eval.metrics: per-query Hamming-distance histograms and tie-rule ranks.
 *
 * Loaded with ctypes (the functions below take raw pointers and run without the GIL); the PyInit stub
 * only lets setuptools build it as an ordinary extension module. Every floating-point value it writes
 * is produced by the same IEEE operations as the numpy path (precision = inv_rank[r] * (t + 1) with
 * the caller's inv_rank table), and sums are left to numpy, so results are bit-identical.
 *
 * Layouts: codes are item-major uint64 words (items, wc), zero padded; labels are either int64 class ids
 * (lkind 0) or item-major uint64 multi-hot words (items, wl) (lkind 1). Gain g of an item: graded ->
 * number of shared labels, else 1 if relevant, 0 if not. Joint histogram index: d * n_gain + g.
 */
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HB_INLINE static inline __attribute__((always_inline))

HB_INLINE int hb_pc(uint64_t x) { return __builtin_popcountll(x); }

HB_INLINE void hb_item(const uint64_t *qc, const uint64_t *dc, int64_t i, int wc, int lkind, const void *ql,
                       const void *dl, int wl, int graded, int *d_out, int *g_out) {
    int d = 0;
    const uint64_t *x = dc + i * (int64_t)wc;
    for (int w = 0; w < wc; w++) d += hb_pc(qc[w] ^ x[w]);
    int g;
    if (lkind == 0) {
        g = ((const int64_t *)dl)[i] == *(const int64_t *)ql;
    } else {
        const uint64_t *a = (const uint64_t *)ql, *b = (const uint64_t *)dl + i * (int64_t)wl;
        if (graded) {
            g = 0;
            for (int w = 0; w < wl; w++) g += hb_pc(a[w] & b[w]);
        } else {
            uint64_t any = 0;
            for (int w = 0; w < wl; w++) any |= a[w] & b[w];
            g = any != 0;
        }
    }
    *d_out = d;
    *g_out = g;
}

/* The database can be cut into HB_SEG contiguous segments walked in lockstep, so that consecutive items
 * bump counters of different segments (independent store-to-load chains). Measured on the NUS-WIDE-scale
 * benchmark (AMD EPYC): 1 segment was 5-10% faster than 2 or 4, so 1 is the default (-DHB_SEG=n). */
#ifndef HB_SEG
#define HB_SEG 1
#endif

HB_INLINE void hb_one(const uint64_t *qc, const uint64_t *dc, int64_t i, int wc, int lkind, const void *ql,
                      const void *dl, int wl, int graded, int n_gain, int64_t *h) {
    int d, g;
    hb_item(qc, dc, i, wc, lkind, ql, dl, wl, graded, &d, &g);
    h[d * n_gain + g]++;
}

/* per-segment histograms hs[s * nb + bin] of one query (zeroed here). Segment s is [s*L, (s+1)*L), the
 * last one also takes the rest. */
HB_INLINE void hb_pass1(const uint64_t *qc, const uint64_t *dc, int64_t n, int wc, int lkind, const void *ql,
                        const void *dl, int wl, int graded, int n_gain, int nb, int64_t *hs) {
    memset(hs, 0, sizeof(int64_t) * nb * HB_SEG);
    int64_t L = n / HB_SEG;
    for (int64_t j = 0; j < L; j++)
        for (int s = 0; s < HB_SEG; s++) hb_one(qc, dc, s * L + j, wc, lkind, ql, dl, wl, graded, n_gain, hs + s * nb);
    for (int64_t i = HB_SEG * L; i < n; i++)
        hb_one(qc, dc, i, wc, lkind, ql, dl, wl, graded, n_gain, hs + (HB_SEG - 1) * nb);
}

#define HB_DISPATCH1(CALL)                                                                                     \
    do {                                                                                                       \
        if (wc == 1 && wl == 1 && lkind == 1 && !graded) {                                                     \
            const int wc_ = 1, wl_ = 1, lk_ = 1, gr_ = 0;                                                      \
            CALL;                                                                                              \
        } else if (wc == 1 && wl == 1 && lkind == 1) {                                                         \
            const int wc_ = 1, wl_ = 1, lk_ = 1, gr_ = 1;                                                      \
            CALL;                                                                                              \
        } else if (wc == 1 && lkind == 0) {                                                                    \
            const int wc_ = 1, wl_ = wl, lk_ = 0, gr_ = graded;                                                \
            CALL;                                                                                              \
        } else {                                                                                               \
            const int wc_ = wc, wl_ = wl, lk_ = lkind, gr_ = graded;                                           \
            CALL;                                                                                              \
        }                                                                                                      \
    } while (0)

/* hs: scratch of HB_SEG * (nbits + 1) * n_gain int64 */
HB_INLINE void hb_hist_impl(const uint64_t *qc, const uint64_t *dc, int64_t n_db, int wc, int lkind, const void *ql,
                            const void *dl, int wl, int graded, int n_gain, int nbits, int64_t q0, int64_t q1,
                            int64_t *hist, int64_t *hs) {
    int nb = (nbits + 1) * n_gain;
    for (int64_t q = q0; q < q1; q++) {
        int64_t *h = hist + (q - q0) * nb;
        const void *qlr = lkind == 0 ? (const void *)((const int64_t *)ql + q) : (const void *)((const uint64_t *)ql + q * wl);
        HB_DISPATCH1(hb_pass1(qc + q * wc, dc, n_db, wc_, lk_, qlr, dl, wl_, gr_, n_gain, nb, hs));
        for (int b = 0; b < nb; b++) {
            int64_t t = 0;
            for (int s = 0; s < HB_SEG; s++) t += hs[s * nb + b];
            h[b] = t;
        }
    }
}

/* ranked pass over the database, segments in lockstep: per item its key k, then with per-segment
 * counters of the key (zero based) its local rank and, for a relevant item, its local relevant index;
 * relevant items append (local rank | k << 40 | s << 56, local index | gain << 48) to a compact list
 * (branch-free: the list grows by the relevance bit). */
HB_INLINE void hb_rank_one(const uint64_t *qc, const uint64_t *dc, int64_t i, int s, int wc, int lkind,
                           const void *ql, const void *dl, int wl, int graded, int n_gain, int tie, int64_t *h,
                           int64_t *ci, int64_t *cr, int64_t *lr, int64_t *lt, int64_t *w) {
    int d, g;
    hb_item(qc, dc, i, wc, lkind, ql, dl, wl, graded, &d, &g);
    int64_t k, r, t, rel = g != 0;
    if (tie == 0 && n_gain == 2) { /* the histogram itself holds the running counts of the key d */
        k = d;
        t = h[2 * d + 1];
        r = h[2 * d] + t;
        h[2 * d + g]++;
    } else {
        h[d * n_gain + g]++;
        k = tie == 0 ? d : (tie == 1 ? d * n_gain + (n_gain - 1 - g) : d * n_gain + g);
        r = ci[k];
        ci[k] = r + 1;
        t = cr[k];
        cr[k] = t + rel;
    }
    int64_t wi = *w;
    lr[wi] = r | (k << 40) | ((int64_t)s << 56);
    lt[wi] = t | ((int64_t)g << 48);
    *w = wi + rel;
}

HB_INLINE int64_t hb_rank_pass1(const uint64_t *qc, const uint64_t *dc, int64_t n, int wc, int lkind,
                                const void *ql, const void *dl, int wl, int graded, int n_gain, int nb, int nk,
                                int tie, int64_t *hs, int64_t *ci, int64_t *cr, int64_t *lr, int64_t *lt) {
    memset(hs, 0, sizeof(int64_t) * nb * HB_SEG);
    memset(ci, 0, sizeof(int64_t) * nk * HB_SEG);
    memset(cr, 0, sizeof(int64_t) * nk * HB_SEG);
    int64_t L = n / HB_SEG, w = 0;
    for (int64_t j = 0; j < L; j++)
        for (int s = 0; s < HB_SEG; s++)
            hb_rank_one(qc, dc, s * L + j, s, wc, lkind, ql, dl, wl, graded, n_gain, tie, hs + s * nb, ci + s * nk,
                        cr + s * nk, lr, lt, &w);
    for (int64_t i = HB_SEG * L; i < n; i++)
        hb_rank_one(qc, dc, i, HB_SEG - 1, wc, lkind, ql, dl, wl, graded, n_gain, tie, hs + (HB_SEG - 1) * nb,
                    ci + (HB_SEG - 1) * nk, cr + (HB_SEG - 1) * nk, lr, lt, &w);
    return w;
}

/* scratch: HB_SEG * nb + 2 * HB_SEG * nb + 2 * (n_db + 1) int64 */
HB_INLINE int64_t hb_rank_impl(const uint64_t *qc, const uint64_t *dc, int64_t n_db, int wc, int lkind,
                               const void *ql, const void *dl, int wl, int graded, int n_gain, int nbits, int tie,
                               int64_t limit, int64_t *hist, int64_t *scratch, const double *inv_rank, double *prec,
                               int64_t *pos, uint16_t *gains, int64_t *n_written) {
    int nb = (nbits + 1) * n_gain;
    int nk = tie == 0 ? nbits + 1 : nb;
    int64_t *hs = scratch;
    int64_t *ci = hs + (int64_t)HB_SEG * nb; /* [s * nk + k]: items of key k in segment s, then first rank */
    int64_t *cr = ci + (int64_t)HB_SEG * nk; /* the same for relevant items and relevant indices */
    int64_t *lr = cr + (int64_t)HB_SEG * nk, *lt = lr + n_db + 1;
    int64_t w;
    if (tie == 0 && n_gain == 2) { /* the common case with constants folded in */
        HB_DISPATCH1(w = hb_rank_pass1(qc, dc, n_db, wc_, lk_, ql, dl, wl_, gr_, 2, nb, nk, 0, hs, ci, cr, lr, lt));
    } else if (tie == 0) {
        HB_DISPATCH1(w = hb_rank_pass1(qc, dc, n_db, wc_, lk_, ql, dl, wl_, gr_, n_gain, nb, nk, 0, hs, ci, cr, lr, lt));
    } else {
        HB_DISPATCH1(w = hb_rank_pass1(qc, dc, n_db, wc_, lk_, ql, dl, wl_, gr_, n_gain, nb, nk, tie, hs, ci, cr, lr, lt));
    }
    for (int b = 0; b < nb; b++) {
        int64_t t = 0;
        for (int s = 0; s < HB_SEG; s++) t += hs[s * nb + b];
        hist[b] = t;
    }
    if (tie == 0 && n_gain == 2)
        for (int s = 0; s < HB_SEG; s++)
            for (int d = 0; d < nk; d++) {
                ci[s * nk + d] = hs[s * nb + 2 * d] + hs[s * nb + 2 * d + 1];
                cr[s * nk + d] = hs[s * nb + 2 * d + 1];
            }
    /* counts -> first rank / first relevant index of every (key, segment): keys in order, then segments */
    int64_t acc_i = 0, acc_r = 0;
    for (int k = 0; k < nk; k++) {
        for (int s = 0; s < HB_SEG; s++) {
            int64_t items = ci[s * nk + k], rel = cr[s * nk + k];
            ci[s * nk + k] = acc_i;
            cr[s * nk + k] = acc_r;
            acc_i += items;
            acc_r += rel;
        }
    }
    int64_t written = 0;
    const int64_t m40 = ((int64_t)1 << 40) - 1, m48 = ((int64_t)1 << 48) - 1;
    for (int64_t j = 0; j < w; j++) {
        int64_t e = lr[j];
        int64_t sk = ((e >> 56) & 0xff) * nk + ((e >> 40) & 0xffff);
        int64_t r = ci[sk] + (e & m40);
        if (r < limit) {
            int64_t t = cr[sk] + (lt[j] & m48);
            pos[t] = r;
            gains[t] = (uint16_t)(lt[j] >> 48);
            written++;
        }
    }
    /* precisions in a separate pass: the ranks pos[t] increase with t, so inv_rank is read in order */
    for (int64_t t = 0; t < written; t++) prec[t] = inv_rank[pos[t]] * (double)(t + 1);
    *n_written = written;
    return acc_r;
}

/* popcnt-enabled and generic builds of the same code, chosen at run time */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define HB_HAVE_POPCNT_TARGET 1
__attribute__((target("popcnt"))) static void hb_hist_popcnt(const uint64_t *qc, const uint64_t *dc, int64_t n_db,
                                                             int wc, int lkind, const void *ql, const void *dl,
                                                             int wl, int graded, int n_gain, int nbits, int64_t q0,
                                                             int64_t q1, int64_t *hist, int64_t *hs) {
    hb_hist_impl(qc, dc, n_db, wc, lkind, ql, dl, wl, graded, n_gain, nbits, q0, q1, hist, hs);
}
__attribute__((target("popcnt"))) static int64_t hb_rank_popcnt(
    const uint64_t *qc, const uint64_t *dc, int64_t n_db, int wc, int lkind, const void *ql, const void *dl, int wl,
    int graded, int n_gain, int nbits, int tie, int64_t limit, int64_t *hist,
    int64_t *scratch, const double *inv_rank, double *prec, int64_t *pos, uint16_t *gains, int64_t *n_written) {
    return hb_rank_impl(qc, dc, n_db, wc, lkind, ql, dl, wl, graded, n_gain, nbits, tie, limit, hist, scratch,
                        inv_rank, prec, pos, gains, n_written);
}
#endif

static int hb_use_popcnt(void) {
#ifdef HB_HAVE_POPCNT_TARGET
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("popcnt") ? 1 : 0;
    }
    return cached;
#else
    return 0;
#endif
}

/* exported: joint (distance, gain) histograms of queries q0..q1-1 into hist ((q1-q0), (nbits+1)*n_gain);
 * hs: scratch of HB_SEG * (nbits+1) * n_gain int64 */
void hb_hist(const uint64_t *qc, const uint64_t *dc, int64_t n_db, int wc, int lkind, const void *ql, const void *dl,
             int wl, int graded, int n_gain, int nbits, int64_t q0, int64_t q1, int64_t *hist, int64_t *hs) {
#ifdef HB_HAVE_POPCNT_TARGET
    if (hb_use_popcnt()) {
        hb_hist_popcnt(qc, dc, n_db, wc, lkind, ql, dl, wl, graded, n_gain, nbits, q0, q1, hist, hs);
        return;
    }
#endif
    hb_hist_impl(qc, dc, n_db, wc, lkind, ql, dl, wl, graded, n_gain, nbits, q0, q1, hist, hs);
}

/* exported: one query (qc, ql point at its row). Returns the number of relevant items; for every relevant
 * item of rank r < limit (0-based, tie rule tie: 0 index, 1 optimistic, 2 pessimistic), in rank order:
 * prec[t] = inv_rank[r] * (t + 1), pos[t] = r, gains[t] = its gain; *n_written = how many. */
int64_t hb_rank(const uint64_t *qc, const uint64_t *dc, int64_t n_db, int wc, int lkind, const void *ql,
                const void *dl, int wl, int graded, int n_gain, int nbits, int tie, int64_t limit, int64_t *hist,
                int64_t *scratch, const double *inv_rank, double *prec, int64_t *pos, uint16_t *gains,
                int64_t *n_written) {
#ifdef HB_HAVE_POPCNT_TARGET
    if (hb_use_popcnt())
        return hb_rank_popcnt(qc, dc, n_db, wc, lkind, ql, dl, wl, graded, n_gain, nbits, tie, limit, hist, scratch,
                              inv_rank, prec, pos, gains, n_written);
#endif
    return hb_rank_impl(qc, dc, n_db, wc, lkind, ql, dl, wl, graded, n_gain, nbits, tie, limit, hist, scratch,
                        inv_rank, prec, pos, gains, n_written);
}

int hb_abi_version(void) { return 3; }

int hb_segments(void) { return HB_SEG; }

static struct PyModuleDef hb_module = {PyModuleDef_HEAD_INIT, "_hamming_kernel",
                                       "ctypes-loaded kernel of pipeline.eval.metrics (no Python-level API)", -1, NULL};

PyMODINIT_FUNC PyInit__hamming_kernel(void) { return PyModule_Create(&hb_module); }
