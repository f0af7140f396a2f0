// Result files: the schema of a tiny golden run, and exact round trips.
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <random>

#include "core/engine.hpp"
#include "io/config.hpp"
#include "io/hdf5.hpp"
#include "io/results.hpp"
#include "test_helpers.hpp"

using namespace selfnorm;
using namespace selfnorm::io;
namespace fs = std::filesystem;

namespace {

using test::TempDir;

Provenance test_provenance() {
  Provenance p;
  p.program_version = "0.0.0";
  p.git_commit = "test";
  p.created_utc = "2026-01-01T00:00:00Z";
  p.threads = 1;
  return p;
}

std::vector<PointRecord> run_all(const Experiment& ex) {
  std::vector<PointRecord> records;
  for (const auto& point : ex.points) {
    const PointResult r = simulate_point(point.spec, {ex.seed, static_cast<std::uint64_t>(point.index)}, {1});
    records.push_back(make_record(point.index, r, ex.output.per_trial));
  }
  return records;
}

// A dataset's declared fill value: its HDF5 fill value, checked equal to its _FillValue attribute
// (netCDF-4 keeps the two the same). NaN compares by its bits.
double fill_value(hid_t dataset) {
  double property = 0.0, attribute = 0.0;
  h5::Id dcpl(H5Dget_create_plist(dataset), H5Pclose);
  REQUIRE(H5Pget_fill_value(dcpl, H5T_NATIVE_DOUBLE, &property) >= 0);
  REQUIRE(h5::has_attribute(dataset, "_FillValue"));
  h5::Id attr(H5Aopen(dataset, "_FillValue", H5P_DEFAULT), H5Aclose);
  REQUIRE(H5Aread(attr, H5T_NATIVE_DOUBLE, &attribute) >= 0);
  CHECK(std::memcmp(&property, &attribute, sizeof(double)) == 0);
  return attribute;
}

const char* kGoldenConfig = R"({
  "name": "golden", "seed": 3,
  "network": {"depth": 3, "width": 8},
  "activation": ["selu", {"name": "elu", "alpha": 0.5}],
  "monte_carlo": {"trials": 2, "batch": 5, "weight_gradients": true},
  "output": {"per_trial": true}
})";

}  // namespace

TEST_CASE("a tiny golden run has the documented schema", "[results]") {
  TempDir dir;
  const Experiment ex = parse_experiment(kGoldenConfig, "golden.json", "golden");
  const auto records = run_all(ex);
  const fs::path file = dir.path / "golden.h5";
  write_results(file, ex, records, test_provenance());

  h5::Id f = h5::open_file(file);
  CHECK(h5::read_string_attribute(f, "schema") == "selfnorm.results");
  CHECK(h5::read_int_attribute(f, "schema_version") == kSchemaVersion);
  CHECK(h5::read_string_attribute(f, "config_hash") == ex.hash);
  CHECK(h5::read_int_attribute(f, "seed") == 3);
  CHECK(h5::read_int_attribute(f, "point_total") == 2);
  CHECK(h5::read_string_attribute(f, "git_commit") == "test");
  CHECK(h5::read_string_array_attribute(f, "varied_keys") ==
        std::vector<std::string>{"activation.name", "activation.alpha", "activation.lambda"});
  CHECK(h5::read_int_array_attribute(f, "grid_shape") == std::vector<std::int64_t>{2});
  CHECK(h5::read_string_array_attribute(f, "grid_axes") == std::vector<std::string>{"activation"});
  CHECK(h5::read_string_attribute(f, "Conventions") == "CF-1.8");
  for (const char* attr : {"program_version", "compiler", "build_type", "host", "created_utc", "threads", "config",
                           "gemm_backend", "command_line", "title"}) {
    INFO(attr);
    CHECK(h5::has_attribute(f, attr));
  }
  CHECK(h5::read_string_attribute(f, "device") == "cpu");
  CHECK_FALSE(h5::has_attribute(f, "gpu_name"));
  // Coordinates and descriptors.
  CHECK(h5::read_ints(f, "point") == std::vector<std::int64_t>{0, 1});
  CHECK(h5::read_ints(f, "layer") == std::vector<std::int64_t>{1, 2, 3});
  CHECK(h5::read_ints(f, "trial") == std::vector<std::int64_t>{0, 1});
  CHECK(h5::read_strings(f, "activation") == std::vector<std::string>{"selu", "elu"});
  const auto alpha = h5::read_doubles(f, "alpha");
  CHECK(alpha[0] == kSeluAlpha01);
  CHECK(alpha[1] == 0.5);
  CHECK(std::isnan(h5::read_doubles(f, "lambda")[1]));  // elu has no lambda
  // The varied keys lie on the activation list's axis, and are the coordinates of every dataset
  // over points (CF `coordinates`), so that netCDF readers show them as coordinates.
  for (const char* name : {"activation", "alpha", "lambda"}) {
    INFO(name);
    h5::Id ds = h5::open_dataset(f, name);
    CHECK(h5::read_int_attribute(ds, "grid_axis") == 0);
    CHECK(h5::has_attribute(ds, "long_name"));
    CHECK(h5::has_attribute(ds, "DIMENSION_LIST"));
    CHECK(!h5::has_attribute(ds, "coordinates"));
  }
  CHECK(!h5::has_attribute(h5::open_dataset(f, "activation"), "units"));  // strings have no units
  CHECK(h5::read_string_attribute(h5::open_dataset(f, "alpha"), "units") == "1");
  CHECK(std::isnan(fill_value(h5::open_dataset(f, "lambda"))));
  // Every dataset has a long name, and every numeric one its units; every dataset over points but
  // the varied keys names them as coordinates.
  for (const auto& name : h5::list_names(f)) {
    INFO(name);
    h5::Id ds = h5::open_dataset(f, name);
    CHECK(h5::has_attribute(ds, "long_name"));
    if (name != "activation" && name != "point_config" && name != "point_matmul") {
      CHECK(h5::read_string_attribute(ds, "units") == "1");
    }
    const bool coordinate = name == "point" || name == "layer" || name == "trial" || name == "activation" ||
                            name == "alpha" || name == "lambda";
    if (!coordinate) CHECK(h5::read_string_attribute(ds, "coordinates") == "activation alpha lambda");
  }
  CHECK(h5::read_ints(f, "point_depth") == std::vector<std::int64_t>{3, 3});
  CHECK(h5::read_ints(f, "point_trials") == std::vector<std::int64_t>{2, 2});
  CHECK(h5::read_strings(f, "point_config").size() == 2);
  // The golden run's batch is below kBf16x6MinBatch: FMA on any CPU.
  CHECK(h5::read_strings(f, "point_matmul") == std::vector<std::string>{"fma", "fma"});
  // Every statistic, its standard error and its per-trial values, with their attributes.
  for (const auto& info : stat_catalog()) {
    const std::string name(info.name);
    INFO(name);
    h5::Id ds = h5::open_dataset(f, name);
    CHECK(h5::dataset_shape(ds) == std::vector<hsize_t>{2, 3});
    CHECK(std::isnan(fill_value(ds)));
    CHECK(h5::read_string_attribute(ds, "long_name") == std::string(info.long_name));
    CHECK(h5::read_string_attribute(ds, "units") == "1");
    CHECK(h5::has_attribute(ds, "definition"));
    CHECK(h5::has_attribute(ds, "DIMENSION_LIST"));
    CHECK(h5::dataset_shape(h5::open_dataset(f, name + "_sem")) == std::vector<hsize_t>{2, 3});
    CHECK(h5::dataset_shape(h5::open_dataset(f, name + "_per_trial")) == std::vector<hsize_t>{2, 2, 3});
  }
  CHECK(h5::read_ints(f, "nonfinite_count") == std::vector<std::int64_t>(6, 0));
  CHECK(h5::read_ints(f, "first_nonfinite_layer") == std::vector<std::int64_t>{0, 0});
  // The file holds exactly what the engine computed.
  const auto back = read_records(file);
  REQUIRE(back.size() == records.size());
  for (std::size_t p = 0; p < back.size(); ++p) {
    for (int s = 0; s < kStatCount; ++s) {
      CHECK(std::memcmp(back[p].mean[s].data(), records[p].mean[s].data(), 3 * sizeof(double)) == 0);
      CHECK(std::memcmp(back[p].sem[s].data(), records[p].sem[s].data(), 3 * sizeof(double)) == 0);
      CHECK(back[p].per_trial[s] == records[p].per_trial[s]);
    }
  }
  // Nothing but the result is left in the folder.
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
}

TEST_CASE("points of different depths are padded with NaN and -1", "[results]") {
  TempDir dir;
  Experiment ex = parse_experiment(R"({"network": {"depth": 4, "width": 4}, "monte_carlo": {"trials": 1, "batch": 3}})",
                                   "x.json", "x");
  auto records = run_all(ex);
  // A second point of depth 2, as a depth sweep would produce.
  PointRecord shallow = records[0];
  shallow.index = 0;
  shallow.depth = 2;
  for (auto& v : shallow.mean) v.resize(2);
  for (auto& v : shallow.sem) v.resize(2);
  shallow.nonfinite_count.resize(2);
  shallow.grad_nonfinite_count.resize(2);
  records[0].index = 0;
  ex.points.push_back(ex.points[0]);
  ex.points[1].index = 1;
  records.push_back(records[0]);
  records[1].index = 1;
  records[0] = shallow;
  write_results(dir.path / "x.h5", ex, records, test_provenance());
  h5::Id f = h5::open_file(dir.path / "x.h5");
  const auto var = h5::read_doubles(f, "activation_var");
  REQUIRE(var.size() == 8);
  CHECK(std::isnan(var[2]));
  CHECK(std::isnan(var[3]));
  CHECK(!std::isnan(var[4 + 3]));
  const auto counts = h5::read_ints(f, "nonfinite_count");
  CHECK(counts[2] == -1);
  CHECK(counts[4 + 3] == 0);
  // The padding is declared, so netCDF readers (xarray) mask it.
  CHECK(h5::read_int_attribute(h5::open_dataset(f, "nonfinite_count"), "_FillValue") == -1);
  CHECK(fill_value(h5::open_dataset(f, "nonfinite_count")) == -1.0);
  CHECK(std::isnan(fill_value(h5::open_dataset(f, "activation_var"))));
}

TEST_CASE("a failed write leaves an existing result intact", "[results]") {
  TempDir dir;
  const Experiment ex = parse_experiment(R"({"network": {"depth": 2, "width": 4}, "monte_carlo": {"trials": 1,
                                           "batch": 3}})", "x.json", "x");
  const auto records = run_all(ex);
  const fs::path file = dir.path / "x.h5";
  write_results(file, ex, records, test_provenance());
  const auto size = fs::file_size(file);
  // Records that point outside the experiment make the writer fail after it created its file.
  auto bad = records;
  bad[0].index = 7;
  CHECK_THROWS(write_results(file, ex, bad, test_provenance()));
  CHECK(fs::file_size(file) == size);
  CHECK(read_records(file).size() == 1);
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
}

TEST_CASE("reading a file that is not a selfnorm result says so", "[results]") {
  TempDir dir;
  {
    h5::Id f = h5::create_file(dir.path / "other.h5");
    h5::write_attribute(f, "something", std::string("else"));
  }
  CHECK_THROWS_WITH(read_header(dir.path / "other.h5"), Catch::Contains("not a selfnorm result"));
  CHECK_THROWS_WITH(read_header(dir.path / "missing.h5"), Catch::Contains("cannot open"));
}

TEST_CASE("the reader takes every schema version it knows and names the others", "[results]") {
  TempDir dir;
  const Experiment ex = parse_experiment(R"({"network": {"depth": 2, "width": 4}, "monte_carlo": {"trials": 2,
                                           "batch": 3}})", "x.json", "x");
  const auto records = run_all(ex);
  const fs::path file = dir.path / "x.h5";
  write_results(file, ex, records, test_provenance());
  auto set_version = [&](std::int64_t version) {
    h5::Id f(H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose);
    REQUIRE(f.get() >= 0);
    h5::write_attribute(f, "schema_version", version);
  };
  // Version 1 files hold the same datasets without the netCDF metadata: resume and merge read them.
  for (std::int64_t v = kOldestReadableSchemaVersion; v <= kSchemaVersion; ++v) {
    INFO(v);
    set_version(v);
    const auto back = read_records(file);
    REQUIRE(back.size() == 1);
    const int s = static_cast<int>(Stat::activation_var);
    CHECK(back[0].mean[s] == records[0].mean[s]);
  }
  set_version(kSchemaVersion + 1);
  CHECK_THROWS_WITH(read_records(file), Catch::Contains("has schema version 3 (this selfnorm reads versions 1 to 2)"));
  set_version(0);
  CHECK_THROWS_WITH(read_records(file), Catch::Contains("has schema version 0"));
}

TEST_CASE("a file whose datasets disagree with its axes is refused, naming the file and the dataset", "[results]") {
  // merge and resume read files they did not write in this process (a hand-edited or partly
  // copied shard or checkpoint): sizes used to be trusted, and read past the ends of the arrays.
  TempDir dir;
  const Experiment ex = parse_experiment(R"({"network": {"depth": 2, "width": 4}, "monte_carlo": {"trials": 2,
                                           "batch": 3}})", "x.json", "x");
  const auto records = run_all(ex);
  const fs::path file = dir.path / "x.h5";
  auto altered = [&](const std::string& name, auto replace) {
    fs::remove(file);
    write_results(file, ex, records, test_provenance());
    h5::Id f(H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose);
    REQUIRE(f.get() >= 0);
    REQUIRE(H5Ldelete(f.get(), name.c_str(), H5P_DEFAULT) >= 0);
    replace(f.get());
  };
  const std::string where = file.string() + ": ";
  altered("point_depth", [](hid_t f) { h5::write_dataset(f, "point_depth", std::vector<std::int64_t>{99}, {1}); });
  CHECK_THROWS_WITH(read_records(file), where + "point_depth[0] is 99, outside the file's 2 layers (a damaged or "
                                                "altered result file)");
  altered("activation_var", [](hid_t f) { h5::write_dataset(f, "activation_var", std::vector<double>{1.0}, {1}); });
  CHECK_THROWS_WITH(read_records(file), Catch::StartsWith(where + "dataset activation_var holds 1 values, not the 2 "
                                                                  "of its shape [point, layer]"));
  altered("point_trials", [](hid_t f) { h5::write_dataset(f, "point_trials", std::vector<std::int64_t>{2, 2}, {2}); });
  CHECK_THROWS_WITH(read_records(file), Catch::StartsWith(where + "dataset point_trials holds 2 values, not the 1"));
  altered("point_config", [](hid_t f) { h5::write_dataset(f, "point_config", std::vector<std::string>{"{"}); });
  CHECK_THROWS_WITH(read_records(file), Catch::StartsWith(where + "point_config[0] is not a point's config ("));
  altered("point_depth", [](hid_t) {});
  CHECK_THROWS_WITH(read_records(file), Catch::StartsWith(where) && Catch::Contains("point_depth"));
  // A statistic's dataset gone: merged, it used to become NaN with exit status 0.
  altered("activation_var", [](hid_t) {});
  CHECK_THROWS_WITH(read_records(file),
                    Catch::StartsWith(where + "dataset activation_var is missing, though its points measured it"));
  // grad_weight_msq is left out where no point computed weight gradients, and reads back as NaN.
  fs::remove(file);
  write_results(file, ex, records, test_provenance());
  REQUIRE_FALSE(records[0].has_weight_gradients);
  CHECK(std::isnan(read_records(file)[0].mean[static_cast<int>(Stat::grad_weight_msq)][0]));
}

TEST_CASE("a GPU result names its device, GPU and device time, and the header reads them back", "[results]") {
  TempDir dir;
  const Experiment ex = with_device(parse_experiment(kGoldenConfig, "golden.json", "golden"), DeviceOptions{Device::cuda});
  Provenance p = test_provenance();
  p.device = "cuda";
  p.gpu_name = "NVIDIA H200 (compute capability 9.0)";
  p.gpu_seconds = 1.5;
  p.gpu_gemm_seconds = 1.25;
  const fs::path file = dir.path / "gpu.h5";
  write_results(file, ex, run_all(ex), p);
  {
    h5::Id f = h5::open_file(file);
    CHECK(h5::read_string_attribute(f, "device") == "cuda");
    CHECK(h5::read_string_attribute(f, "gpu_name") == p.gpu_name);
    for (const auto& [name, value] : {std::pair{"gpu_seconds", 1.5}, std::pair{"gpu_gemm_seconds", 1.25}}) {
      double read = 0.0;
      REQUIRE(h5::has_attribute(f, name));
      h5::Id attr(H5Aopen(f, name, H5P_DEFAULT), H5Aclose);
      REQUIRE(H5Aread(attr, H5T_NATIVE_DOUBLE, &read) >= 0);
      CHECK(read == value);
    }
  }
  const FileHeader h = read_header(file);
  CHECK(h.device == "cuda");
  CHECK(h.gpu_name == p.gpu_name);
  CHECK(h.config_hash == ex.hash);
}
