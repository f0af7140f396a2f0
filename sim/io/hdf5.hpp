// Small RAII wrappers over the HDF5 C API (1.10): just what the result files need.
// Every failure throws h5::Error with HDF5's own explanation (including the operating system's,
// e.g. "No space left on device"), never prints, and never leaves a handle open.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <hdf5.h>

namespace selfnorm::h5 {

class Error : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An owned HDF5 identifier, closed with the matching H5?close.
class Id {
 public:
  using Closer = herr_t (*)(hid_t);
  Id() = default;
  Id(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  Id(Id&& o) noexcept : id_(o.id_), closer_(o.closer_) { o.id_ = H5I_INVALID_HID; }
  Id& operator=(Id&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      closer_ = o.closer_;
      o.id_ = H5I_INVALID_HID;
    }
    return *this;
  }
  ~Id() { reset(); }
  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }  // NOLINT: handles are passed straight to the C API
  void reset() {
    if (id_ >= 0 && closer_) closer_(id_);
    id_ = H5I_INVALID_HID;
  }
  // Closes now and reports a failure (a file's close flushes its data).
  void close();

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

// Creates a new file; fails if it exists.
Id create_file(const std::filesystem::path& path);
// Creates a file that lives in memory only (the core driver); `label` names it in messages. Its
// bytes are taken with file_image() and written by the caller, so that HDF5 never meets a disk
// error: HDF5 1.10 crashes at exit after a file whose close failed (a full disk, say).
Id create_memory_file(const std::string& label);
// The complete bytes of an open file, as they would be on disk.
std::vector<unsigned char> file_image(hid_t file);
// Opens an existing file read-only.
Id open_file(const std::filesystem::path& path);

bool exists(hid_t loc, const std::string& name);
// Names of the links (datasets, groups) directly under `loc`, in name order.
std::vector<std::string> list_names(hid_t loc);
bool has_attribute(hid_t obj, const std::string& name);

void write_attribute(hid_t obj, const std::string& name, const std::string& value);
void write_attribute(hid_t obj, const std::string& name, double value);
void write_attribute(hid_t obj, const std::string& name, std::int64_t value);
void write_attribute(hid_t obj, const std::string& name, const std::vector<std::int64_t>& values);
void write_attribute(hid_t obj, const std::string& name, const std::vector<double>& values);
void write_attribute(hid_t obj, const std::string& name, const std::vector<std::string>& values);

std::string read_string_attribute(hid_t obj, const std::string& name);
std::int64_t read_int_attribute(hid_t obj, const std::string& name);
std::vector<std::int64_t> read_int_array_attribute(hid_t obj, const std::string& name);
std::vector<std::string> read_string_array_attribute(hid_t obj, const std::string& name);

// Writes a dataset of the given shape (row-major), returning it open for attributes and scales.
// A `fill_value` marks entries that hold no data (padding): it becomes the dataset's HDF5 fill
// value and its `_FillValue` attribute, as netCDF-4 writes it, so that xarray masks those entries.
Id write_dataset(hid_t loc, const std::string& name, const std::vector<double>& data,
                 const std::vector<hsize_t>& dims, std::optional<double> fill_value = std::nullopt);
Id write_dataset(hid_t loc, const std::string& name, const std::vector<std::int64_t>& data,
                 const std::vector<hsize_t>& dims, std::optional<std::int64_t> fill_value = std::nullopt);
Id write_dataset(hid_t loc, const std::string& name, const std::vector<std::string>& data);

Id open_dataset(hid_t loc, const std::string& name);
std::vector<hsize_t> dataset_shape(hid_t dataset);
std::vector<double> read_doubles(hid_t loc, const std::string& name);
std::vector<std::int64_t> read_ints(hid_t loc, const std::string& name);
std::vector<std::string> read_strings(hid_t loc, const std::string& name);

// Turns `dataset` into the dimension scale `dimension` (netCDF-4's coordinate variable).
void make_dimension_scale(hid_t dataset, const std::string& dimension);
// Attaches `scale` to axis `axis` of `dataset`.
void attach_dimension_scale(hid_t dataset, hid_t scale, unsigned axis);

}  // namespace selfnorm::h5
