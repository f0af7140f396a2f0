// Config parsing: defaults, the activation list, and the exact error messages users see.
#include <catch2/catch.hpp>

#include <string>

#include "config_helpers.hpp"
#include "io/config.hpp"

using namespace selfnorm;
using namespace selfnorm::io;

namespace {

Experiment parse(const std::string& text) { return parse_experiment(text, "test.json", "test"); }

// All issue lines of a config that must fail.
std::vector<std::string> problems(const std::string& text) {
  return test::config_problems(text, "test.json", "test");
}

}  // namespace

TEST_CASE("an empty config gets every default", "[config]") {
  const Experiment ex = parse("{}");
  REQUIRE(ex.points.size() == 1);
  const PointSpec& s = ex.points[0].spec;
  CHECK(ex.name == "test");
  CHECK(ex.seed == 0);
  CHECK(s.network.depth() == 64);
  CHECK(s.network.widths.front() == 512);
  CHECK(activation_name(s.activation) == "selu");
  CHECK(s.init.kind == InitKind::lecun_normal);
  CHECK(s.precision == Precision::float32);
  CHECK(s.monte_carlo.trials == 8);
  CHECK(s.monte_carlo.batch == 256);
  CHECK(ex.varied.empty());
  // The resolved config spells out every default.
  CHECK(ex.resolved.at("activation").at("alpha").get<double>() == kSeluAlpha01);
  CHECK(ex.resolved.at("init").at("weight_variance").get<double>() == 1.0);
  CHECK(ex.resolved.at("monte_carlo").at("weight_gradients").get<bool>() == false);
}

TEST_CASE("a list of activations makes one point each", "[config]") {
  const Experiment ex = parse(R"({"activation": ["relu", {"name": "elu", "alpha": 0.5}, "selu"],
                                  "network": {"depth": 3, "widths": [4, 5, 6, 7]}})");
  REQUIRE(ex.points.size() == 3);
  CHECK(activation_name(ex.points[1].spec.activation) == "elu");
  CHECK(std::get<Elu>(ex.points[1].spec.activation).alpha == 0.5);
  CHECK(ex.points[2].spec.network.widths == std::vector<std::int64_t>{4, 5, 6, 7});
  // Datasets: the activation's name and every parameter that is not the same everywhere.
  REQUIRE(ex.varied.size() == 3);
  CHECK(ex.varied[0].dataset == "activation");
  CHECK(ex.varied[1].dataset == "alpha");
  CHECK(ex.varied[2].dataset == "lambda");
  CHECK(ex.points[0].varied_values[1].is_null());  // relu has no alpha
  CHECK(ex.points[1].varied_values[1].get<double>() == 0.5);
  CHECK(ex.grid_shape == std::vector<std::int64_t>{3});
}

TEST_CASE("the config hash covers what changes results and nothing else", "[config]") {
  const Experiment a = parse(R"({"name": "a", "seed": 1, "network": {"depth": 2, "width": 8}})");
  const Experiment b = parse(R"({"name": "b", "seed": 1, "network": {"depth": 2, "width": 8},
                                 "output": {"per_trial": true}})");
  const Experiment c = parse(R"({"name": "a", "seed": 2, "network": {"depth": 2, "width": 8}})");
  const Experiment d = parse(R"({"name": "a", "seed": 1, "network": {"depth": 2, "width": 8},
                                 "activation": {"name": "selu"}})");
  CHECK(a.hash == b.hash);  // name and output do not change the statistics
  CHECK(a.hash != c.hash);
  CHECK(a.hash == d.hash);  // selu's defaults written out or not: the same experiment
  CHECK(with_seed(a, 2).hash == c.hash);
  CHECK(a.hash.size() == 16);
}

TEST_CASE("the device: cpu by default, checked, and in the hash only on the GPU", "[config]") {
  const std::string net = R"("network": {"depth": 2, "width": 8})";
  const Experiment a = parse("{" + net + "}");
  CHECK(a.device.device == Device::cpu);
  CHECK_FALSE(a.device.tf32);
  CHECK(a.resolved.at("device") == "cpu");
  CHECK(a.resolved.at("cuda").at("tf32") == false);
  // On the CPU the CUDA options change nothing, so a CPU result keeps its hash.
  CHECK(parse(R"({"device": "cpu", "cuda": {"tf32": true}, )" + net + "}").hash == a.hash);
  const Experiment g = parse(R"({"device": "cuda", )" + net + "}");
  CHECK(g.device.device == Device::cuda);
  CHECK(g.hash != a.hash);
  const Experiment t = parse(R"({"device": "cuda", "cuda": {"tf32": true}, )" + net + "}");
  CHECK(t.device.tf32);
  CHECK(t.hash != g.hash);
  CHECK(with_device(a, DeviceOptions{Device::cuda, false}).hash == g.hash);
  CHECK(with_device(g, DeviceOptions{}).hash == a.hash);
  CHECK(with_seed(g, 0).hash == g.hash);
  CHECK(parse(t.resolved.dump()).hash == t.hash);  // the resolved config reproduces it
  CHECK(problems(R"({"device": "tpu"})") ==
        std::vector<std::string>{"device: unknown value 'tpu'; did you mean 'cpu'? (valid: cpu, cuda)"});
  CHECK(problems(R"({"device": "gpu", "cuda": true})") ==
        std::vector<std::string>{"device: unknown value 'gpu'; did you mean 'cuda'? (valid: cpu, cuda)",
                                 "cuda: must be an object {...} with keys tf32, got a boolean true"});
}

TEST_CASE("config errors: every problem at once, with its path and a remedy", "[config][errors]") {
  const auto p = problems(R"({"netwrok": {}, "precision": "float16",
      "activation": {"name": "celu", "alpha": 0},
      "init": {"name": "lecun_normall", "weight_variance": -1},
      "monte_carlo": {"trials": 0, "batch": "many"}, "input": {"variance": -1}})");
  const std::vector<std::string> expected = {
      "netwrok: unknown key; did you mean 'network'? (valid keys: name, description, seed, precision, network, "
      "activation, init, input, alpha_dropout, monte_carlo, output, sweep, device, cuda)",
      "precision: unknown value 'float16'; did you mean 'float32'? (valid: float32, float64)",
      "activation.alpha: must be > 0 (celu computes exp(x / alpha); as alpha -> 0 it tends to relu, so use \"relu\" "
      "for that limit), got 0",
      "init.name: unknown value 'lecun_normall'; did you mean 'lecun_normal'? (valid: lecun_normal, lecun_uniform, "
      "he_normal, glorot_normal, orthogonal, truncated_normal)",
      "init.weight_variance: must be > 0, got -1",
      "input.variance: must be >= 0, got -1",
      "monte_carlo.trials: must be an integer >= 1, got 0",
      "monte_carlo.batch: must be an integer >= 1, got a string \"many\"",
  };
  CHECK(p == expected);
}

TEST_CASE("config errors: sizes, widths and the activation list", "[config][errors]") {
  CHECK(problems(R"({"network": {"depth": 0, "width": -3, "widht": 4}})") ==
        std::vector<std::string>{"network.widht: unknown key; did you mean 'width'? (valid keys: depth, width, widths)",
                                 "network.depth: must be an integer >= 1, got 0",
                                 "network.width: must be an integer >= 1, got -3"});
  CHECK(problems(R"({"network": {"depth": 3, "widths": [4, 5]}})") ==
        std::vector<std::string>{"network.widths: has 2 entries but depth is 3; widths lists the input width and then "
                                 "one width per layer, so it needs depth + 1 = 4 entries"});
  // A widths list alone is held to the same largest depth as 'depth' (it used to escape it).
  std::string widths = "[4";
  for (int i = 0; i < 100001; ++i) widths += ", 4";
  CHECK(problems(R"({"network": {"widths": )" + widths + "]}}") ==
        std::vector<std::string>{"network.widths: has 100002 entries, a depth of 100001; the largest depth is 100000"});
  CHECK(problems(R"({"network": {"width": 64.5}})") ==
        std::vector<std::string>{"network.width: must be an integer >= 1, got 64.5"});
  CHECK(problems(R"({"activation": [{"name": "selu", "alfa": 1}, {"name": "relu", "alpha": 2}, "sofplus"]})") ==
        std::vector<std::string>{
            "activation[0].alfa: is not a parameter of selu; did you mean 'alpha'? (its parameters: alpha, lambda)",
            "activation[1].alpha: is not a parameter of relu, which has none",
            "activation[2].name: unknown value 'sofplus'; did you mean 'softplus'? (valid: relu, relu6, leaky_relu, "
            "softplus, elu, selu, celu, tanh, sigmoid, gelu, silu, swish, identity)"});
  CHECK(problems(R"({"activation": []})") ==
        std::vector<std::string>{"activation: empty list; give at least one activation"});
  CHECK(problems(R"({"activation": {"alpha": 1}})") ==
        std::vector<std::string>{"activation.name: missing; choose one of relu, relu6, leaky_relu, softplus, elu, selu, "
                                 "celu, tanh, sigmoid, gelu, silu, swish, identity"});
}

TEST_CASE("config errors: malformed JSON, duplicates, types", "[config][errors]") {
  CHECK(problems("{\"network\": {\"depth\": 3,\n  \"width\": 4,,}}") ==
        std::vector<std::string>{"malformed JSON at line 2, column 14: syntax error while parsing object key - "
                                 "unexpected ','; expected string literal"});
  CHECK(problems(R"({"seed": 1, "network": {"depth": 2, "depth": 3}})") ==
        std::vector<std::string>{"network.depth: duplicate key: it appears twice in the same object, and only the "
                                 "last value would count; remove one"});
  CHECK(problems("[1, 2]") ==
        std::vector<std::string>{"the config must be a JSON object {...} whose keys are sections such as \"network\" "
                                 "and \"activation\", got a list [1,2]; write {} to run every default"});
  CHECK(problems(R"({"network": 5})") ==
        std::vector<std::string>{"network: must be an object {...} with keys depth, width, widths, got an integer 5"});
  CHECK(problems(R"({"init": "he_normal", "alpha_dropout": 0.9})") ==
        std::vector<std::string>{"init: must be an object {...} with keys name, weight_mean, weight_variance, "
                                 "bias_mean, bias_variance, got a string \"he_normal\"; write {\"name\": \"he_normal\"}",
                                 "alpha_dropout: must be an object {...} with keys keep_probability, "
                                 "fixed_point_mean, fixed_point_variance, got a number 0.9; write "
                                 "{\"keep_probability\": 0.9}"});
  CHECK(problems(R"({"monte_carlo": {"weight_gradients": "yes"}})") ==
        std::vector<std::string>{"monte_carlo.weight_gradients: must be true or false, got a string \"yes\""});
  CHECK(problems(R"({"seed": -1})") == std::vector<std::string>{"seed: must be an integer >= 0, got -1"});
  CHECK(problems(R"({"init": {"weight_mean": 1e400}})") ==
        std::vector<std::string>{"init.weight_mean: the number 1e400 at line 1, column 26 is out of range (beyond the "
                                 "largest double, about 1.8e308); write a finite number such as 1.5"});
  // The place is the number's, not that of the same characters earlier in a string.
  CHECK(problems("{\"description\": \"above 1e400\",\n \"init\": {\"weight_mean\": 1e400}}") ==
        std::vector<std::string>{"init.weight_mean: the number 1e400 at line 2, column 26 is out of range (beyond the "
                                 "largest double, about 1.8e308); write a finite number such as 1.5"});
}

TEST_CASE("config errors: NaN, Infinity and the usual JSON slips are named where they are", "[config][errors]") {
  CHECK(problems("{\"network\": {\"depth\": 3},\n \"init\": {\"weight_variance\": NaN}}") ==
        std::vector<std::string>{"init.weight_variance: NaN at line 2, column 30 is not a number (JSON has no NaN or "
                                 "Infinity, and every parameter must be finite); write a finite number such as 1.5"});
  CHECK(problems(R"({"input": {"mean": -Infinity}})") ==
        std::vector<std::string>{"input.mean: -Infinity at line 1, column 20 is not a number (JSON has no NaN or "
                                 "Infinity, and every parameter must be finite); write a finite number such as 1.5"});
  CHECK(problems(R"({"input": {"variance": "inf"}})") ==
        std::vector<std::string>{"input.variance: must be a number >= 0, got a string \"inf\"; JSON has no NaN or "
                                 "Infinity, and every parameter must be finite"});
  CHECK(problems(R"({"network": {"depth": "8"}})") ==
        std::vector<std::string>{"network.depth: must be an integer >= 1, got a string \"8\"; write the number "
                                 "without quotes"});
  CHECK(problems("") == std::vector<std::string>{"the file is empty (a config is a JSON object); write {} to run every "
                                                 "default, or see configs/README.md"});
  CHECK(problems(R"({"seed": 1,})") ==
        std::vector<std::string>{"malformed JSON at line 1, column 12: syntax error while parsing object key - "
                                 "unexpected '}'; expected string literal; a comma before '}' is not allowed in JSON: "
                                 "remove it"});
  CHECK(problems("{\"seed\": 1 // the usual\n}")[0].find("JSON has no comments") != std::string::npos);
  CHECK(problems("{'seed': 1}")[0].find("double quotes") != std::string::npos);
  // A missing comma: the parser stops at the next value; the hint names where the comma belongs.
  CHECK(problems("{\"seed\": 1,\n \"network\": {\"depth\": 2}\n \"name\": \"x\"}")[0].find(
            "; is a comma missing at the end of line 2?") != std::string::npos);
  CHECK(problems("{\"network\": {\"widths\": [4, 4 4]}}")[0].find("; is a comma missing before it?") !=
        std::string::npos);
  CHECK(problems("{\"network\": {\"widths\": [4, 4}}")[0].find("comma") == std::string::npos);  // a bracket
  CHECK(problems("{\"monte_carlo\": {\"weight_gradients\": False}}")[0].find(
            "; JSON writes true, false and null in lower case") != std::string::npos);
}

TEST_CASE("config errors: text that is not UTF-8 is named where it is, and messages stay printable", "[config][errors]") {
  CHECK(problems("{\"description\": \"caf\xc3\xa9\",\n \"name\": \"caf\xe9\"}") ==
        std::vector<std::string>{"byte 0xE9 at line 2, column 14 is not UTF-8 (the file may be Latin-1 or "
                                 "Windows-1252 text); re-save the file as UTF-8"});
  CHECK(problems(std::string("\xff\xfe{\0}\0", 6)) ==
        std::vector<std::string>{"the file is UTF-16 text (it starts with a UTF-16 byte order mark); save it as UTF-8"});
  CHECK(problems(std::string("{\0}\0", 4)) ==
        std::vector<std::string>{"a NUL byte at line 1, column 2: the file is not UTF-8 text (UTF-16 without a byte "
                                 "order mark, or not a text file at all?); save the config as UTF-8"});
  CHECK(problems(std::string("\x89HDF\r\n\x1a\n\0\0", 10))[0].find("this is an HDF5 file") == 0);
  // A name taken from a file name that is not UTF-8, or that starts with '.': refused, saying where it came from.
  const std::string rule = "a file-name-safe string (1 to 200 characters of UTF-8 text, no '/', '\\' or control "
                           "characters, not starting with '.'), since it names results/<name>.h5";
  CHECK(test::config_problems("{}", "r\xe9s.json", "r\xe9s") ==
        std::vector<std::string>{"name: missing; the name taken from the file name instead, \"r\\xE9s\", is not " +
                                 rule + "; add \"name\": \"...\" to the config"});
  CHECK(test::config_problems("{}", ".hidden.json", ".hidden") ==
        std::vector<std::string>{"name: missing; the name taken from the file name instead, \".hidden\", is not " +
                                 rule + "; add \"name\": \"...\" to the config"});
  CHECK(parse_experiment("{\"name\": \"ok\"}", "r\xe9s.json", "r\xe9s").name == "ok");
  try {
    parse_experiment("{\"seed\": -1}", "r\xe9s\x07.json", "x");
    FAIL("accepted");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).rfind("r\\xE9s\\x07.json: 1 problem in the config\n  seed: ", 0) == 0);
  }
  CHECK(printable("caf\xc3\xa9 \xe9\t\n\x01\x7f\xf0\x9f\x98\x80\xed\xa0\x80") ==
        "caf\xc3\xa9 \\xE9\t\n\\x01\\x7F\xf0\x9f\x98\x80\\xED\\xA0\\x80");
  CHECK(find_invalid_utf8("caf\xc3\xa9") == std::string::npos);
  CHECK(find_invalid_utf8("ab\xc0\x80") == 2);  // an overlong form
  CHECK(find_invalid_utf8("ab\xf4\x90\x80\x80") == 2);  // beyond U+10FFFF
  CHECK(find_invalid_utf8("ab\xe2\x82") == 2);  // cut short
}

TEST_CASE("config errors: absurd nesting and integers beyond int64 are refused, not crashed on", "[config][errors]") {
  // Deep nesting would overflow the stack of the recursive JSON copy and dump.
  const std::string deep = "{\"description\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
  CHECK(problems(deep) == std::vector<std::string>{"description: nested more than 32 levels deep (a config needs at "
                                                   "most 6, as in sweep.grid.<key>.linspace); see configs/README.md "
                                                   "for the layout"});
  // 2^63 as an unsigned integer and as a double: neither fits, both are named.
  CHECK(problems(R"({"seed": 9223372036854775808})") ==
        std::vector<std::string>{"seed: must be at most 9223372036854775807, got 9223372036854775808"});
  CHECK(problems(R"({"seed": 9.223372036854775808e18})") ==
        std::vector<std::string>{"seed: must be at most 9223372036854775807, got 9.223372036854776e+18"});
  CHECK(parse(R"({"seed": 9223372036854775807})").seed == 9223372036854775807ULL);
}

TEST_CASE("config errors: other libraries' names and list entries get specific remedies", "[config][errors]") {
  CHECK(problems(R"({"init": {"name": "kaiming_normal"}})") ==
        std::vector<std::string>{"init.name: unknown value 'kaiming_normal'; did you mean 'he_normal'? (valid: "
                                 "lecun_normal, lecun_uniform, he_normal, glorot_normal, orthogonal, truncated_normal)"});
  CHECK(problems(R"({"activation": ["selu", 5]})") ==
        std::vector<std::string>{"activation[1]: must be an activation name such as \"selu\" or an object {\"name\": "
                                 "\"elu\", \"alpha\": 0.5}, got an integer 5"});
}

TEST_CASE("alpha dropout needs a saturating activation", "[config][errors]") {
  CHECK(problems(R"({"activation": "leaky_relu", "alpha_dropout": {"keep_probability": 0.9}})") ==
        std::vector<std::string>{"alpha_dropout.keep_probability: alpha dropout sets dropped units to f(-inf), which "
                                 "leaky_relu (activation) does not have; use selu, elu, celu or another activation "
                                 "that saturates"});
  CHECK(problems(R"({"alpha_dropout": {"keep_probability": 0}})") ==
        std::vector<std::string>{"alpha_dropout.keep_probability: must be in (0, 1] (the probability of KEEPING a "
                                 "unit, the paper's q), got 0"});
}

TEST_CASE("config_differences names the keys two configs differ in", "[config]") {
  const Experiment a = parse(R"({"name": "a", "seed": 1, "network": {"depth": 2, "width": 8}})");
  const Experiment b = parse(R"({"name": "b", "seed": 2, "network": {"depth": 3, "width": 8},
                                 "output": {"per_trial": true}})");
  CHECK(config_differences(a.resolved, a.resolved).empty());
  CHECK(config_differences(a.resolved, b.resolved) == "network.depth 2 in the file, 3 here; seed 1 in the file, 2 here");
  CHECK(config_differences(a.resolved, b.resolved, 1) == "network.depth 2 in the file, 3 here; and 1 more");
  const Experiment list = parse(R"({"activation": ["selu", "relu"], "network": {"depth": 2, "width": 8}})");
  const Experiment other = parse(R"({"activation": ["selu", "elu"], "network": {"depth": 2, "width": 8}})");
  CHECK(config_differences(list.resolved, other.resolved) ==
        "activation[1].name \"relu\" in the file, \"elu\" here; activation[1].alpha absent in the file, 1.0 here");
  // A value of another kind is shown whole (cut at 60 characters).
  CHECK(config_differences(parse(R"({"activation": "relu", "network": {"depth": 2, "width": 8}})").resolved, list.resolved).rfind(
            "activation {\"name\":\"relu\"} in the file, [{\"name\":\"selu\",", 0) == 0);
}

TEST_CASE("nearest_key suggests only plausible keys", "[config]") {
  const std::vector<std::string> keys = {"depth", "width", "widths"};
  CHECK(nearest_key("widht", keys) == "width");
  CHECK(nearest_key("dpth", keys) == "depth");
  CHECK(nearest_key("colour", keys).empty());
}
