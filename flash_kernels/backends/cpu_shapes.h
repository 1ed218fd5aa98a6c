// The (query heads per KV head, head dim) shapes the compiled bf16 attention kernels are built for (decode in
// cpu_decode.cpp, both prefill forms), and the dispatch of a runtime shape onto their templates.
#pragma once
#include <cstdint>
#include <type_traits>

namespace prism_shape {

// Query heads per KV head 1 to 8, head dims 64 / 128.
inline bool compiled(int64_t group, int64_t dim) {
  return 1 <= group && group <= 8 && (dim == 64 || dim == 128);
}

// Calls f(std::integral_constant<int, G>{}, std::integral_constant<int, D>{}) for (group, dim) = (G, D), one of
// compiled's; nothing for another shape (check it first).
template <class F>
void dispatch(int64_t group, int64_t dim, F&& f) {
  const auto with_dim = [&](auto g) {
    if (dim == 64) f(g, std::integral_constant<int, 64>{});
    if (dim == 128) f(g, std::integral_constant<int, 128>{});
  };
  const auto groups = [&](auto... g) { ((group == decltype(g)::value ? with_dim(g) : void()), ...); };
  groups(std::integral_constant<int, 1>{}, std::integral_constant<int, 2>{}, std::integral_constant<int, 3>{},
         std::integral_constant<int, 4>{}, std::integral_constant<int, 5>{}, std::integral_constant<int, 6>{},
         std::integral_constant<int, 7>{}, std::integral_constant<int, 8>{});
}

}  // namespace prism_shape
