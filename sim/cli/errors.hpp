// Errors the command line reports to the user; each maps to an exit status.
#pragma once

#include <stdexcept>

namespace selfnorm::cli {

// A bad command-line value, or a request that cannot be carried out as given (exit status 2).
class UsageError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The device the run asked for cannot be used: no CUDA backend in this build, a backend module
// that does not load, no GPU, or a GPU that fails to start (exit status 4). Nothing has been written.
class DeviceError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace selfnorm::cli
