#include "cli/theory_command.hpp"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <initializer_list>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/errors.hpp"
#include "cli/units.hpp"
#include "core/engine.hpp"
#include "core/theory.hpp"
#include "io/config.hpp"

namespace selfnorm::cli {

using json = nlohmann::ordered_json;

namespace {

Activation build_activation(const TheoryArgs& args) {
  const ActivationInfo* info = find_activation(args.activation);
  if (!info) throw UsageError("--activation " + args.activation + " is not an activation; see 'selfnorm activations'");
  std::vector<double> values;
  for (const auto& p : info->params) values.push_back(p.default_value);
  std::vector<std::string> given(info->params.size());  // the option that set each parameter
  auto set = [&](const std::string& name, double v, const std::string& option) {
    for (std::size_t i = 0; i < info->params.size(); ++i) {
      if (info->params[i].name == name) {
        if (!given[i].empty()) {
          throw UsageError(name + " is given twice, by " + given[i] + " and by " + option + "; give it once");
        }
        values[i] = v;
        given[i] = option;
        return;
      }
    }
    std::string known;
    for (const auto& p : info->params) known += (known.empty() ? "" : ", ") + std::string(p.name);
    throw UsageError(std::string(info->name) + " has no parameter '" + name + "'" +
                     (known.empty() ? " (it has none)" : " (its parameters: " + known + ")"));
  };
  if (args.alpha) set("alpha", *args.alpha, "--alpha " + format_shortest(*args.alpha));
  if (args.lambda) set("lambda", *args.lambda, "--lambda " + format_shortest(*args.lambda));
  for (const auto& p : args.params) {
    const auto eq = p.find('=');
    if (eq == std::string::npos) throw UsageError("--param " + p + " is not NAME=VALUE");
    const std::string text = p.substr(eq + 1);
    char* end = nullptr;
    errno = 0;
    const double value = std::strtod(text.c_str(), &end);
    if (text.empty() || end != text.c_str() + text.size() || std::isspace(static_cast<unsigned char>(text[0]))) {
      throw UsageError("--param " + p + ": '" + text + "' is not a number");
    }
    if (errno == ERANGE && std::abs(value) > 1.0) {
      throw UsageError("--param " + p + ": " + text + " is out of the range of a double (about 1.8e308)");
    }
    set(p.substr(0, eq), value, "--param " + p);
  }
  try {
    return make_activation(info->name, values);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
}

json number(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

json eigen_json(const std::array<std::complex<double>, 2>& e) {
  json out = json::array();
  for (const auto& z : e) {
    if (z.imag() == 0.0) {
      out.push_back(z.real());
    } else {
      out.push_back({{"re", z.real()}, {"im", z.imag()}});
    }
  }
  return out;
}

json jacobian_json(const theory::Jacobian& j) {
  return {{"jacobian", {{j.j[0][0], j.j[0][1]}, {j.j[1][0], j.j[1][1]}}},
          {"eigenvalues", eigen_json(j.eigenvalues)},
          {"spectral_norm", j.spectral_norm},
          {"spectral_radius", j.spectral_radius}};
}

std::string fmt(double v) { return format_shortest(v); }

std::string complex_text(const std::complex<double>& z) {
  if (z.imag() == 0.0) return fmt(z.real());
  return fmt(z.real()) + (z.imag() < 0 ? " - " : " + ") + fmt(std::abs(z.imag())) + "i";
}

// "key   value" lines for the readable form.
void print_rows(const std::vector<std::pair<std::string, std::string>>& rows) {
  std::size_t width = 0;
  for (const auto& [k, v] : rows) width = std::max(width, k.size());
  for (const auto& [k, v] : rows) std::cout << k << std::string(width - k.size() + 2, ' ') << v << "\n";
}

void jacobian_rows(std::vector<std::pair<std::string, std::string>>& rows, const theory::Jacobian& j) {
  rows.emplace_back("jacobian", "[[" + fmt(j.j[0][0]) + ", " + fmt(j.j[0][1]) + "], [" + fmt(j.j[1][0]) + ", " +
                                    fmt(j.j[1][1]) + "]]  (rows mu~, nu~; columns mu, nu)");
  rows.emplace_back("eigenvalues", complex_text(j.eigenvalues[0]) + ", " + complex_text(j.eigenvalues[1]));
  rows.emplace_back("spectral_norm", fmt(j.spectral_norm) + (j.spectral_norm < 1 ? "  (a contraction)" : ""));
}

// The options a verb reads must be finite numbers, and its variances positive (bias variance may
// be 0); anything else would come back as a confident "no fixed point" or a NaN.
struct Option {
  const char* name;
  double value;
  enum { any, positive, non_negative } range;
  const char* what = "";  // what the value is, for the message
};

void check_options(std::initializer_list<Option> options) {
  for (const Option& o : options) {
    const std::string given = std::string(o.name) + " " + fmt(o.value);
    if (!std::isfinite(o.value)) throw UsageError(given + " is not a finite number; give a real value");
    if (o.range == Option::positive && !(o.value > 0)) throw UsageError(given + ": must be > 0 (" + o.what + ")");
    if (o.range == Option::non_negative && !(o.value >= 0)) {
      throw UsageError(given + ": must be >= 0 (" + o.what + ")");
    }
  }
}

void check_verb_options(const TheoryArgs& a) {
  const std::string& v = a.verb;
  if (v == "map" || v == "jacobian" || v == "fixed-point") {
    check_options({{"--mu", a.mu, Option::any},
                   {"--omega", a.omega, Option::any},
                   {"--nu", a.nu, Option::positive, "a variance"},
                   {"--tau", a.tau, Option::positive, "the sum of the squared weights"}});
  } else if (v == "solve") {
    check_options({{"--mean", a.mean, Option::any},
                   {"--var", a.var, Option::positive, "a variance"},
                   {"--omega", a.omega, Option::any},
                   {"--tau", a.tau, Option::positive, "the sum of the squared weights"}});
  } else if (v == "dropout") {
    check_options({{"--mean", a.mean, Option::any}, {"--var", a.var, Option::positive, "a variance"}});
  } else if (v == "depth-scales") {
    check_options({{"--weight-variance", a.weight_variance, Option::positive, "a variance"},
                   {"--bias-variance", a.bias_variance, Option::non_negative, "a variance"}});
  }
}

}  // namespace

int theory_command(const TheoryArgs& args) {
  check_verb_options(args);
  const Activation act = build_activation(args);
  json out{{"activation", io::activation_json(act)}};
  std::vector<std::pair<std::string, std::string>> rows = {{"activation", std::string(activation_name(act))}};
  const std::string& verb = args.verb;

  if (verb == "map" || verb == "jacobian") {
    out["mu_in"] = args.mu;
    out["omega"] = args.omega;
    out["nu_in"] = args.nu;
    out["tau"] = args.tau;
    rows.emplace_back("input", "mu = " + fmt(args.mu) + ", omega = " + fmt(args.omega) + ", nu = " + fmt(args.nu) +
                                   ", tau = " + fmt(args.tau) + "  (z ~ N(mu omega, nu tau))");
    const theory::MapValue g = theory::snn_map(act, args.mu, args.omega, args.nu, args.tau);
    out["mu"] = g.mu;
    out["nu"] = g.nu;
    rows.emplace_back("mu", fmt(g.mu) + "  (E f(z))");
    rows.emplace_back("nu", fmt(g.nu) + "  (Var f(z))");
    if (verb == "jacobian") {
      const theory::Jacobian j = theory::snn_jacobian(act, args.mu, args.omega, args.nu, args.tau);
      out.update(jacobian_json(j));
      jacobian_rows(rows, j);
    }
  } else if (verb == "fixed-point") {
    const theory::FixedPoint fp = theory::snn_fixed_point(act, args.omega, args.tau, args.mu, args.nu);
    out["omega"] = args.omega;
    out["tau"] = args.tau;
    out["found"] = fp.found;
    rows.emplace_back("weights", "omega = " + fmt(args.omega) + ", tau = " + fmt(args.tau));
    if (fp.found) {
      out["mu"] = fp.mu;
      out["nu"] = fp.nu;
      out.update(jacobian_json(fp.jacobian));
      out["stable"] = fp.stable;
      rows.emplace_back("mu", fmt(fp.mu));
      rows.emplace_back("nu", fmt(fp.nu));
      jacobian_rows(rows, fp.jacobian);
    }
    out["note"] = fp.note;
    rows.emplace_back("result", fp.note);
  } else if (verb == "solve") {
    if (activation_name(act) != "selu") throw UsageError("theory solve finds selu's alpha and lambda; drop --activation");
    const theory::SeluSolution s = theory::solve_selu(args.mean, args.var, args.omega, args.tau);
    out = json{{"mean", args.mean}, {"var", args.var}, {"omega", args.omega}, {"tau", args.tau}, {"found", s.found}};
    rows = {{"target", "mean = " + fmt(args.mean) + ", variance = " + fmt(args.var)},
            {"convention", "weights omega = " + fmt(args.omega) + ", tau = " + fmt(args.tau) +
                               (args.omega == 0 && args.tau == 1 ? " (normalised, the paper's)" : "")}};
    if (s.found) {
      out["alpha"] = s.alpha;
      out["lambda"] = s.lambda;
      rows.emplace_back("alpha", fmt(s.alpha));
      rows.emplace_back("lambda", fmt(s.lambda));
    }
    out["note"] = s.note;
    rows.emplace_back("result", s.note);
  } else if (verb == "dropout") {
    if (!(args.keep > 0 && args.keep <= 1)) {
      throw UsageError("--keep " + fmt(args.keep) + " must be in (0, 1]: the probability of KEEPING a unit (the "
                       "paper's q; a drop rate p is --keep 1-p)");
    }
    double saturation;
    if (!dropout_saturation(act, saturation)) {
      throw UsageError(std::string(activation_name(act)) + " has no finite limit at -inf for dropped units");
    }
    const theory::DropoutAffine d = theory::alpha_dropout(args.keep, saturation, args.mean, args.var);
    out.update(json{{"keep", args.keep}, {"mean", args.mean}, {"var", args.var}, {"alpha_prime", d.alpha_prime},
                    {"a", d.a}, {"b", d.b}});
    rows.emplace_back("keep", fmt(args.keep) + "  (the paper's q; drop rate " + fmt(1 - args.keep) + ")");
    rows.emplace_back("alpha_prime", fmt(d.alpha_prime) + "  (value of a dropped unit)");
    rows.emplace_back("a", fmt(d.a));
    rows.emplace_back("b", fmt(d.b));
  } else if (verb == "depth-scales") {
    const theory::DepthScales d = theory::depth_scales(act, args.weight_variance, args.bias_variance);
    out.update(json{{"weight_variance", args.weight_variance}, {"bias_variance", args.bias_variance},
                    {"found", d.found}});
    rows.emplace_back("weights", "sigma_w^2 = " + fmt(args.weight_variance) + ", sigma_b^2 = " +
                                     fmt(args.bias_variance));
    if (d.found) {
      out.update(json{{"q_star", d.q_star}, {"slope_q", d.slope_q}, {"chi", d.chi}, {"c_star", d.c_star},
                      {"chi_c", d.chi_c}, {"xi_q", number(d.xi_q)}, {"xi_c", number(d.xi_c)}});
      rows.emplace_back("q_star", fmt(d.q_star));
      rows.emplace_back("chi", fmt(d.chi) + "  (growth of E (dL/dx)^2 per layer backwards)");
      rows.emplace_back("xi_q", std::isfinite(d.xi_q) ? fmt(d.xi_q) : "undefined");
      rows.emplace_back("c_star", fmt(d.c_star));
      rows.emplace_back("xi_c", std::isfinite(d.xi_c) ? fmt(d.xi_c) : "undefined");
    }
    out["note"] = d.note;
    rows.emplace_back("result", d.note);
  } else {
    throw UsageError("unknown theory command '" + verb + "'");
  }
  if (args.json) {
    std::cout << out.dump(2) << std::endl;
  } else {
    print_rows(rows);
  }
  return 0;
}

}  // namespace selfnorm::cli
