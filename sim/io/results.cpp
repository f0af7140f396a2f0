#include "io/results.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>

#include "core/theory.hpp"
#include "io/hdf5.hpp"

namespace selfnorm::io {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Flushes a folder's entries (a rename) to disk. Some file systems do not allow opening folders;
// the rename has happened either way, so failures are ignored.
void fsync_folder(const fs::path& folder) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// The prefix of every temporary name of `path`; the suffix is "<pid>-<random>".
std::string temporary_prefix(const fs::path& path) { return "." + path.filename().string() + ".tmp-"; }

fs::path temporary_name(const fs::path& path) {
  std::random_device rd;
  const std::string tag = std::to_string(::getpid()) + "-" + std::to_string(rd() % 1000000);
  return path.parent_path() / (temporary_prefix(path) + tag);
}

// What a write error means for the user, and what would work.
std::string describe_errno(int code) {
  switch (code) {
    case ENOSPC:
      return "no space left on device; free some space on that file system, or write elsewhere with -o";
    case EDQUOT:
      return "disk quota exceeded; free some of your space, or write elsewhere with -o";
    case EROFS:
      return "the file system is read-only; write elsewhere with -o";
    case EACCES:
    case EPERM:
      return "permission denied; write to a folder you may write to, with -o";
    case ENOENT:
      return "the folder does not exist (or was removed during the run); create it, or write elsewhere with -o";
    case EIO:
      return "input/output error: the disk or the network file system failed; check it, or write elsewhere with -o";
    case 0:
      return "the cause is unknown; check the file system, or write elsewhere with -o";
    default:
      return std::string(std::strerror(code)) + "; write elsewhere with -o";
  }
}

// Writes one varied key as a [point] dataset with the narrowest type that holds its values. Numbers
// get units "1" (every config parameter is a pure number or a count), and NaN, declared as the fill
// value, where a parameter does not apply at a point (relu has no alpha). Strings get no units.
h5::Id write_varied(hid_t file, const std::string& name, const std::vector<json>& values) {
  bool all_int = true;
  bool all_number = true;
  bool all_string = true;
  for (const auto& v : values) {
    all_int = all_int && (v.is_number_integer() || v.is_number_unsigned());
    all_number = all_number && (v.is_number() || v.is_null());
    all_string = all_string && (v.is_string() || v.is_null());
  }
  const hsize_t n = values.size();
  if (all_int) {
    std::vector<std::int64_t> data;
    for (const auto& v : values) data.push_back(v.get<std::int64_t>());
    h5::Id ds = h5::write_dataset(file, name, data, {n});
    h5::write_attribute(ds, "units", std::string("1"));
    return ds;
  }
  if (all_number) {
    std::vector<double> data;
    for (const auto& v : values) data.push_back(v.is_null() ? kNaN : v.get<double>());
    h5::Id ds = h5::write_dataset(file, name, data, {n}, kNaN);
    h5::write_attribute(ds, "units", std::string("1"));
    return ds;
  }
  std::vector<std::string> data;
  for (const auto& v : values) data.push_back(all_string ? (v.is_null() ? "" : v.get<std::string>()) : v.dump());
  return h5::write_dataset(file, name, data);
}

// Long name and definition of a per-point prediction (core/theory.hpp, DepthScales).
std::pair<std::string, std::string> describe_point_prediction(const std::string& name) {
  if (name == "theory_q_star") {
    return {"mean-field fixed point q* of the pre-activation variance",
            "fixed point of q -> s_w^2 E[f(z)^2] + s_b^2, z ~ N(0, q)"};
  }
  if (name == "theory_chi_star") {
    return {"mean-field gradient growth per layer chi at q*", "chi = s_w^2 E[f'(z)^2], z ~ N(0, q*)"};
  }
  if (name == "theory_xi_q") {
    return {"mean-field depth scale xi_q of the approach to q*, in layers",
            "xi_q = -1 / log|dq_{l+1}/dq_l| at q*"};
  }
  if (name == "theory_xi_c") {
    return {"mean-field depth scale xi_c of input correlations, in layers",
            "xi_c = -1 / log chi_c, chi_c the slope of the correlation map at its stable fixed point c*"};
  }
  return {"mean-field " + name.substr(std::string("theory_").size()), "mean-field prediction"};
}

// The result file's bytes, built in memory.
std::vector<unsigned char> build_image(const fs::path& path, const Experiment& ex,
                                       const std::vector<PointRecord>& records, const Provenance& prov,
                                       const std::optional<ShardInfo>& shard) {
  h5::Id file = h5::create_memory_file(path.string());
  for (std::size_t p = 0; p < records.size(); ++p) {
    const std::int64_t i = records[p].index;
    if (i < 0 || i >= static_cast<std::int64_t>(ex.points.size()) || (p > 0 && i <= records[p - 1].index)) {
      throw std::invalid_argument("write_results: point " + std::to_string(i) + " is not a point of the experiment "
                                  "in increasing order");
    }
  }
  const auto P = static_cast<hsize_t>(records.size());
  int depth_max = 0;
  std::int64_t trials_max = 0;
  bool any_per_trial = false;
  bool any_weight_gradients = false;
  for (const auto& r : records) {
    depth_max = std::max(depth_max, r.depth);
    trials_max = std::max(trials_max, r.trials);
    any_per_trial = any_per_trial || !r.per_trial[0].empty();
    any_weight_gradients = any_weight_gradients || r.has_weight_gradients;
  }
  const auto L = static_cast<hsize_t>(depth_max);
  const auto T = static_cast<hsize_t>(trials_max);

  // Root attributes: what this is, what produced it, from which config.
  h5::write_attribute(file, "schema", std::string(kSchemaName));
  h5::write_attribute(file, "schema_version", kSchemaVersion);
  h5::write_attribute(file, "Conventions", std::string("CF-1.8"));
  h5::write_attribute(file, "title", "selfnorm results: " + ex.name);
  h5::write_attribute(file, "experiment", ex.name);
  h5::write_attribute(file, "config", ex.resolved.dump(2));
  h5::write_attribute(file, "config_hash", ex.hash);
  h5::write_attribute(file, "seed", static_cast<std::int64_t>(ex.seed));
  h5::write_attribute(file, "point_total", static_cast<std::int64_t>(ex.points.size()));
  h5::write_attribute(file, "program_version", prov.program_version);
  h5::write_attribute(file, "git_commit", prov.git_commit);
  h5::write_attribute(file, "compiler", prov.compiler);
  h5::write_attribute(file, "build_type", prov.build_type);
  h5::write_attribute(file, "gemm_backend", prov.gemm_backend);
  h5::write_attribute(file, "threads", prov.threads);
  h5::write_attribute(file, "host", prov.host);
  h5::write_attribute(file, "created_utc", prov.created_utc);
  h5::write_attribute(file, "command_line", prov.command_line);
  h5::write_attribute(file, "device", prov.device);
  if (prov.device == "cuda") {
    h5::write_attribute(file, "gpu_name", prov.gpu_name);
    h5::write_attribute(file, "gpu_seconds", prov.gpu_seconds);
    h5::write_attribute(file, "gpu_gemm_seconds", prov.gpu_gemm_seconds);
  }
  std::vector<std::string> varied_keys;
  for (const auto& v : ex.varied) varied_keys.push_back(v.key);
  h5::write_attribute(file, "varied_keys", varied_keys);
  if (!ex.grid_shape.empty()) {
    h5::write_attribute(file, "grid_shape", ex.grid_shape);
    // Each axis is named by the dataset of its first key (a zip's first key, "activation" for a
    // list of activations); the other keys on the axis say so in their grid_axis attribute.
    std::vector<std::string> axes;
    for (std::size_t a = 0; a < ex.grid_shape.size(); ++a) {
      const auto it = std::find_if(ex.varied.begin(), ex.varied.end(),
                                   [&](const VariedKey& v) { return v.axis == static_cast<std::int64_t>(a); });
      axes.push_back(it == ex.varied.end() ? std::string() : it->dataset);
    }
    h5::write_attribute(file, "grid_axes", axes);
  }
  if (shard) {
    h5::write_attribute(file, "shard_index", shard->index);
    h5::write_attribute(file, "shard_count", shard->count);
  }

  // Coordinates.
  std::vector<std::int64_t> point_index, layer_index, trial_index;
  for (const auto& r : records) point_index.push_back(r.index);
  for (hsize_t l = 1; l <= L; ++l) layer_index.push_back(static_cast<std::int64_t>(l));
  for (hsize_t t = 0; t < T; ++t) trial_index.push_back(static_cast<std::int64_t>(t));
  h5::Id point = h5::write_dataset(file, "point", point_index, {P});
  h5::write_attribute(point, "long_name", std::string("configuration point index in the experiment"));
  h5::write_attribute(point, "units", std::string("1"));
  h5::make_dimension_scale(point, "point");
  h5::Id layer = h5::write_dataset(file, "layer", layer_index, {L});
  h5::write_attribute(layer, "long_name", std::string("layer l (1 = first hidden layer, after W_1)"));
  h5::write_attribute(layer, "units", std::string("1"));
  h5::make_dimension_scale(layer, "layer");
  h5::Id trial;
  if (any_per_trial) {
    trial = h5::write_dataset(file, "trial", trial_index, {T});
    h5::write_attribute(trial, "long_name", std::string("independent random network"));
    h5::write_attribute(trial, "units", std::string("1"));
    h5::make_dimension_scale(trial, "trial");
  }
  // Every other dataset over points names the varied keys in its CF `coordinates` attribute
  // (CF 1.8, section 5), which makes them coordinates on `point` for netCDF readers and xarray.
  std::string coordinates;
  for (const auto& v : ex.varied) coordinates += (coordinates.empty() ? "" : " ") + v.dataset;
  auto over_points = [&](hid_t ds) {
    h5::attach_dimension_scale(ds, point, 0);
    if (!coordinates.empty()) h5::write_attribute(ds, "coordinates", coordinates);
  };

  // Per-point descriptors.
  for (std::size_t k = 0; k < ex.varied.size(); ++k) {
    std::vector<json> values;
    for (const auto& r : records) values.push_back(ex.points[static_cast<std::size_t>(r.index)].varied_values[k]);
    h5::Id ds = write_varied(file, ex.varied[k].dataset, values);
    h5::write_attribute(ds, "config_key", ex.varied[k].key);
    h5::write_attribute(ds, "long_name", "config " + ex.varied[k].key);
    if (ex.varied[k].axis >= 0) h5::write_attribute(ds, "grid_axis", ex.varied[k].axis);
    h5::attach_dimension_scale(ds, point, 0);
  }
  {
    std::vector<std::int64_t> depth, trials, first;
    std::vector<std::string> configs, matmuls;
    for (const auto& r : records) {
      matmuls.push_back(r.matmul);
      depth.push_back(r.depth);
      trials.push_back(r.trials);
      first.push_back(r.first_nonfinite_layer);
      configs.push_back(ex.points[static_cast<std::size_t>(r.index)].resolved.dump());
    }
    h5::Id d = h5::write_dataset(file, "point_depth", depth, {P});
    h5::write_attribute(d, "long_name", std::string("depth L of the point's network"));
    h5::write_attribute(d, "units", std::string("1"));
    over_points(d);
    h5::Id t = h5::write_dataset(file, "point_trials", trials, {P});
    h5::write_attribute(t, "long_name", std::string("trials T averaged at the point"));
    h5::write_attribute(t, "units", std::string("1"));
    over_points(t);
    h5::Id f = h5::write_dataset(file, "first_nonfinite_layer", first, {P});
    h5::write_attribute(f, "long_name", std::string("first layer with an inf or NaN pre-activation or activation in any trial"));
    h5::write_attribute(f, "units", std::string("1"));
    h5::write_attribute(f, "definition", std::string("1-based layer index; 0 when every layer stayed finite"));
    over_points(f);
    h5::Id c = h5::write_dataset(file, "point_config", configs);
    h5::write_attribute(c, "long_name", std::string("the point's resolved config (JSON)"));
    over_points(c);
    h5::Id m = h5::write_dataset(file, "point_matmul", matmuls);
    h5::write_attribute(m, "long_name", std::string("how the point's matrix products were computed"));
    h5::write_attribute(m, "definition",
                        std::string("fma: float32 or float64 FMA on the CPU's vector units; bf16x6: float32 on the "
                                    "CPU's AMX units, six bfloat16 products per float32 product, as accurate as fma; "
                                    "cublas, cublas-tf32: on an NVIDIA GPU, float32/float64 or TF32"));
    over_points(m);
  }

  // Statistics.
  for (const auto& info : stat_catalog()) {
    const int s = static_cast<int>(info.stat);
    if (info.stat == Stat::grad_weight_msq && !any_weight_gradients) continue;
    std::vector<double> mean(P * L, kNaN), sem(P * L, kNaN), per_trial;
    if (any_per_trial) per_trial.assign(P * T * L, kNaN);
    for (hsize_t p = 0; p < P; ++p) {
      const PointRecord& r = records[p];
      if (info.stat == Stat::grad_weight_msq && !r.has_weight_gradients) continue;
      for (int l = 0; l < r.depth; ++l) {
        mean[p * L + static_cast<hsize_t>(l)] = r.mean[s][static_cast<std::size_t>(l)];
        sem[p * L + static_cast<hsize_t>(l)] = r.sem[s][static_cast<std::size_t>(l)];
      }
      if (any_per_trial && !r.per_trial[s].empty()) {
        for (std::int64_t t = 0; t < r.trials; ++t) {
          for (int l = 0; l < r.depth; ++l) {
            per_trial[(p * T + static_cast<hsize_t>(t)) * L + static_cast<hsize_t>(l)] =
                r.per_trial[s][static_cast<std::size_t>(t * r.depth + l)];
          }
        }
      }
    }
    const std::string name(info.name);
    h5::Id ds = h5::write_dataset(file, name, mean, {P, L}, kNaN);
    h5::write_attribute(ds, "long_name", std::string(info.long_name));
    h5::write_attribute(ds, "units", std::string(info.units));
    h5::write_attribute(ds, "definition", std::string(info.definition) + "; mean over trials");
    over_points(ds);
    h5::attach_dimension_scale(ds, layer, 1);
    h5::Id e = h5::write_dataset(file, name + "_sem", sem, {P, L}, kNaN);
    h5::write_attribute(e, "long_name", "standard error of " + name);
    h5::write_attribute(e, "units", std::string(info.units));
    h5::write_attribute(e, "definition",
                        "sample standard deviation over trials / sqrt(trials) of " + name + "; NaN for 1 trial");
    over_points(e);
    h5::attach_dimension_scale(e, layer, 1);
    if (any_per_trial) {
      h5::Id pt = h5::write_dataset(file, name + "_per_trial", per_trial, {P, T, L}, kNaN);
      h5::write_attribute(pt, "long_name", std::string(info.long_name) + ", each trial");
      h5::write_attribute(pt, "units", std::string(info.units));
      h5::write_attribute(pt, "definition", std::string(info.definition));
      over_points(pt);
      h5::attach_dimension_scale(pt, trial, 1);
      h5::attach_dimension_scale(pt, layer, 2);
    }
  }
  auto write_counts = [&](const std::string& name, auto member, const std::string& long_name,
                          const std::string& note = "") {
    std::vector<std::int64_t> data(P * L, -1);
    for (hsize_t p = 0; p < P; ++p) {
      const auto& v = records[p].*member;
      for (std::size_t l = 0; l < v.size(); ++l) data[p * L + l] = v[l];
    }
    h5::Id ds = h5::write_dataset(file, name, data, {P, L}, std::int64_t{-1});
    h5::write_attribute(ds, "long_name", long_name);
    h5::write_attribute(ds, "units", std::string("1"));
    h5::write_attribute(ds, "definition", long_name + ", summed over trials; -1 beyond the point's depth" + note);
    over_points(ds);
    h5::attach_dimension_scale(ds, layer, 1);
  };
  write_counts("nonfinite_count", &PointRecord::nonfinite_count,
               "entries of h_l or x_l that are inf or NaN");
  write_counts("grad_nonfinite_count", &PointRecord::grad_nonfinite_count, "entries of dL/dh_l that are inf or NaN",
               "; it can be 0 in a trial whose forward pass blew up (relu' of NaN is 0), whose gradient statistics "
               "are NaN all the same (first_nonfinite_layer)");

  // Mean-field predictions, beside the statistics they predict.
  std::vector<std::string> layer_names, point_names;
  for (const auto& r : records) {
    for (const auto& [name, v] : r.theory_layers) {
      if (std::find(layer_names.begin(), layer_names.end(), name) == layer_names.end()) layer_names.push_back(name);
    }
    for (const auto& [name, v] : r.theory_point) {
      if (std::find(point_names.begin(), point_names.end(), name) == point_names.end()) point_names.push_back(name);
    }
  }
  for (const auto& name : layer_names) {
    std::vector<double> data(P * L, kNaN);
    for (hsize_t p = 0; p < P; ++p) {
      for (const auto& [n, v] : records[p].theory_layers) {
        if (n != name) continue;
        for (std::size_t l = 0; l < v.size(); ++l) data[p * L + l] = v[l];
      }
    }
    h5::Id ds = h5::write_dataset(file, name, data, {P, L}, kNaN);
    const std::string stat = name.substr(std::string("theory_").size());
    h5::write_attribute(ds, "long_name", "mean-field prediction of " + stat);
    h5::write_attribute(ds, "units", std::string("1"));
    h5::write_attribute(ds, "definition",
                        stat == "chi" ? std::string("s_w^2 (n_l / n_{l-1}) E[f'(z_l)^2] (with alpha dropout times "
                                                    "q a^2, a kept unit's slope being a f'): predicted growth of "
                                                    "grad_activation_msq from layer l to layer l-1")
                                      : "infinite-width recursion (core/theory.hpp) for " + stat);
    over_points(ds);
    h5::attach_dimension_scale(ds, layer, 1);
  }
  for (const auto& name : point_names) {
    std::vector<double> data(P, kNaN);
    for (hsize_t p = 0; p < P; ++p) {
      for (const auto& [n, v] : records[p].theory_point) {
        if (n == name) data[p] = v;
      }
    }
    const auto [long_name, definition] = describe_point_prediction(name);
    h5::Id ds = h5::write_dataset(file, name, data, {P}, kNaN);
    h5::write_attribute(ds, "long_name", long_name);
    h5::write_attribute(ds, "units", std::string("1"));
    h5::write_attribute(ds, "definition",
                        definition + " (Poole et al. 2016; Schoenholz et al. 2017), for the point's activation, "
                                     "s_w^2 and s_b^2; NaN where undefined");
    over_points(ds);
  }
  trial.reset();
  layer.reset();
  point.reset();
  std::vector<unsigned char> image = h5::file_image(file);
  file.close();
  return image;
}

// Writes `bytes` to a new file `tmp` and flushes it to disk; errors name `shown` (the final name).
void write_new_file(const fs::path& tmp, const std::vector<unsigned char>& bytes, const fs::path& shown) {
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) throw WriteError(shown, errno, "create the new file");
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      ::close(fd);
      throw WriteError(shown, err, "write the result file");
    }
    done += static_cast<std::size_t>(n);
  }
  // Some file systems (NFS, full disks with delayed allocation) report a failed write only here.
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    throw WriteError(shown, err, "flush the new file to disk (fsync)");
  }
  if (::close(fd) != 0) throw WriteError(shown, errno, "close the new file");
}

}  // namespace

void add_predictions(PointRecord& record, const PointSpec& spec) {
  const theory::LayerPrediction p = theory::predict_layers(spec);
  record.theory_layers = {
      {"theory_preactivation_mean", p.preactivation_mean},
      {"theory_preactivation_var", p.preactivation_var},
      {"theory_activation_mean", p.activation_mean},
      {"theory_activation_var", p.activation_var},
      {"theory_activation_msq", p.activation_msq},
      {"theory_grad_activation_msq", p.grad_activation_msq},
      {"theory_grad_preactivation_msq", p.grad_preactivation_msq},
      {"theory_chi", p.chi},
  };
  if (spec.monte_carlo.weight_gradients) record.theory_layers.emplace_back("theory_grad_weight_msq", p.grad_weight_msq);
  double q_star = kNaN, chi = kNaN, xi_q = kNaN, xi_c = kNaN;
  const auto& w = spec.network.widths;
  const bool uniform = std::all_of(w.begin(), w.end(), [&](std::int64_t n) { return n == w.front(); });
  // depth_scales works with z ~ N(0, q): a weight mean or a bias mean moves the pre-activations'
  // mean away from 0, and alpha dropout changes the map; their depth scales are not defined here.
  if (uniform && spec.init.weight_mean == 0.0 && spec.init.bias_mean == 0.0 && !spec.alpha_dropout.enabled()) {
    const theory::DepthScales d = theory::depth_scales(
        spec.activation, theory::sigma_w2(spec.init, w.front(), w.front()), spec.init.bias_variance);
    if (d.found) {
      q_star = d.q_star;
      chi = d.chi;
      xi_q = d.xi_q;
      xi_c = d.xi_c;
    }
  }
  record.theory_point = {{"theory_q_star", q_star}, {"theory_chi_star", chi}, {"theory_xi_q", xi_q},
                         {"theory_xi_c", xi_c}};
}

PointRecord make_record(std::int64_t index, const PointResult& result, bool keep_per_trial) {
  PointRecord r;
  r.index = index;
  r.depth = result.depth;
  r.trials = result.trials;
  r.has_weight_gradients = result.has_weight_gradients;
  r.matmul = result.matmul;
  for (const auto& info : stat_catalog()) {
    const int s = static_cast<int>(info.stat);
    for (int l = 1; l <= result.depth; ++l) {
      const bool have = result.has(info.stat);
      r.mean[s].push_back(have ? result.mean(info.stat, l) : kNaN);
      r.sem[s].push_back(have ? result.sem(info.stat, l) : kNaN);
    }
    if (keep_per_trial) r.per_trial[s] = result.per_trial[s];
  }
  r.nonfinite_count = result.nonfinite_count;
  r.grad_nonfinite_count = result.grad_nonfinite_count;
  r.first_nonfinite_layer = result.first_nonfinite_layer;
  return r;
}

WriteError::WriteError(const fs::path& path, int error_code, const std::string& action, const std::string& detail)
    : std::runtime_error(path.string() + ": cannot " + action + ": " + describe_errno(error_code) +
                         (detail.empty() ? std::string() : " [" + detail + "]")),
      path_(path),
      error_code_(error_code) {}

void write_results(const fs::path& path, const Experiment& experiment, const std::vector<PointRecord>& records,
                   const Provenance& provenance, const std::optional<ShardInfo>& shard) {
  const fs::path folder = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  const fs::path tmp = temporary_name(path.parent_path().empty() ? fs::path(".") / path : path);
  // HDF5 builds the file in memory; only plain write(2) calls touch the disk, so a disk error is
  // reported with its errno and nothing of HDF5's state is left behind.
  const std::vector<unsigned char> image = build_image(path, experiment, records, provenance, shard);
  try {
    write_new_file(tmp, image, path);
    std::error_code ec;
    fs::rename(tmp, path, ec);
    if (ec) throw WriteError(path, ec.value(), "move the new file to its final name");
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  fsync_folder(folder);
}

int remove_stale_temporaries(const fs::path& output) {
  const fs::path folder = output.parent_path().empty() ? fs::path(".") : output.parent_path();
  const std::string prefix = temporary_prefix(output);
  int removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename().string().rfind(prefix, 0) != 0) continue;
    std::error_code rm;
    if (fs::remove(it->path(), rm)) ++removed;
  }
  return removed;
}

FileHeader read_header(const fs::path& path) {
  h5::Id file = h5::open_file(path);
  FileHeader h;
  if (!h5::has_attribute(file, "schema")) {
    throw std::runtime_error(path.string() + " is an HDF5 file but not a selfnorm result (no 'schema' attribute)");
  }
  h.schema = h5::read_string_attribute(file, "schema");
  if (h.schema != kSchemaName) {
    throw std::runtime_error(path.string() + " has schema '" + h.schema + "', not '" + kSchemaName + "'");
  }
  h.schema_version = h5::read_int_attribute(file, "schema_version");
  h.config = h5::read_string_attribute(file, "config");
  h.config_hash = h5::read_string_attribute(file, "config_hash");
  h.point_total = h5::read_int_attribute(file, "point_total");
  if (h5::has_attribute(file, "shard_count")) {
    h.shard = ShardInfo{h5::read_int_attribute(file, "shard_index"), h5::read_int_attribute(file, "shard_count")};
  }
  if (h5::has_attribute(file, "device")) h.device = h5::read_string_attribute(file, "device");
  if (h5::has_attribute(file, "gpu_name")) h.gpu_name = h5::read_string_attribute(file, "gpu_name");
  if (h5::has_attribute(file, "gemm_backend")) h.gemm_backend = h5::read_string_attribute(file, "gemm_backend");
  if (h5::has_attribute(file, "threads")) h.threads = h5::read_int_attribute(file, "threads");
  h.per_trial = h5::exists(file, "trial");
  if (h5::has_attribute(file, "program_version")) h.program_version = h5::read_string_attribute(file, "program_version");
  if (h5::has_attribute(file, "git_commit")) h.git_commit = h5::read_string_attribute(file, "git_commit");
  return h;
}

std::string per_trial_setting(bool per_trial) {
  return std::string("output.per_trial ") + (per_trial ? "true" : "false");
}

void name_earlier(Provenance& provenance, const std::vector<FileHeader>& earlier) {
  // The values of a "; "-separated list (a merged or resumed file's attribute is one).
  auto values_of = [](const std::string& list) {
    std::vector<std::string> out;
    for (std::size_t start = 0; start <= list.size();) {
      const std::size_t end = std::min(list.find("; ", start), list.size());
      if (end > start) out.push_back(list.substr(start, end - start));
      start = end + 2;
    }
    return out;
  };
  auto name_also = [&](std::string& into, const std::string& list) {
    std::vector<std::string> known = values_of(into);
    for (const std::string& value : values_of(list)) {
      if (std::find(known.begin(), known.end(), value) != known.end()) continue;
      known.push_back(value);
      into += (into.empty() ? "" : "; ") + value;
    }
  };
  for (const auto& h : earlier) {
    name_also(provenance.program_version, h.program_version);
    name_also(provenance.git_commit, h.git_commit);
    name_also(provenance.gemm_backend, h.gemm_backend);
    if (h.threads != provenance.threads) provenance.threads = -1;
  }
}

namespace {
std::vector<PointRecord> read_records_of(const fs::path& path);
}  // namespace

std::vector<PointRecord> read_records(const fs::path& path, FileHeader* header_out) {
  const FileHeader header = read_header(path);
  if (header_out) *header_out = header;
  if (header.schema_version < kOldestReadableSchemaVersion || header.schema_version > kSchemaVersion) {
    throw std::runtime_error(path.string() + " has schema version " + std::to_string(header.schema_version) +
                             " (this selfnorm reads versions " + std::to_string(kOldestReadableSchemaVersion) +
                             " to " + std::to_string(kSchemaVersion) + "); read it with the selfnorm that wrote it");
  }
  try {
    return read_records_of(path);
  } catch (const std::exception& e) {
    throw std::runtime_error(path.string() + ": " + e.what() + " (a damaged or altered result file)");
  }
}

namespace {

// Throws unless `name` holds `expected` values, as the file's point, trial and layer axes make it.
template <class V>
void check_size(const V& values, std::size_t expected, const std::string& name, const std::string& shape) {
  if (values.size() != expected) {
    throw std::runtime_error("dataset " + name + " holds " + std::to_string(values.size()) + " values, not the " +
                             std::to_string(expected) + " of its shape " + shape);
  }
}

std::vector<PointRecord> read_records_of(const fs::path& path) {
  h5::Id file = h5::open_file(path);
  const auto index = h5::read_ints(file, "point");
  const auto depth = h5::read_ints(file, "point_depth");
  const auto trials = h5::read_ints(file, "point_trials");
  const auto first = h5::read_ints(file, "first_nonfinite_layer");
  const auto configs = h5::read_strings(file, "point_config");
  const auto matmuls = h5::exists(file, "point_matmul") ? h5::read_strings(file, "point_matmul")
                                                        : std::vector<std::string>(configs.size());
  const auto L = static_cast<std::size_t>(h5::read_ints(file, "layer").size());
  const bool per_trial = h5::exists(file, "trial");
  const std::size_t T = per_trial ? h5::read_ints(file, "trial").size() : 0;
  const auto nonfinite = h5::read_ints(file, "nonfinite_count");
  const auto grad_nonfinite = h5::read_ints(file, "grad_nonfinite_count");
  // Every size is checked against the axes before any is used as an index.
  const std::size_t P = index.size();
  check_size(depth, P, "point_depth", "[point]");
  check_size(trials, P, "point_trials", "[point]");
  check_size(first, P, "first_nonfinite_layer", "[point]");
  check_size(configs, P, "point_config", "[point]");
  check_size(matmuls, P, "point_matmul", "[point]");
  check_size(nonfinite, P * L, "nonfinite_count", "[point, layer]");
  check_size(grad_nonfinite, P * L, "grad_nonfinite_count", "[point, layer]");
  for (std::size_t p = 0; p < P; ++p) {
    if (depth[p] < 1 || static_cast<std::size_t>(depth[p]) > L) {
      throw std::runtime_error("point_depth[" + std::to_string(p) + "] is " + std::to_string(depth[p]) +
                               ", outside the file's " + std::to_string(L) + " layers");
    }
    if (trials[p] < 1 || (per_trial && static_cast<std::size_t>(trials[p]) > T)) {
      throw std::runtime_error("point_trials[" + std::to_string(p) + "] is " + std::to_string(trials[p]) +
                               (per_trial ? ", outside the file's " + std::to_string(T) + " trials" : ""));
    }
  }

  std::vector<PointRecord> records(P);
  for (std::size_t p = 0; p < P; ++p) {
    PointRecord& r = records[p];
    r.index = index[p];
    r.depth = static_cast<int>(depth[p]);
    r.trials = trials[p];
    r.first_nonfinite_layer = static_cast<int>(first[p]);
    r.matmul = matmuls[p];
    try {
      r.has_weight_gradients = json::parse(configs[p]).at("monte_carlo").at("weight_gradients").get<bool>();
    } catch (const json::exception& e) {
      throw std::runtime_error("point_config[" + std::to_string(p) + "] is not a point's config (" + e.what() + ")");
    }
    for (std::size_t l = 0; l < static_cast<std::size_t>(r.depth); ++l) {
      r.nonfinite_count.push_back(nonfinite[p * L + l]);
      r.grad_nonfinite_count.push_back(grad_nonfinite[p * L + l]);
    }
  }
  for (const auto& info : stat_catalog()) {
    const int s = static_cast<int>(info.stat);
    const std::string name(info.name);
    if (!h5::exists(file, name)) {
      // Only grad_weight_msq is left out, and only where no point computed weight gradients.
      const bool measured = info.stat != Stat::grad_weight_msq ||
                            std::any_of(records.begin(), records.end(), [](const PointRecord& r) {
                              return r.has_weight_gradients;
                            });
      if (measured) throw std::runtime_error("dataset " + name + " is missing, though its points measured it");
      for (auto& r : records) {
        r.mean[s].assign(static_cast<std::size_t>(r.depth), kNaN);
        r.sem[s].assign(static_cast<std::size_t>(r.depth), kNaN);
      }
      continue;
    }
    const auto mean = h5::read_doubles(file, name);
    const auto sem = h5::read_doubles(file, name + "_sem");
    check_size(mean, P * L, name, "[point, layer]");
    check_size(sem, P * L, name + "_sem", "[point, layer]");
    std::vector<double> pt;
    if (per_trial) {
      pt = h5::read_doubles(file, name + "_per_trial");
      check_size(pt, P * T * L, name + "_per_trial", "[point, trial, layer]");
    }
    for (std::size_t p = 0; p < records.size(); ++p) {
      PointRecord& r = records[p];
      for (std::size_t l = 0; l < static_cast<std::size_t>(r.depth); ++l) {
        r.mean[s].push_back(mean[p * L + l]);
        r.sem[s].push_back(sem[p * L + l]);
      }
      if (per_trial) {
        for (std::size_t t = 0; t < static_cast<std::size_t>(r.trials); ++t) {
          for (std::size_t l = 0; l < static_cast<std::size_t>(r.depth); ++l) {
            r.per_trial[s].push_back(pt[(p * T + t) * L + l]);
          }
        }
      }
    }
  }
  // Mean-field predictions: every theory_* dataset, per layer or per point.
  std::vector<std::string> names;
  for (const auto& n : h5::list_names(file)) {
    if (n.rfind("theory_", 0) == 0) names.push_back(n);
  }
  for (const auto& name : names) {
    const auto values = h5::read_doubles(file, name);
    const auto shape = h5::dataset_shape(h5::open_dataset(file, name));
    if (shape.size() == 2) {
      check_size(values, P * L, name, "[point, layer]");
    } else {
      check_size(values, P, name, "[point]");
    }
    for (std::size_t p = 0; p < records.size(); ++p) {
      PointRecord& r = records[p];
      if (shape.size() == 2) {
        std::vector<double> v(values.begin() + static_cast<std::ptrdiff_t>(p * L),
                              values.begin() + static_cast<std::ptrdiff_t>(p * L + static_cast<std::size_t>(r.depth)));
        r.theory_layers.emplace_back(name, std::move(v));
      } else {
        r.theory_point.emplace_back(name, values[p]);
      }
    }
  }
  return records;
}

}  // namespace

}  // namespace selfnorm::io
