// Dense matrix products for the engine, on operands stored in the kernel's own layouts, so that
// nothing is packed or transposed on the way into a product.
//
// The engine keeps its matrices "unit-major": row j of an activation matrix holds unit j for the
// samples of a batch. Its three products are then all C = A B with samples along the columns:
//   forward    H_l^T     = W_l^T   X_{l-1}^T   A: the weights as strips (StripView)
//   backward   dL/dX^T   = W_l     dL/dH_l^T   A: the same strips read as panels (PanelView, width 12)
//   dL/dW_l^T            = dL/dH_l^T X_{l-1}   A: the gradient's panels (PanelView, width kPanel)
// and B is always a PanelView of width kPanel<T>: the activations or gradients of the batch.
//
// The tile is kStrip rows of C by kPanel<T> columns: 12 x 2 AVX-512 vectors, all in registers (per
// step of k it loads two vectors of B and broadcasts 12 values of A); with AVX2, four register
// sub-tiles of 6 rows x 2 ymm vectors, each over the whole k block. C is built kBlockRows rows at a
// time in a caller's buffer; when a block is complete, `done` gets it (the engine applies the
// activation there, while the block is still in cache).
//
// Determinism contract: every element of C is computed by the same sequence of floating-point
// operations whatever the shapes, the block a row falls in and the columns a call covers. The
// reduction over k runs in blocks of kKBlock<T>, each block summed in order into a register from
// zero and then added to C, so a result does not depend on how the work is split over threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>
#include <utility>

namespace selfnorm {

// Rows of the register tile, and the height of a strip.
inline constexpr std::int64_t kStrip = 12;
// Columns of the register tile (two 64-byte vectors), and the width of a panel.
template <class T>
inline constexpr std::int64_t kPanel = 128 / static_cast<std::int64_t>(sizeof(T));
// Length of the k blocks: a multiple of kStrip, so that blocks of a PanelView of width kStrip
// start on a panel. Part of the numerics (see the determinism contract above). In float64 a
// strip's k block (12.7 KB) and a panel's (16.9 KB) fit in a 48 KB L1 together, so the strip stays
// there while the panels of B stream past it; at 264 (59 KB together) the backward product, whose
// strips come in 22 pieces, ran 3-8% slower (gemm_bench --direction backward --precision float64,
// 1 and 2 threads, interleaved). float32 measured no better at 264 than at 516.
template <class T>
inline constexpr std::int64_t kKBlock = sizeof(T) == 4 ? 516 : 132;
// Rows of C per block handed to `done`.
inline constexpr std::int64_t kBlockRows = 8 * kStrip;

// An m x k matrix in strips of kStrip rows, each strip k-major: element (i, p) at
// data[(i / kStrip) * strip_stride + p * kStrip + i % kStrip]. The rows of the last strip past m
// are read (their products are discarded), so they must be allocated.
template <class T>
struct StripView {
  const T* data = nullptr;
  std::ptrdiff_t strip_stride = 0;
};

// A rows x cols matrix in panels of `width` columns, each panel row-major: element (i, j) at
// data[(j / width) * panel_stride + i * width + j % width]. As the A operand of a product, rows up
// to the next multiple of kStrip are read (and their products discarded), so they must be
// allocated; as B, all `width` columns of the last panel are read.
template <class T>
struct PanelView {
  const T* data = nullptr;
  std::ptrdiff_t panel_stride = 0;
  std::int64_t width = kPanel<T>;
};

// A non-owning reference to a callable, for the per-block callback (no allocation, one indirect
// call per block of rows).
template <class Signature>
class FunctionRef;
template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef>)
  FunctionRef(F&& f)  // NOLINT(google-explicit-constructor): used like a function parameter
      : object_(const_cast<void*>(static_cast<const void*>(&f))), call_([](void* o, Args... args) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<Args>(args)...);
        }) {}
  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void* object_;
  R (*call_)(void*, Args...);
};

// Called with rows [row0, row0 + rows) of C, complete, at c (leading dimension ldc); rows <= m.
template <class T>
using RowsDone = FunctionRef<void(std::int64_t row0, std::int64_t rows, const T* c, std::ptrdiff_t ldc)>;

// Elements of the C buffer that gemm() needs for `panels` panels of B, and its leading dimension.
template <class T>
std::ptrdiff_t gemm_block_ld(std::int64_t panels);
template <class T>
std::size_t gemm_block_size(std::int64_t panels);

// C = A B for A m x k and B k x (panels * kPanel<T>) (width kPanel<T>), C computed block by block
// into c_block (gemm_block_size elements) and handed to `done` block by block, in row order.
// Single-threaded. A as strips:
template <class T>
void gemm(std::int64_t m, std::int64_t k, std::int64_t panels, StripView<T> a, PanelView<T> b, T* c_block,
          RowsDone<T> done);
// A as panels, of width kStrip or kPanel<T>:
template <class T>
void gemm(std::int64_t m, std::int64_t k, std::int64_t panels, PanelView<T> a, PanelView<T> b, T* c_block,
          RowsDone<T> done);

// A leading dimension for rows of `cols` elements of T: a whole number of 64-byte lines, and
// never a multiple of 1024 bytes (rows that far apart would share cache sets).
std::ptrdiff_t padded_ld(std::ptrdiff_t cols, std::size_t element_size);

// Which kernel gemm() uses in this build: "avx512", "avx2" or "portable".
std::string_view gemm_backend();

}  // namespace selfnorm
