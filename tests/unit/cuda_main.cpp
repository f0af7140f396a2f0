// Main of the GPU unit tests: they need an NVIDIA GPU. Without one the whole program is skipped
// (exit status 77, which CTest reports as skipped), saying why, instead of failing.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <iostream>

#include "cuda/device_engine.hpp"

int main(int argc, char** argv) {
  try {
    const selfnorm::cuda::DeviceProperties d = selfnorm::cuda::probe_device();
    std::cout << "GPU tests on " << d.name << " (compute capability " << d.compute_major << "." << d.compute_minor
              << ", " << d.multiprocessors << " multiprocessors)" << std::endl;
  } catch (const selfnorm::cuda::NoDeviceError& e) {
    std::cout << "SKIPPED: the GPU unit tests need an NVIDIA GPU: " << e.what() << std::endl;
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
