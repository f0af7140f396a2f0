// Helpers shared by the config and sweep tests.
#pragma once

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "io/config.hpp"

namespace selfnorm::test {

// The issues of a config that must fail, each as "path: message" (the message alone where the
// issue has no path), as parse_experiment reports them for a file `file` named `name`. Fails the
// test if the config is accepted.
inline std::vector<std::string> config_problems(const std::string& text, const std::string& file,
                                                const std::string& name) {
  try {
    io::parse_experiment(text, file, name);
  } catch (const io::ConfigError& e) {
    std::vector<std::string> out;
    for (const auto& i : e.issues()) out.push_back(i.path.empty() ? i.message : i.path + ": " + i.message);
    return out;
  }
  FAIL("config was accepted: " << text);
  return {};
}

}  // namespace selfnorm::test
