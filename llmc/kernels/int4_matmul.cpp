// llmc's 4-bit weight MatMul for ONNX Runtime's CPU provider: ai.llmc::MatMulInt4.
//
// Why our own kernel: ONNX Runtime's MatMulNBits at accuracy level 0 (float32 activations) has a
// fused kernel for one row only. For more rows (a continuous-batching decode step, a speculative
// verify) it dequantizes every weight of the node to a float32 buffer, then runs an sgemm: the
// dequantization (~10 ms a SmolLM2-135M step) is paid per call whatever the row count. This
// kernel dequantizes 16 columns x 2 positions of K into registers and multiplies them into up to 8
// rows at once (outer products, float32 FMAs), so each weight is dequantized once per 8 rows.
//
// Numerics: every output element is one chain of float32 FMAs over K in ascending order, with the
// weight (q - zero point) * scale formed by one FMA (q * scale + (-zero point * scale)). Nothing
// depends on how many rows a call has or which columns share a tile: a row gives bitwise the same
// output alone or batched, and the three paths (AVX-512, AVX2 + FMA, portable C++ for other CPUs)
// are bitwise the same (vfmadd in either width and std::fma round alike).
//
// Weights arrive prepacked by llmc.weight_only.kernel (at build time, from MatMulNBits' blocks):
//   packed  uint8 [tiles, K/2, 16]: byte j of (tile t, pair p) = q[16t+j][2p] | q[16t+j][2p+1] << 4
//   scales  float [tiles, K/block, 16]: the block's scale of column 16t+j (0 past N)
//   offsets float [tiles, K/block, 16]: -zero_point * scale
//
// ONNX Runtime's C API is reached through its documented ABI (OrtApiBase::GetApi, the OrtApi table
// of function pointers, whose order never changes between releases, and struct OrtCustomOp), so
// building needs no ONNX Runtime headers: only the members used are named below, by position.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LLMC_X86 1
#endif

extern "C" {
struct OrtStatus;
struct OrtApi;
struct OrtSessionOptions;
struct OrtCustomOpDomain;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtValue;
struct OrtTensorTypeAndShapeInfo;

struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};

// struct OrtCustomOp, as ONNX Runtime reads it (version 17 fields; later ones left empty).
struct OrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*);
  const char* (*GetName)(const OrtCustomOp*);
  const char* (*GetExecutionProviderType)(const OrtCustomOp*);
  int (*GetInputType)(const OrtCustomOp*, size_t);
  size_t (*GetInputTypeCount)(const OrtCustomOp*);
  int (*GetOutputType)(const OrtCustomOp*, size_t);
  size_t (*GetOutputTypeCount)(const OrtCustomOp*);
  void (*KernelCompute)(void*, OrtKernelContext*);
  void (*KernelDestroy)(void*);
  int (*GetInputCharacteristic)(const OrtCustomOp*, size_t);
  int (*GetOutputCharacteristic)(const OrtCustomOp*, size_t);
  int (*GetInputMemoryType)(const OrtCustomOp*, size_t);
  int (*GetVariadicInputMinArity)(const OrtCustomOp*);
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp*);
  int (*GetVariadicOutputMinArity)(const OrtCustomOp*);
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp*);
  OrtStatus* (*CreateKernelV2)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*, void**);
  OrtStatus* (*KernelComputeV2)(void*, OrtKernelContext*);
  OrtStatus* (*InferOutputShapeFn)(const OrtCustomOp*, void*);
  int (*GetStartVersion)(const OrtCustomOp*);
  int (*GetEndVersion)(const OrtCustomOp*);
  void* (*GetMayInplace)(int**, int**);
  void (*ReleaseMayInplace)(int*, int*);
  void* (*GetAliasMap)(int**, int**);
  void (*ReleaseAliasMap)(int*, int*);
};
}

namespace {

constexpr uint32_t kApiVersion = 17;  // KernelContext_ParallelFor is 1.17's
constexpr int kFloat = 1, kUint8 = 2;  // ONNXTensorElementDataType
constexpr int kFail = 1, kInvalidArgument = 2;  // OrtErrorCode
constexpr int kRequired = 0;  // OrtCustomOpInputOutputCharacteristic

// Positions in the OrtApi table.
enum : size_t {
  kCreateStatus = 0, kCreateCustomOpDomain = 26, kCustomOpDomainAdd = 27, kAddCustomOpDomain = 28,
  kGetTensorMutableData = 51, kGetTensorElementType = 60, kGetDimensionsCount = 61, kGetDimensions = 62,
  kGetTensorTypeAndShape = 65, kKernelInfoGetAttributeInt64 = 86, kKernelContextGetInput = 90,
  kKernelContextGetOutput = 91, kReleaseTensorTypeAndShapeInfo = 99, kKernelContextParallelFor = 274,
};

const OrtApi* g_api = nullptr;

template <typename F>
F api(size_t index) {
  return reinterpret_cast<F>(reinterpret_cast<void* const*>(g_api)[index]);
}

OrtStatus* error(int code, const char* message) {
  return api<OrtStatus* (*)(int, const char*)>(kCreateStatus)(code, message);
}

#define LLMC_TRY(expr)                  \
  do {                                  \
    OrtStatus* status_ = (expr);        \
    if (status_ != nullptr) return status_; \
  } while (0)

struct Tensor {
  int type = 0;
  std::vector<int64_t> dims;
  void* data = nullptr;
};

OrtStatus* describe(const OrtValue* value, Tensor* out) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  LLMC_TRY(api<OrtStatus* (*)(const OrtValue*, OrtTensorTypeAndShapeInfo**)>(kGetTensorTypeAndShape)(value, &info));
  size_t rank = 0;
  OrtStatus* status = api<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int*)>(kGetTensorElementType)(info, &out->type);
  if (status == nullptr)
    status = api<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, size_t*)>(kGetDimensionsCount)(info, &rank);
  if (status == nullptr) {
    out->dims.assign(rank, 0);
    status = api<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int64_t*, size_t)>(kGetDimensions)(
        info, out->dims.data(), rank);
  }
  api<void (*)(OrtTensorTypeAndShapeInfo*)>(kReleaseTensorTypeAndShapeInfo)(info);
  if (status != nullptr) return status;
  return api<OrtStatus* (*)(OrtValue*, void**)>(kGetTensorMutableData)(const_cast<OrtValue*>(value), &out->data);
}

// ---------------------------------------------------------------------------------------------
// The products. One call: rows [0, M) of A (M x K, row-major) times the packed columns of tiles
// [t0, t1), into Y (M x N, row-major).

struct Problem {
  const float* a;
  const uint8_t* packed;
  const float* scales;
  const float* offsets;
  float* y;
  int64_t m, k, n, block, tiles;
};

constexpr int kRows = 8;  // rows a tile of the kernel computes together

// Column tiles a step: 4 when every row chunk has at most 4 rows (R * T accumulators: 16 of the
// 32 registers), else 3 for all chunks (24 at 8 rows), so a task's tiles form whole groups.
int64_t tiles_per_group(int64_t m) { return m >= 5 ? 3 : 4; }

void store(const Problem& p, int64_t row, int64_t tile, const float* values) {
  const int64_t first = tile * 16, count = p.n - first < 16 ? p.n - first : 16;
  std::memcpy(p.y + row * p.n + first, values, sizeof(float) * count);
}

// Portable: the same FMA chain per output as the AVX-512 path.
void portable(const Problem& p, int64_t t0, int64_t t1) {
  const int64_t blocks = p.k / p.block;
  float acc[16];
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t r = 0; r < p.m; ++r) {
      const float* a = p.a + r * p.k;
      for (int j = 0; j < 16; ++j) acc[j] = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) {
        const float* s = p.scales + (t * blocks + b) * 16;
        const float* z = p.offsets + (t * blocks + b) * 16;
        for (int64_t kk = b * p.block; kk < (b + 1) * p.block; kk += 2) {
          const uint8_t* q = p.packed + (t * (p.k / 2) + kk / 2) * 16;
          for (int j = 0; j < 16; ++j) {
            const float lo = std::fma(static_cast<float>(q[j] & 15), s[j], z[j]);
            const float hi = std::fma(static_cast<float>(q[j] >> 4), s[j], z[j]);
            acc[j] = std::fma(a[kk], lo, acc[j]);
            acc[j] = std::fma(a[kk + 1], hi, acc[j]);
          }
        }
      }
      store(p, r, t, acc);
    }
  }
}

#ifdef LLMC_X86
// AVX2: R rows x one tile of 16 columns, as two halves of 8 (16 registers: R <= 4).
template <int R>
__attribute__((target("avx2,fma"))) void tile_avx2(const Problem& p, int64_t row, int64_t t) {
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  const __m256i low = _mm256_set1_epi32(15);
  const int64_t blocks = p.k / p.block, half = p.k / 2;
  const float* a = p.a + row * p.k;
  for (int64_t b = 0; b < blocks; ++b) {
    const float* sb = p.scales + (t * blocks + b) * 16;
    const float* zb = p.offsets + (t * blocks + b) * 16;
    const __m256 s0 = _mm256_loadu_ps(sb), s1 = _mm256_loadu_ps(sb + 8);
    const __m256 z0 = _mm256_loadu_ps(zb), z1 = _mm256_loadu_ps(zb + 8);
    for (int64_t kk = b * p.block; kk < (b + 1) * p.block; kk += 2) {
      const uint8_t* q = p.packed + (t * half + kk / 2) * 16;
      const __m256i q0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)));
      const __m256i q1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8)));
      const __m256 lo0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(q0, low)), s0, z0);
      const __m256 hi0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(q0, 4)), s0, z0);
      const __m256 lo1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(q1, low)), s1, z1);
      const __m256 hi1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(q1, 4)), s1, z1);
      for (int r = 0; r < R; ++r) {
        const __m256 a0 = _mm256_set1_ps(a[r * p.k + kk]);
        const __m256 a1 = _mm256_set1_ps(a[r * p.k + kk + 1]);
        acc[r][0] = _mm256_fmadd_ps(a1, hi0, _mm256_fmadd_ps(a0, lo0, acc[r][0]));
        acc[r][1] = _mm256_fmadd_ps(a1, hi1, _mm256_fmadd_ps(a0, lo1, acc[r][1]));
      }
    }
  }
  alignas(32) float values[16];
  for (int r = 0; r < R; ++r) {
    _mm256_store_ps(values, acc[r][0]);
    _mm256_store_ps(values + 8, acc[r][1]);
    store(p, row + r, t, values);
  }
}

__attribute__((target("avx2,fma"))) void avx2(const Problem& p, int64_t t0, int64_t t1) {
  for (int64_t row = 0; row < p.m; row += 4) {
    const int64_t rows = p.m - row < 4 ? p.m - row : 4;
    for (int64_t t = t0; t < t1; ++t) {
      switch (rows) {
        case 1: tile_avx2<1>(p, row, t); break;
        case 2: tile_avx2<2>(p, row, t); break;
        case 3: tile_avx2<3>(p, row, t); break;
        default: tile_avx2<4>(p, row, t); break;
      }
    }
  }
}

// R rows x T tiles of 16 columns: R * T accumulators (at most 24 of the 32 zmm registers).
template <int R, int T>
__attribute__((target("avx512f,avx512bw,fma"))) void block_tile(const Problem& p, int64_t row, int64_t t0) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < T; ++u) acc[r][u] = _mm512_setzero_ps();
  const __m512i low = _mm512_set1_epi32(15);
  const int64_t blocks = p.k / p.block, half = p.k / 2;
  const float* a = p.a + row * p.k;
  for (int64_t b = 0; b < blocks; ++b) {
    __m512 s[T], z[T];
    for (int u = 0; u < T; ++u) {
      s[u] = _mm512_loadu_ps(p.scales + ((t0 + u) * blocks + b) * 16);
      z[u] = _mm512_loadu_ps(p.offsets + ((t0 + u) * blocks + b) * 16);
    }
    for (int64_t kk = b * p.block; kk < (b + 1) * p.block; kk += 2) {
      __m512 lo[T], hi[T];
      for (int u = 0; u < T; ++u) {
        const __m512i q = _mm512_cvtepu8_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(p.packed + ((t0 + u) * half + kk / 2) * 16)));
        lo[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(q, low)), s[u], z[u]);
        hi[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4)), s[u], z[u]);
      }
      for (int r = 0; r < R; ++r) {
        const __m512 a0 = _mm512_set1_ps(a[r * p.k + kk]);
        const __m512 a1 = _mm512_set1_ps(a[r * p.k + kk + 1]);
        for (int u = 0; u < T; ++u) {
          acc[r][u] = _mm512_fmadd_ps(a0, lo[u], acc[r][u]);
          acc[r][u] = _mm512_fmadd_ps(a1, hi[u], acc[r][u]);
        }
      }
    }
  }
  alignas(64) float values[16];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < T; ++u) {
      _mm512_store_ps(values, acc[r][u]);
      store(p, row + r, t0 + u, values);
    }
}

template <int R, int T>
__attribute__((target("avx512f,avx512bw,fma"))) void groups_avx512(const Problem& p, int64_t row, int64_t t0, int64_t t1) {
  int64_t t = t0;
  for (; t + T <= t1; t += T) block_tile<R, T>(p, row, t);
  for (; t < t1; ++t) block_tile<R, 1>(p, row, t);
}

template <int R>
__attribute__((target("avx512f,avx512bw,fma"))) void rows_avx512(const Problem& p, int64_t row, int64_t t0, int64_t t1) {
  if (R <= 4 && tiles_per_group(p.m) == 4) return groups_avx512<R, 4>(p, row, t0, t1);
  groups_avx512<R, 3>(p, row, t0, t1);
}

__attribute__((target("avx512f,avx512bw,fma"))) void avx512(const Problem& p, int64_t t0, int64_t t1) {
  for (int64_t row = 0; row < p.m; row += kRows) {
    switch (p.m - row < kRows ? p.m - row : kRows) {
      case 1: rows_avx512<1>(p, row, t0, t1); break;
      case 2: rows_avx512<2>(p, row, t0, t1); break;
      case 3: rows_avx512<3>(p, row, t0, t1); break;
      case 4: rows_avx512<4>(p, row, t0, t1); break;
      case 5: rows_avx512<5>(p, row, t0, t1); break;
      case 6: rows_avx512<6>(p, row, t0, t1); break;
      case 7: rows_avx512<7>(p, row, t0, t1); break;
      default: rows_avx512<8>(p, row, t0, t1); break;
    }
  }
}

enum Path : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

int best_path() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
  return kPortable;
}
#else
enum Path : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };
int best_path() { return kPortable; }
#endif

const int g_path = best_path();


void compute(const Problem& p, int64_t t0, int64_t t1, int path) {
#ifdef LLMC_X86
  if (path == kAvx512) return avx512(p, t0, t1);
  if (path == kAvx2) return avx2(p, t0, t1);
#endif
  portable(p, t0, t1);
}

void task(void* data, size_t index) {
  const Problem& p = *static_cast<const Problem*>(data);
  const int64_t size = tiles_per_group(p.m), t0 = static_cast<int64_t>(index) * size;  // a task: one group
  compute(p, t0, t0 + size < p.tiles ? t0 + size : p.tiles, g_path);
}

// ---------------------------------------------------------------------------------------------
// The custom op.

struct Kernel {
  int64_t k, n, block;
};

OrtStatus* create_kernel(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** out) {
  Kernel kernel{};
  using GetInt = OrtStatus* (*)(const OrtKernelInfo*, const char*, int64_t*);
  LLMC_TRY(api<GetInt>(kKernelInfoGetAttributeInt64)(info, "K", &kernel.k));
  LLMC_TRY(api<GetInt>(kKernelInfoGetAttributeInt64)(info, "N", &kernel.n));
  LLMC_TRY(api<GetInt>(kKernelInfoGetAttributeInt64)(info, "block_size", &kernel.block));
  if (kernel.k <= 0 || kernel.n <= 0 || kernel.block <= 0 || kernel.block % 2 != 0 || kernel.k % kernel.block != 0)
    return error(kInvalidArgument, "MatMulInt4: K must be a positive multiple of an even block_size, N positive");
  *out = new Kernel(kernel);
  return nullptr;
}

OrtStatus* run(void* state, OrtKernelContext* context) {
  const Kernel& kernel = *static_cast<const Kernel*>(state);
  using GetInput = OrtStatus* (*)(const OrtKernelContext*, size_t, const OrtValue**);
  Tensor in[4];
  for (size_t i = 0; i < 4; ++i) {
    const OrtValue* value = nullptr;
    LLMC_TRY(api<GetInput>(kKernelContextGetInput)(context, i, &value));
    LLMC_TRY(describe(value, &in[i]));
  }
  const Tensor &a = in[0], &packed = in[1], &scales = in[2], &offsets = in[3];
  const int64_t tiles = (kernel.n + 15) / 16, blocks = kernel.k / kernel.block;
  if (a.dims.empty() || a.dims.back() != kernel.k)
    return error(kInvalidArgument, "MatMulInt4: A's last dimension is not the node's K");
  const bool packed_ok = packed.dims.size() == 3 && packed.dims[0] == tiles && packed.dims[1] == kernel.k / 2 &&
                         packed.dims[2] == 16;
  const bool scales_ok = scales.dims.size() == 3 && scales.dims[0] == tiles && scales.dims[1] == blocks &&
                         scales.dims[2] == 16 && offsets.dims == scales.dims;
  if (!packed_ok || !scales_ok)
    return error(kInvalidArgument, "MatMulInt4: packed weights, scales or offsets do not fit K, N and block_size");
  std::vector<int64_t> shape(a.dims.begin(), a.dims.end() - 1);
  int64_t m = 1;
  for (int64_t d : shape) m *= d;
  shape.push_back(kernel.n);
  OrtValue* output = nullptr;
  using GetOutput = OrtStatus* (*)(OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**);
  LLMC_TRY(api<GetOutput>(kKernelContextGetOutput)(context, 0, shape.data(), shape.size(), &output));
  Tensor y;
  LLMC_TRY(describe(output, &y));
  if (m == 0) return nullptr;
  Problem problem{static_cast<const float*>(a.data), static_cast<const uint8_t*>(packed.data),
                  static_cast<const float*>(scales.data), static_cast<const float*>(offsets.data),
                  static_cast<float*>(y.data), m, kernel.k, kernel.n, kernel.block, tiles};
  const size_t tasks = static_cast<size_t>((tiles + tiles_per_group(m) - 1) / tiles_per_group(m));
  using ParallelFor = OrtStatus* (*)(const OrtKernelContext*, void (*)(void*, size_t), size_t, size_t, void*);
  return api<ParallelFor>(kKernelContextParallelFor)(context, task, tasks, 0, &problem);
}

void destroy(void* state) { delete static_cast<Kernel*>(state); }
const char* name(const OrtCustomOp*) { return "MatMulInt4"; }
const char* provider(const OrtCustomOp*) { return "CPUExecutionProvider"; }
int input_type(const OrtCustomOp*, size_t index) { return index == 1 ? kUint8 : kFloat; }
size_t input_count(const OrtCustomOp*) { return 4; }
int output_type(const OrtCustomOp*, size_t) { return kFloat; }
size_t output_count(const OrtCustomOp*) { return 1; }
int required(const OrtCustomOp*, size_t) { return kRequired; }
int default_memory(const OrtCustomOp*, size_t) { return 0; }
int one(const OrtCustomOp*) { return 1; }
int start_version(const OrtCustomOp*) { return 1; }
int end_version(const OrtCustomOp*) { return 0x7fffffff; }

OrtCustomOp make_op() {
  OrtCustomOp op;
  std::memset(&op, 0, sizeof(op));
  op.version = kApiVersion;
  op.GetName = name;
  op.GetExecutionProviderType = provider;
  op.GetInputType = input_type;
  op.GetInputTypeCount = input_count;
  op.GetOutputType = output_type;
  op.GetOutputTypeCount = output_count;
  op.KernelDestroy = destroy;
  op.GetInputCharacteristic = required;
  op.GetOutputCharacteristic = required;
  op.GetInputMemoryType = default_memory;
  op.GetVariadicInputMinArity = one;
  op.GetVariadicInputHomogeneity = one;
  op.GetVariadicOutputMinArity = one;
  op.GetVariadicOutputHomogeneity = one;
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = run;
  op.GetStartVersion = start_version;
  op.GetEndVersion = end_version;
  return op;
}

OrtCustomOp g_op = make_op();

}  // namespace

extern "C" {

// ONNX Runtime's entry point (SessionOptions.register_custom_ops_library).
__attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  const OrtApi* table = base->GetApi(kApiVersion);
  if (table == nullptr) return nullptr;  // older than 1.17: nothing registered, the session names the op
  g_api = table;
  OrtCustomOpDomain* domain = nullptr;
  LLMC_TRY(api<OrtStatus* (*)(const char*, OrtCustomOpDomain**)>(kCreateCustomOpDomain)("ai.llmc", &domain));
  LLMC_TRY(api<OrtStatus* (*)(OrtCustomOpDomain*, const OrtCustomOp*)>(kCustomOpDomainAdd)(domain, &g_op));
  return api<OrtStatus* (*)(OrtSessionOptions*, OrtCustomOpDomain*)>(kAddCustomOpDomain)(options, domain);
}

// For Python (ctypes): the version of this library's exports (llmc.kernels.ABI checks it, so a
// library an older llmc built is reported, not called).
__attribute__((visibility("default"))) int llmc_kernels_abi() { return 2; }

// For Python (ctypes): the path this CPU runs: 2 AVX-512, 1 AVX2 + FMA, 0 portable C++.
__attribute__((visibility("default"))) int llmc_int4_path() { return g_path; }

// For the tests (ctypes): the product without ONNX Runtime on ``path`` (at most this CPU's).
__attribute__((visibility("default"))) int llmc_int4_matmul(const float* a, const uint8_t* packed, const float* scales,
                                                            const float* offsets, float* y, int64_t m, int64_t k,
                                                            int64_t n, int64_t block, int path) {
  if (k <= 0 || n <= 0 || block <= 0 || block % 2 != 0 || k % block != 0 || path < 0 || path > g_path) return kFail;
  const Problem p{a, packed, scales, offsets, y, m, k, n, block, (n + 15) / 16};
  compute(p, 0, p.tiles, path);
  return 0;
}
}
