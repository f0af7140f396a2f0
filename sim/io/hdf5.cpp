#include "io/hdf5.hpp"

#include <hdf5_hl.h>

#include <cstring>
#include <mutex>

namespace selfnorm::h5 {
namespace {

void silence_library() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

herr_t collect_error(unsigned n, const H5E_error2_t* err, void* data) {
  auto* out = static_cast<std::string*>(data);
  if (err->desc && *err->desc) {
    if (!out->empty()) *out += "; ";
    *out += err->desc;
  }
  (void)n;
  return 0;
}

// Throws with `what` and HDF5's error stack.
[[noreturn]] void fail(const std::string& what) {
  std::string detail;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &detail);
  H5Eclear2(H5E_DEFAULT);
  throw Error(what + (detail.empty() ? std::string() : " (" + detail + ")"));
}

hid_t check(hid_t id, const std::string& what) {
  if (id < 0) fail(what);
  return id;
}

void check_status(herr_t status, const std::string& what) {
  if (status < 0) fail(what);
}

Id string_type() {
  Id t(check(H5Tcopy(H5T_C_S1), "string type"), H5Tclose);
  check_status(H5Tset_size(t, H5T_VARIABLE), "string type");
  check_status(H5Tset_cset(t, H5T_CSET_UTF8), "string type");
  return t;
}

Id simple_space(const std::vector<hsize_t>& dims) {
  return Id(check(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), "dataspace"), H5Sclose);
}

void replace_attribute(hid_t obj, const std::string& name) {
  if (H5Aexists(obj, name.c_str()) > 0) check_status(H5Adelete(obj, name.c_str()), "delete attribute " + name);
}

template <class T>
void write_numeric_attribute(hid_t obj, const std::string& name, hid_t type, const std::vector<T>& values,
                             bool scalar) {
  silence_library();
  replace_attribute(obj, name);
  Id space = scalar ? Id(check(H5Screate(H5S_SCALAR), "dataspace"), H5Sclose)
                    : simple_space({static_cast<hsize_t>(values.size())});
  Id attr(check(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), "create attribute " + name),
          H5Aclose);
  if (!values.empty()) check_status(H5Awrite(attr, type, values.data()), "write attribute " + name);
}

template <class T>
Id write_numeric_dataset(hid_t loc, const std::string& name, hid_t file_type, hid_t mem_type,
                         const std::vector<T>& data, const std::vector<hsize_t>& dims,
                         const std::optional<T>& fill_value) {
  silence_library();
  Id space = simple_space(dims);
  Id dcpl(check(H5Pcreate(H5P_DATASET_CREATE), "dataset creation properties"), H5Pclose);
  if (fill_value) check_status(H5Pset_fill_value(dcpl, mem_type, &*fill_value), "fill value of " + name);
  Id ds(check(H5Dcreate2(loc, name.c_str(), file_type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT),
              "create dataset " + name),
        H5Dclose);
  if (!data.empty()) check_status(H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()), "write " + name);
  if (fill_value) write_numeric_attribute(ds, "_FillValue", mem_type, std::vector<T>{*fill_value}, true);
  return ds;
}

template <class T>
std::vector<T> read_numeric(hid_t loc, const std::string& name, hid_t mem_type) {
  Id ds = open_dataset(loc, name);
  std::size_t count = 1;
  for (auto d : dataset_shape(ds)) count *= d;
  std::vector<T> out(count);
  if (count) check_status(H5Dread(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), "read " + name);
  return out;
}

std::vector<std::string> read_vlen_strings(hid_t obj, hid_t space, bool attribute, const std::string& name) {
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  std::vector<char*> raw(static_cast<std::size_t>(std::max<hssize_t>(n, 0)), nullptr);
  if (raw.empty()) return {};
  Id type = string_type();
  // The library's strings are freed however this function ends (a failed read, or an allocation
  // failure while they are copied).
  struct Reclaim {
    hid_t type, space;
    std::vector<char*>& raw;
    ~Reclaim() { H5Dvlen_reclaim(type, space, H5P_DEFAULT, raw.data()); }
  } reclaim{type.get(), space, raw};
  if (attribute) {
    check_status(H5Aread(obj, type, raw.data()), "read attribute " + name);
  } else {
    check_status(H5Dread(obj, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()), "read " + name);
  }
  std::vector<std::string> out;
  for (char* s : raw) out.emplace_back(s ? s : "");
  return out;
}

}  // namespace

void Id::close() {
  if (id_ < 0) return;
  const hid_t id = id_;
  id_ = H5I_INVALID_HID;
  if (closer_ && closer_(id) < 0) fail("close");
}

Id create_file(const std::filesystem::path& path) {
  silence_library();
  return Id(check(H5Fcreate(path.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT), "cannot create " + path.string()),
            H5Fclose);
}

Id create_memory_file(const std::string& label) {
  silence_library();
  Id fapl(check(H5Pcreate(H5P_FILE_ACCESS), "file access properties"), H5Pclose);
  // Grows in 1 MiB steps; no backing store: nothing is written to a file named `label`.
  check_status(H5Pset_fapl_core(fapl, std::size_t(1) << 20, 0), "core driver");
  return Id(check(H5Fcreate(label.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl), "cannot create " + label + " in memory"),
            H5Fclose);
}

std::vector<unsigned char> file_image(hid_t file) {
  check_status(H5Fflush(file, H5F_SCOPE_LOCAL), "flush the in-memory file");
  const ssize_t size = H5Fget_file_image(file, nullptr, 0);
  if (size < 0) fail("file image size");
  std::vector<unsigned char> image(static_cast<std::size_t>(size));
  if (H5Fget_file_image(file, image.data(), image.size()) != size) fail("file image");
  return image;
}

Id open_file(const std::filesystem::path& path) {
  silence_library();
  return Id(check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "cannot open " + path.string() +
                                                                          " as an HDF5 file"),
            H5Fclose);
}

bool exists(hid_t loc, const std::string& name) {
  silence_library();
  return H5Lexists(loc, name.c_str(), H5P_DEFAULT) > 0;
}

std::vector<std::string> list_names(hid_t loc) {
  silence_library();
  std::vector<std::string> names;
  auto collect = [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
    static_cast<std::vector<std::string>*>(data)->emplace_back(name);
    return 0;
  };
  check_status(H5Literate(loc, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect, &names), "list datasets");
  return names;
}

bool has_attribute(hid_t obj, const std::string& name) { return H5Aexists(obj, name.c_str()) > 0; }

void write_attribute(hid_t obj, const std::string& name, const std::string& value) {
  silence_library();
  replace_attribute(obj, name);
  Id type = string_type();
  Id space(check(H5Screate(H5S_SCALAR), "dataspace"), H5Sclose);
  Id attr(check(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), "create attribute " + name),
          H5Aclose);
  const char* p = value.c_str();
  check_status(H5Awrite(attr, type, &p), "write attribute " + name);
}

void write_attribute(hid_t obj, const std::string& name, double value) {
  write_numeric_attribute(obj, name, H5T_NATIVE_DOUBLE, std::vector<double>{value}, true);
}

void write_attribute(hid_t obj, const std::string& name, std::int64_t value) {
  write_numeric_attribute(obj, name, H5T_NATIVE_INT64, std::vector<std::int64_t>{value}, true);
}

void write_attribute(hid_t obj, const std::string& name, const std::vector<std::int64_t>& values) {
  write_numeric_attribute(obj, name, H5T_NATIVE_INT64, values, false);
}

void write_attribute(hid_t obj, const std::string& name, const std::vector<double>& values) {
  write_numeric_attribute(obj, name, H5T_NATIVE_DOUBLE, values, false);
}

void write_attribute(hid_t obj, const std::string& name, const std::vector<std::string>& values) {
  silence_library();
  replace_attribute(obj, name);
  Id type = string_type();
  Id space = simple_space({static_cast<hsize_t>(values.size())});
  Id attr(check(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), "create attribute " + name),
          H5Aclose);
  std::vector<const char*> ptrs;
  for (const auto& v : values) ptrs.push_back(v.c_str());
  if (!ptrs.empty()) check_status(H5Awrite(attr, type, ptrs.data()), "write attribute " + name);
}

std::string read_string_attribute(hid_t obj, const std::string& name) {
  silence_library();
  Id attr(check(H5Aopen(obj, name.c_str(), H5P_DEFAULT), "missing attribute " + name), H5Aclose);
  Id space(check(H5Aget_space(attr), "attribute space"), H5Sclose);
  Id ftype(check(H5Aget_type(attr), "attribute type"), H5Tclose);
  if (H5Tget_class(ftype) != H5T_STRING) throw Error("attribute " + name + " is not a string");
  if (H5Tis_variable_str(ftype) > 0) {
    auto v = read_vlen_strings(attr, space, true, name);
    return v.empty() ? std::string() : v.front();
  }
  const std::size_t size = H5Tget_size(ftype);
  std::string out(size, '\0');
  Id mtype(check(H5Tcopy(H5T_C_S1), "string type"), H5Tclose);
  check_status(H5Tset_size(mtype, size), "string type");
  check_status(H5Aread(attr, mtype, out.data()), "read attribute " + name);
  out.resize(std::strlen(out.c_str()));
  return out;
}

std::int64_t read_int_attribute(hid_t obj, const std::string& name) {
  auto v = read_int_array_attribute(obj, name);
  if (v.size() != 1) throw Error("attribute " + name + " is not a scalar");
  return v.front();
}

std::vector<std::int64_t> read_int_array_attribute(hid_t obj, const std::string& name) {
  silence_library();
  Id attr(check(H5Aopen(obj, name.c_str(), H5P_DEFAULT), "missing attribute " + name), H5Aclose);
  Id space(check(H5Aget_space(attr), "attribute space"), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  std::vector<std::int64_t> out(static_cast<std::size_t>(std::max<hssize_t>(n, 0)));
  if (!out.empty()) check_status(H5Aread(attr, H5T_NATIVE_INT64, out.data()), "read attribute " + name);
  return out;
}

std::vector<std::string> read_string_array_attribute(hid_t obj, const std::string& name) {
  silence_library();
  Id attr(check(H5Aopen(obj, name.c_str(), H5P_DEFAULT), "missing attribute " + name), H5Aclose);
  Id space(check(H5Aget_space(attr), "attribute space"), H5Sclose);
  return read_vlen_strings(attr, space, true, name);
}

Id write_dataset(hid_t loc, const std::string& name, const std::vector<double>& data,
                 const std::vector<hsize_t>& dims, std::optional<double> fill_value) {
  return write_numeric_dataset(loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, data, dims, fill_value);
}

Id write_dataset(hid_t loc, const std::string& name, const std::vector<std::int64_t>& data,
                 const std::vector<hsize_t>& dims, std::optional<std::int64_t> fill_value) {
  return write_numeric_dataset(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, data, dims, fill_value);
}

Id write_dataset(hid_t loc, const std::string& name, const std::vector<std::string>& data) {
  silence_library();
  Id type = string_type();
  Id space = simple_space({static_cast<hsize_t>(data.size())});
  Id ds(check(H5Dcreate2(loc, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
              "create dataset " + name),
        H5Dclose);
  std::vector<const char*> ptrs;
  for (const auto& s : data) ptrs.push_back(s.c_str());
  if (!ptrs.empty()) check_status(H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()), "write " + name);
  return ds;
}

Id open_dataset(hid_t loc, const std::string& name) {
  silence_library();
  return Id(check(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), "missing dataset " + name), H5Dclose);
}

std::vector<hsize_t> dataset_shape(hid_t dataset) {
  Id space(check(H5Dget_space(dataset), "dataspace"), H5Sclose);
  const int rank = check(H5Sget_simple_extent_ndims(space), "rank of a dataspace");
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  if (rank > 0) check(H5Sget_simple_extent_dims(space, dims.data(), nullptr), "shape of a dataspace");
  return dims;
}

std::vector<double> read_doubles(hid_t loc, const std::string& name) {
  return read_numeric<double>(loc, name, H5T_NATIVE_DOUBLE);
}

std::vector<std::int64_t> read_ints(hid_t loc, const std::string& name) {
  return read_numeric<std::int64_t>(loc, name, H5T_NATIVE_INT64);
}

std::vector<std::string> read_strings(hid_t loc, const std::string& name) {
  Id ds = open_dataset(loc, name);
  Id space(check(H5Dget_space(ds), "dataspace"), H5Sclose);
  return read_vlen_strings(ds, space, false, name);
}

void make_dimension_scale(hid_t dataset, const std::string& dimension) {
  check_status(H5DSset_scale(dataset, dimension.c_str()), "dimension scale " + dimension);
}

void attach_dimension_scale(hid_t dataset, hid_t scale, unsigned axis) {
  check_status(H5DSattach_scale(dataset, scale, axis), "attach dimension scale");
}

}  // namespace selfnorm::h5
