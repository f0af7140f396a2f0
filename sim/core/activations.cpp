#include "core/activations.hpp"

#include <algorithm>
#include <stdexcept>

namespace selfnorm {
namespace {

template <class A>
ActivationInfo info_of(std::vector<std::string_view> aliases = {}) {
  return {A::name, A::formula, std::span<const ParamInfo>(A::params.data(), A::params.size()),
          std::move(aliases)};
}

template <std::size_t I = 0>
Activation build(std::string_view name, std::span<const double> values) {
  if constexpr (I == std::variant_size_v<Activation>) {
    throw std::invalid_argument("unknown activation '" + std::string(name) + "'");
  } else {
    using A = std::variant_alternative_t<I, Activation>;
    if (A::name != name) return build<I + 1>(name, values);
    std::array<double, A::params.size()> v{};
    if (values.size() != v.size()) {
      throw std::invalid_argument(std::string(name) + " takes " + std::to_string(v.size()) +
                                  " parameters, got " + std::to_string(values.size()));
    }
    std::copy(values.begin(), values.end(), v.begin());
    return A::from(v);
  }
}

}  // namespace

const std::vector<ActivationInfo>& activation_catalog() {
  static const std::vector<ActivationInfo> catalog = {
      info_of<Relu>(),    info_of<Relu6>(),   info_of<LeakyRelu>(), info_of<Softplus>(),
      info_of<Elu>(),     info_of<Selu>(),    info_of<Celu>(),      info_of<Tanh>(),
      info_of<Sigmoid>(), info_of<Gelu>(),    info_of<Silu>({"swish"}), info_of<Identity>(),
  };
  return catalog;
}

const ActivationInfo* find_activation(std::string_view name) {
  for (const auto& info : activation_catalog()) {
    if (info.name == name) return &info;
    if (std::find(info.aliases.begin(), info.aliases.end(), name) != info.aliases.end()) return &info;
  }
  return nullptr;
}

const std::vector<std::string>& activation_param_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& info : activation_catalog()) {
      for (const auto& p : info.params) {
        if (std::find(out.begin(), out.end(), p.name) == out.end()) out.emplace_back(p.name);
      }
    }
    return out;
  }();
  return names;
}

std::vector<std::pair<std::string, std::string>> check_activation_params(std::string_view name,
                                                                         std::span<const double> values) {
  std::vector<std::pair<std::string, std::string>> problems;
  const ActivationInfo* info = find_activation(name);
  if (!info || values.size() != info->params.size()) return problems;
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      problems.emplace_back(std::string(info->params[i].name), "must be a finite number");
    }
  }
  if (!problems.empty()) return problems;
  if (info->name == "celu" && !(values[0] > 0.0)) {
    problems.emplace_back("alpha",
                          "must be > 0 (celu computes exp(x / alpha); as alpha -> 0 it tends to relu, "
                          "so use \"relu\" for that limit)");
  }
  if (info->name == "softplus" && !(values[0] > 0.0)) {
    problems.emplace_back("beta", "must be > 0 (softplus divides by beta)");
  }
  return problems;
}

Activation make_activation(std::string_view name, std::span<const double> values) {
  const ActivationInfo* info = find_activation(name);
  if (!info) throw std::invalid_argument("unknown activation '" + std::string(name) + "'");
  const auto problems = check_activation_params(info->name, values);
  if (!problems.empty()) {
    throw std::invalid_argument(std::string(info->name) + ": " + problems.front().first + " " +
                                problems.front().second);
  }
  return build(info->name, values);
}

std::string_view activation_name(const Activation& activation) {
  return std::visit([](const auto& a) { return std::decay_t<decltype(a)>::name; }, activation);
}

std::vector<double> activation_values(const Activation& activation) {
  return std::visit(
      [](const auto& a) {
        const auto v = a.values();
        return std::vector<double>(v.begin(), v.end());
      },
      activation);
}

void evaluate(const Activation& activation, double x, double& y, double& dy) {
  std::visit([&](const auto& a) { a.eval(x, y, dy); }, activation);
}

double activation_value(const Activation& activation, double x) {
  double y, dy;
  evaluate(activation, x, y, dy);
  return y;
}

double activation_slope(const Activation& activation, double x) {
  double y, dy;
  evaluate(activation, x, y, dy);
  return dy;
}

}  // namespace selfnorm
