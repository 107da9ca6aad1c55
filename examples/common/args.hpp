#pragma once
// Command-line parsing shared by the example programs (header-only). Options are declared up
// front; `--name value` and `--name=value` are accepted; unknown options, missing values,
// repeated options and stray positional arguments throw effnet::Error with a message that
// names the option, which the program prints as "error: ...".
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "effnet/error.hpp"

namespace effnet::examples {

// Strict parsers for option values, shared by the programs: the whole text must be a number
// (an integer for parse_int_option) within [lo, hi]; the error names the option, e.g.
// "option '--batch' expects an integer in [1, 65536], got 'x'".
inline long long parse_int_option(const std::string& name, const std::string& text,
                                  long long lo = std::numeric_limits<long long>::min(),
                                  long long hi = std::numeric_limits<long long>::max()) {
    size_t used = 0;
    long long n = 0;
    try {
        n = std::stoll(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    const std::string range =
        lo == std::numeric_limits<long long>::min() && hi == std::numeric_limits<long long>::max()
            ? ""
            : " in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
    EFFNET_CHECK(used == text.size() && used > 0 && n >= lo && n <= hi,
                 "option '--" + name + "' expects an integer" + range + ", got '" + text + "'");
    return n;
}

inline double parse_double_option(const std::string& name, const std::string& text) {
    size_t used = 0;
    double d = 0;
    try {
        d = std::stod(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    EFFNET_CHECK(used == text.size() && used > 0 && std::isfinite(d),
                 "option '--" + name + "' expects a number, got '" + text + "'");
    return d;
}

struct OptionSpec {
    std::string name; // without the leading "--"
    bool takes_value; // false: a flag
    std::string help; // one line for --help; "VALUE: text" names the value
};

class Args {
public:
    Args(int argc, char** argv, std::vector<OptionSpec> specs) : specs_(std::move(specs)) {
        for (int i = 1; i < argc; ++i) {
            std::string arg = argv[i];
            EFFNET_CHECK(arg.size() > 2 && arg.compare(0, 2, "--") == 0,
                         "unexpected argument '" + arg + "' (options start with --; see --help)");
            std::string name = arg.substr(2), value;
            bool inline_value = false;
            const size_t eq = name.find('=');
            if (eq != std::string::npos) {
                value = name.substr(eq + 1);
                name = name.substr(0, eq);
                inline_value = true;
            }
            const OptionSpec* spec = find(name);
            EFFNET_CHECK(spec, "unknown option '--" + name + "' (see --help)");
            EFFNET_CHECK(!values_.count(name), "option '--" + name + "' given twice");
            if (spec->takes_value) {
                if (!inline_value) {
                    EFFNET_CHECK(i + 1 < argc, "option '--" + name + "' needs a value");
                    value = argv[++i];
                }
                EFFNET_CHECK(!value.empty(), "option '--" + name + "' needs a non-empty value");
            } else {
                EFFNET_CHECK(!inline_value, "option '--" + name + "' takes no value");
            }
            values_[name] = value;
        }
    }

    bool has(const std::string& name) const { return values_.count(name) != 0; }

    std::string get(const std::string& name, const std::string& fallback = "") const {
        auto it = values_.find(name);
        return it == values_.end() ? fallback : it->second;
    }

    std::string require(const std::string& name) const {
        EFFNET_CHECK(has(name), "missing required option '--" + name + "' (see --help)");
        return get(name);
    }

    double get_double(const std::string& name, double fallback) const {
        return has(name) ? parse_double_option(name, get(name)) : fallback;
    }

    long get_int(const std::string& name, long fallback) const {
        return has(name) ? long(parse_int_option(name, get(name))) : fallback;
    }

    // "  --name VALUE   help" lines for --help.
    std::string usage() const {
        std::string s;
        for (const OptionSpec& o : specs_) {
            std::string left = "  --" + o.name + (o.takes_value ? " VALUE" : "");
            if (left.size() < 26) left.resize(26, ' ');
            s += left + " " + o.help + "\n";
        }
        return s;
    }

private:
    const OptionSpec* find(const std::string& name) const {
        for (const OptionSpec& o : specs_)
            if (o.name == name) return &o;
        return nullptr;
    }

    std::vector<OptionSpec> specs_;
    std::map<std::string, std::string> values_;
};

} // namespace effnet::examples
