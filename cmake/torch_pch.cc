// Carries the precompiled header (torch/torch.h) that torch targets reuse; see FlotillaTorch.cmake.
