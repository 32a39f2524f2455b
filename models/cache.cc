#include "models/cache.h"

#include <algorithm>

namespace flotilla::models {

DynamicCache::DynamicCache(int64_t num_layers) : layers_(static_cast<size_t>(num_layers)) {}

void DynamicCache::Reserve(int64_t /*batch_size*/, int64_t max_length) { reserved_length_ = max_length; }

std::pair<at::Tensor, at::Tensor> DynamicCache::Update(const at::Tensor& key_states, const at::Tensor& value_states,
                                                       int64_t layer_idx) {
  if (layer_idx >= static_cast<int64_t>(layers_.size())) layers_.resize(static_cast<size_t>(layer_idx + 1));
  Layer& layer = layers_[static_cast<size_t>(layer_idx)];
  const int64_t new_length = key_states.size(2);
  const int64_t needed = layer.length + new_length;
  const int64_t capacity = layer.keys.defined() ? layer.keys.size(1) : 0;
  if (needed > capacity) {
    int64_t new_capacity = std::max({needed, reserved_length_, capacity * 2});
    auto grow = [&](const at::Tensor& old, const at::Tensor& like) {
      at::Tensor buffer = at::empty({like.size(0), new_capacity, like.size(1), like.size(3)}, like.options());
      if (layer.length > 0) buffer.narrow(1, 0, layer.length).copy_(old.narrow(1, 0, layer.length));
      return buffer;
    };
    layer.keys = grow(layer.keys, key_states);
    layer.values = grow(layer.values, value_states);
  }
  layer.keys.narrow(1, layer.length, new_length).copy_(key_states.transpose(1, 2));
  layer.values.narrow(1, layer.length, new_length).copy_(value_states.transpose(1, 2));
  layer.length = needed;
  return {layer.keys.narrow(1, 0, needed).transpose(1, 2), layer.values.narrow(1, 0, needed).transpose(1, 2)};
}

int64_t DynamicCache::GetSeqLength(int64_t layer_idx) const {
  if (layer_idx >= static_cast<int64_t>(layers_.size())) return 0;
  return layers_[static_cast<size_t>(layer_idx)].length;
}

}  // namespace flotilla::models
