// Exact KV-split shard attention on CPU, reading vLLM's CPU_ATTN cache in place.
//
// Layout read (vLLM CPU_ATTN, ISA "vec"/"vec16"): per block b and KV head h,
// K is stored TRANSPOSED, K[b, t, h, i] at k + b*k_sb + h*k_sh + i*k_si + t
// (token stride 1), and V token-major, V[b, t, h, i] at v + b*v_sb + h*v_sh +
// t*v_st + i (element stride 1). See kernels/kv_layout.py::cpu_attn_kv_views.
//
// Work split (the point of this kernel): every (sequence, KV head, row tile)
// unit is cut into contiguous KV ranges of whole blocks; one work item is one
// range against ALL query rows of the tile (the GQA group folded into the
// rows), so a small prefill chunk streams each KV block once per tile, not
// once per 32-row query tile. Items run in parallel (OpenMP, torch's runtime);
// partial states (unnormalised acc, running max m, sum l) are merged per unit
// in range order, the same exact log-sum-exp merge KV-cache parallelism uses.
//
// Scalar types: float32 and bfloat16 storage, float32 arithmetic. Vector
// width follows the ISA the file is compiled for (-march=native on the host):
// 16 floats with AVX-512, 8 with AVX2 (GCC vector extensions).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#ifdef __AVX512F__
constexpr int VW = 16;
#else
constexpr int VW = 8;
#endif
typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));
typedef uint16_t vh __attribute__((vector_size(VW * 2)));
typedef uint32_t vu __attribute__((vector_size(VW * 4)));

constexpr int ROW_TILE = 128;   // query rows (token x GQA group) per work item
constexpr int NREGS = (VW == 16) ? 32 : 16;  // vector registers of the ISA
// Rows per register block of Q K^T: 2 x QR score accumulators (two key vectors) + 2 K vectors.
constexpr int QR = (VW == 16) ? 12 : 6;
// Rows per register block of P V: RB x D/VW output accumulators, the rest for V and P broadcasts.
template <int D>
constexpr int pv_rows() { return (NREGS - 8) / (D / VW) > 0 ? (NREGS - 8) / (D / VW) : 1; }
constexpr int PV_T = 32;  // keys per P V sub-block (its V rows stay in L1 for every row block)
constexpr float NEG_BIG = -1e30f;

static inline vf vsplat(float x) { return vf{} + x; }

template <typename T>
static inline vf vload(const T* p);
template <>
inline vf vload<float>(const float* p) {
  vf r;
  std::memcpy(&r, p, sizeof(r));
  return r;
}
template <>
inline vf vload<uint16_t>(const uint16_t* p) {  // bfloat16 -> float32
  vh h;
  std::memcpy(&h, p, sizeof(h));
  vu u = __builtin_convertvector(h, vu) << 16;
  vf r;
  std::memcpy(&r, &u, sizeof(r));
  return r;
}
static inline float to_f(float x) { return x; }
static inline float to_f(uint16_t x) {
  uint32_t u = uint32_t(x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline void store_out(float* p, float x) { *p = x; }
static inline void store_out(uint16_t* p, float x) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    *p = uint16_t((u >> 16) | 0x40);  // quiet NaN
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  *p = uint16_t(u >> 16);
}

// exp(x) for x <= ~88; x < -87.3 gives ~1e-38 (callers zero masked lanes themselves).
// Cody-Waite range reduction, Cephes' degree-5 polynomial (about 1 ulp), 2^n by scalef.
static inline vf vexp(vf x) {
  const vf lo = vsplat(-87.3f), hi = vsplat(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
#ifdef __AVX512F__
  const __m512 n = _mm512_roundscale_ps((__m512)(x * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vf nf = (vf)n;
#else
  vf t = x * 1.44269504088896341f;
  vf half = t >= 0 ? vsplat(0.5f) : vsplat(-0.5f);
  vi ni = __builtin_convertvector(t + half, vi);
  vf nf = __builtin_convertvector(ni, vf);
#endif
  const vf f = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  vf p = vsplat(1.9875691500e-4f) * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * (f * f) + f + 1.0f;
#ifdef __AVX512F__
  return (vf)_mm512_scalef_ps((__m512)p, n);
#else
  vi bits = (ni + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
#endif
}
static inline float hmax(vf v) {
#ifdef __AVX512F__
  return _mm512_reduce_max_ps((__m512)v);
#else
  float m = v[0];
  for (int i = 1; i < VW; ++i) m = v[i] > m ? v[i] : m;
  return m;
#endif
}
static inline float hsum(vf v) {
#ifdef __AVX512F__
  return _mm512_reduce_add_ps((__m512)v);
#else
  float s = 0;
  for (int i = 0; i < VW; ++i) s += v[i];
  return s;
#endif
}

struct Args {
  const void* q; int64_t q_st, q_sh;
  const void* k; int64_t k_sb, k_sh, k_si;
  const void* v; int64_t v_sb, v_sh, v_st;
  void* out; int64_t o_st, o_sh;
  float* lse;  // [hq, T] contiguous, may be null
  int64_t num_tokens;
  const int32_t* qsl; const int32_t* kv_lens;
  const int32_t* bt; int64_t bt_stride;
  const int64_t* q_pos;        // [T] absolute positions, causal only
  const int64_t* shard_start;  // [num_seqs], causal only
  int num_seqs, hq, hkv, d, bs, causal;
  float scale;
};

struct Unit { int seq, kvh, tok0, ntok, blk_end; int64_t min_pos, max_pos; int first_item, nitems; };
struct Item { int unit, blk0, blk1; };

// S[r][0:2VW] = q[r] . K^T[:, 0:2VW] for NR rows (K^T block: KT[i * k_si + t], t contiguous).
template <typename T, int D, int NR>
static inline void qk_block(const T* KT, int64_t k_si, const float* q, float* S, int ldS) {
  vf s0[NR], s1[NR];
  for (int rr = 0; rr < NR; ++rr) s0[rr] = s1[rr] = vf{};
  for (int i = 0; i < D; ++i) {
    const vf k0 = vload<T>(KT + i * k_si), k1 = vload<T>(KT + i * k_si + VW);
    for (int rr = 0; rr < NR; ++rr) {
      const float qv = q[rr * D + i];
      s0[rr] += qv * k0;
      s1[rr] += qv * k1;
    }
  }
  for (int rr = 0; rr < NR; ++rr) {
    std::memcpy(S + rr * ldS, &s0[rr], sizeof(vf));
    std::memcpy(S + rr * ldS + VW, &s1[rr], sizeof(vf));
  }
}

// acc[r][0:D] += sum_t P[r][t] V[t] for NR rows (V block: V[t * v_st + i]).
template <typename T, int D, int NR>
static inline void pv_block(const T* V, int64_t v_st, int ntok, const float* P, int ldS, float* acc) {
  vf o[NR][D / VW];
  for (int rr = 0; rr < NR; ++rr)
    for (int c = 0; c < D / VW; ++c) o[rr][c] = vload<float>(acc + rr * D + c * VW);
  for (int t = 0; t < ntok; ++t) {
    for (int c = 0; c < D / VW; ++c) {
      const vf vv = vload<T>(V + t * v_st + c * VW);
      for (int rr = 0; rr < NR; ++rr) o[rr][c] += P[rr * ldS + t] * vv;
    }
  }
  for (int rr = 0; rr < NR; ++rr)
    for (int c = 0; c < D / VW; ++c) std::memcpy(acc + rr * D + c * VW, &o[rr][c], sizeof(vf));
}

// Row tails: one register block of exactly n < NR rows (each K/V block is
// read once per register block, so tails must not fall back to single rows).
template <typename T, int D, int NR>
static inline void qk_tail(int n, const T* KT, int64_t k_si, const float* q, float* S, int ldS) {
  if constexpr (NR > 1) {
    if (n == NR - 1) return qk_block<T, D, NR - 1>(KT, k_si, q, S, ldS);
    return qk_tail<T, D, NR - 1>(n, KT, k_si, q, S, ldS);
  }
}
template <typename T, int D, int NR>
static inline void pv_tail(int n, const T* V, int64_t v_st, int ntok, const float* P, int ldS, float* acc) {
  if constexpr (NR > 1) {
    if (n == NR - 1) return pv_block<T, D, NR - 1>(V, v_st, ntok, P, ldS, acc);
    return pv_tail<T, D, NR - 1>(n, V, v_st, ntok, P, ldS, acc);
  }
}

// Work item: rows of one unit against blocks [blk0, blk1). Writes acc [rows][d], m, l.
template <typename T, int D>
static void run_item(const Args& a, const Unit& u, const Item& it, float* acc, float* m, float* l,
                     float* qbuf, float* sbuf) {
  const int group = a.hq / a.hkv, rows = u.ntok * group, bs = a.bs;
  const int q0 = a.qsl[u.seq] + u.tok0;
  const T* qp = static_cast<const T*>(a.q);
  // Q rows, token-major then group member: row r = j*group + g -> head kvh*group + g.
  for (int r = 0; r < rows; ++r) {
    const T* src = qp + (q0 + r / group) * a.q_st + (u.kvh * group + r % group) * a.q_sh;
    for (int i = 0; i < D; ++i) qbuf[r * D + i] = to_f(src[i]) * a.scale;
  }
  for (int r = 0; r < rows; ++r) { m[r] = -INFINITY; l[r] = 0.f; }
  std::memset(acc, 0, sizeof(float) * rows * D);
  const T* kp = static_cast<const T*>(a.k);
  const T* vp = static_cast<const T*>(a.v);
  const int kv_len = a.kv_lens[u.seq];
  const int64_t sstart = a.causal ? a.shard_start[u.seq] : 0;
  const int32_t* btrow = a.bt + int64_t(u.seq) * a.bt_stride;
  const int ldS = bs;
  for (int blk = it.blk0; blk < it.blk1; ++blk) {
    const int64_t b = btrow[blk];
    const int t_base = blk * bs;
    const int ntok = kv_len - t_base < bs ? kv_len - t_base : bs;
    const T* KT = kp + b * a.k_sb + u.kvh * a.k_sh;  // KT[i*k_si + t]
    const T* V = vp + b * a.v_sb + u.kvh * a.v_sh;   // V[t*v_st + i]
    // S = Q K^T over all bs columns (columns >= ntok are masked below): key
    // sub-blocks outer, so each stays in L1 while every row block reads it.
    for (int t0 = 0; t0 < bs; t0 += 2 * VW) {
      for (int r0 = 0; r0 < rows; r0 += QR) {
        if (rows - r0 >= QR)
          qk_block<T, D, QR>(KT + t0, a.k_si, qbuf + r0 * D, sbuf + r0 * ldS + t0, ldS);
        else
          qk_tail<T, D, QR>(rows - r0, KT + t0, a.k_si, qbuf + r0 * D, sbuf + r0 * ldS + t0, ldS);
      }
    }
    // Mask: tokens past kv_len, and (causal) keys after each row's position.
    const bool full = ntok == bs && (!a.causal || sstart + t_base + bs - 1 <= u.min_pos);
    // The next block's K^T rows, spread over this block's rows: its first Q K^T
    // pass reads 2 lines of each of D rows, a pattern the hardware prefetcher misses.
    const T* nextK = blk + 1 < it.blk1 ? kp + int64_t(btrow[blk + 1]) * a.k_sb + u.kvh * a.k_sh : nullptr;
    for (int r = 0; r < rows; ++r) {
      if (nextK)
        for (int i = r * D / rows; i < (r + 1) * D / rows; ++i)
          for (int off = 0; off < bs * int(sizeof(T)); off += 64)
            __builtin_prefetch(reinterpret_cast<const char*>(nextK + i * a.k_si) + off, 0, 3);
      float* srow = sbuf + r * ldS;
      int vis = ntok;
      if (a.causal) {
        const int64_t lim = a.q_pos[q0 + r / group] - sstart - t_base + 1;  // visible iff t < lim
        if (lim < vis) vis = lim < 0 ? 0 : int(lim);
      }
      if (!full)
        for (int t = vis; t < bs; ++t) srow[t] = NEG_BIG;
      if (vis == 0) { for (int t = 0; t < bs; ++t) srow[t] = 0.f; continue; }  // row sees nothing here
      vf mx = vsplat(NEG_BIG);
      for (int t = 0; t < bs; t += VW) { vf x = vload<float>(srow + t); mx = x > mx ? x : mx; }
      const float bmax = hmax(mx);
      const float m_new = bmax > m[r] ? bmax : m[r];
      const float alpha = std::exp(m[r] - m_new);  // 0 when m was -inf
      vf sum = vf{};
      const vf mn = vsplat(m_new);
      for (int t = 0; t < bs; t += VW) {
        vf x = vload<float>(srow + t);
        vf p = vexp(x - mn);
        if (!full) p = x > vsplat(NEG_BIG * 0.5f) ? p : vf{};
        sum += p;
        std::memcpy(srow + t, &p, sizeof(vf));
      }
      l[r] = l[r] * alpha + hsum(sum);
      m[r] = m_new;
      if (alpha != 1.f) {
        float* ar = acc + r * D;
        for (int i = 0; i < D; ++i) ar[i] *= alpha;
      }
    }
    // acc += P V: key sub-blocks of PV_T outer (their V rows stay in L1),
    // rows in register blocks of RB x D floats.
    constexpr int RB = pv_rows<D>();
    for (int t0 = 0; t0 < ntok; t0 += PV_T) {
      const int nt = ntok - t0 < PV_T ? ntok - t0 : PV_T;
      const T* Vt = V + t0 * a.v_st;
      for (int r0 = 0; r0 < rows; r0 += RB) {
        if (rows - r0 >= RB)
          pv_block<T, D, RB>(Vt, a.v_st, nt, sbuf + r0 * ldS + t0, ldS, acc + r0 * D);
        else
          pv_tail<T, D, RB>(rows - r0, Vt, a.v_st, nt, sbuf + r0 * ldS + t0, ldS, acc + r0 * D);
      }
    }
  }
}

template <typename T, int D>
static int run(const Args& a, int nthreads) {
  const int group = a.hq / a.hkv;
  const int tok_tile = ROW_TILE / group > 0 ? ROW_TILE / group : 1;
  std::vector<Unit> units;
  int64_t work = 0;
  for (int s = 0; s < a.num_seqs; ++s) {
    const int qs = a.qsl[s], qn = a.qsl[s + 1] - qs, kv_len = a.kv_lens[s];
    if (qn <= 0) continue;
    for (int j0 = 0; j0 < qn; j0 += tok_tile) {
      const int nt = qn - j0 < tok_tile ? qn - j0 : tok_tile;
      int64_t lo = 0, hi = 0;
      int vis = kv_len;
      if (a.causal) {
        lo = a.q_pos[qs + j0]; hi = lo;
        for (int j = 1; j < nt; ++j) { int64_t p = a.q_pos[qs + j0 + j]; lo = p < lo ? p : lo; hi = p > hi ? p : hi; }
        const int64_t lim = hi - a.shard_start[s] + 1;
        vis = lim < vis ? (lim < 0 ? 0 : int(lim)) : vis;
      }
      const int nblk = (vis + a.bs - 1) / a.bs;
      for (int h = 0; h < a.hkv; ++h) {
        units.push_back({s, h, j0, nt, nblk, lo, hi, 0, 0});
        work += int64_t(nblk) * nt;
      }
    }
  }
  // Cut units into ranges: about 8 items per thread over the whole batch.
  const int64_t target = work / (8 * int64_t(nthreads)) + 1;
  std::vector<Item> items;
  for (int ui = 0; ui < int(units.size()); ++ui) {
    Unit& u = units[ui];
    u.first_item = int(items.size());
    if (u.blk_end == 0) { u.nitems = 0; continue; }
    int per = int(target / u.ntok);
    per = per < 4 ? 4 : per;
    for (int b0 = 0; b0 < u.blk_end; b0 += per)
      items.push_back({ui, b0, b0 + per < u.blk_end ? b0 + per : u.blk_end});
    u.nitems = int(items.size()) - u.first_item;
  }
  // Buffers sized by the largest unit actually present, left uninitialised
  // (every value is written before it is read).
  int rows_max = 1;
  for (const Unit& u : units) rows_max = u.ntok * group > rows_max ? u.ntok * group : rows_max;
  const size_t item_floats = size_t(rows_max) * (D + 2);
  std::unique_ptr<float[]> part(new float[items.size() * item_floats]);
#pragma omp parallel num_threads(nthreads)
  {
    std::unique_ptr<float[]> qbuf(new float[size_t(rows_max) * D]), sbuf(new float[size_t(rows_max) * a.bs]);
    float o[D];
#pragma omp for schedule(dynamic, 1)
    for (int ii = 0; ii < int(items.size()); ++ii) {
      float* base = part.get() + ii * item_floats;
      run_item<T, D>(a, units[items[ii].unit], items[ii], base, base + rows_max * D,
                     base + rows_max * D + rows_max, qbuf.get(), sbuf.get());
    }
    // Merge the ranges of each unit in order and write out / lse.
#pragma omp for schedule(static)
    for (int ui = 0; ui < int(units.size()); ++ui) {
      const Unit& u = units[ui];
      const int rows = u.ntok * group, q0 = a.qsl[u.seq] + u.tok0;
      T* op = static_cast<T*>(a.out);
      for (int r = 0; r < rows; ++r) {
        float M = -INFINITY;
        for (int k = 0; k < u.nitems; ++k) {
          const float mk = part[(u.first_item + k) * item_floats + rows_max * D + r];
          M = mk > M ? mk : M;
        }
        float L = 0.f;
        std::fill(o, o + D, 0.f);
        if (M != -INFINITY) {
          for (int k = 0; k < u.nitems; ++k) {
            const float* base = part.get() + (u.first_item + k) * item_floats;
            const float mk = base[rows_max * D + r], lk = base[rows_max * D + rows_max + r];
            if (mk == -INFINITY) continue;
            const float w = std::exp(mk - M);
            L += lk * w;
            for (int i = 0; i < D; ++i) o[i] += base[r * D + i] * w;
          }
        }
        const int tok = q0 + r / group, head = u.kvh * group + r % group;
        T* dst = op + tok * a.o_st + head * a.o_sh;
        const float inv = L > 0.f ? 1.f / L : 0.f;
        for (int i = 0; i < D; ++i) store_out(dst + i, o[i] * inv);
        if (a.lse) a.lse[int64_t(head) * a.num_tokens + tok] = L > 0.f ? M + std::log(L) : -INFINITY;
      }
    }
  }
  return 0;
}

extern "C" {

int medha_vector_width() { return VW; }

// Returns 0 on success, a negative code for an unsupported case (caller falls back).
int medha_shard_attention(
    const void* q, int64_t q_st, int64_t q_sh,
    const void* k, int64_t k_sb, int64_t k_sh, int64_t k_si,
    const void* v, int64_t v_sb, int64_t v_sh, int64_t v_st,
    void* out, int64_t o_st, int64_t o_sh, float* lse, int64_t num_tokens,
    const int32_t* qsl, const int32_t* kv_lens, const int32_t* bt, int64_t bt_stride,
    const int64_t* q_pos, const int64_t* shard_start,
    int num_seqs, int hq, int hkv, int d, int bs, int causal, float scale,
    int dtype /* 0: float32, 1: bfloat16 */, int nthreads) {
  if (bs % (2 * VW) != 0 || hq % hkv != 0) return -1;
  Args a{q, q_st, q_sh, k, k_sb, k_sh, k_si, v, v_sb, v_sh, v_st, out, o_st, o_sh, lse, num_tokens,
         qsl, kv_lens, bt, bt_stride, q_pos, shard_start, num_seqs, hq, hkv, d, bs, causal, scale};
  nthreads = nthreads < 1 ? 1 : nthreads;
#define MEDHA_CASE(DD)                                                   \
  if (d == DD) return dtype == 0 ? run<float, DD>(a, nthreads)           \
                                 : run<uint16_t, DD>(a, nthreads);
  if (dtype != 0 && dtype != 1) return -2;
  MEDHA_CASE(64)
  MEDHA_CASE(128)
  MEDHA_CASE(32)
  MEDHA_CASE(96)
  MEDHA_CASE(256)
#undef MEDHA_CASE
  return -3;
}
}
