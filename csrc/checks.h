// Argument checks the raw ops share. The raw ops are called directly (serving engines skip the
// Python wrappers), so each checks what memory safety and a clear error need: every tensor
// argument on one device (the fake kernels in specdecode/ops/ check the same, since they are what
// runs when any argument is a meta tensor), and the errors name the argument.
#pragma once
#include <ATen/ATen.h>

#include <initializer_list>
#include <optional>
#include <utility>

namespace specdecode {

using NamedTensor = std::pair<const char*, const at::Tensor*>;

// RuntimeError naming the first argument not on the device of the first one.
inline void check_same_device(const char* op, std::initializer_list<NamedTensor> tensors) {
  const NamedTensor* first = nullptr;
  for (const NamedTensor& named : tensors) {
    if (named.second == nullptr) continue;
    if (first == nullptr) {
      first = &named;
      continue;
    }
    TORCH_CHECK(named.second->device() == first->second->device(), op, ": ", named.first, " is on ",
                named.second->device(), " but ", first->first, " is on ", first->second->device(),
                "; every tensor argument must be on the same device");
  }
}

inline const at::Tensor* optional_ptr(const std::optional<at::Tensor>& tensor) {
  return tensor ? &*tensor : nullptr;
}

}  // namespace specdecode
