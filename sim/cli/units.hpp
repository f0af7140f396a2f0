// Quantities with their units, for messages and displays. Plain functions of numbers, so that the
// CUDA backend's module (cli/cuda_runner.cpp) links them without the rest of the display.
#pragma once

#include <string>

namespace selfnorm::cli {

// v through a printf format for one double ("%.3f", "%.4g").
std::string format_number(const char* format, double v);

// The shortest text that reads back as v exactly: "0.3", not 0.29999999999999999.
std::string format_shortest(double v);

// "1.5 s", "3 min 20 s", "2 h 05 min"; "?" for a negative or non-finite time.
std::string format_duration(double seconds);

// "512 MiB", "1.2 GiB" (powers of 1024).
std::string format_bytes(double bytes);

}  // namespace selfnorm::cli
