// Errors the command line reports to the user; each maps to an exit status.
#pragma once

#include <stdexcept>

namespace selfnorm::cli {

// A bad command-line value, or a request that cannot be carried out as given (exit status 2).
class UsageError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace selfnorm::cli
