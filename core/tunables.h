// core/tunables.h: the one typed table of epx tunables (EPX_* environment variables).
//
// Each row has a name, type, default, unit, allowed values and a line of documentation. Values are
// read from the environment when asked for (setup time only, never on the data path), parsed with
// units ("64M", "2G", "500ms", "30s") and validated; a bad value is a kInvalidArgument error naming
// the variable, the value and what is accepted. `FormatTunables()` prints the table with effective
// values (what `epx-run --print-config` shows, and what benchmarks dump into their logs).
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "core/status.h"

namespace epx {

enum class TunableType : uint8_t { kInt, kSize, kDuration, kEnum, kString };

struct TunableDef {
  const char* name;     // "EPX_HEAP_SIZE"
  TunableType type;
  const char* def;      // default as text, parsed like an env value
  const char* unit;     // "bytes", "ms", "", ...
  const char* choices;  // kEnum: "a|b|c"; kInt: "min..max"; else ""
  const char* doc;
};

std::span<const TunableDef> AllTunables();
// Row for a name; nullptr if the name is not in the table.
const TunableDef* FindTunable(std::string_view name);

// Typed getters: value from the environment, else the default. Errors name the variable.
StatusOr<int64_t> TunableInt(std::string_view name);       // kInt
StatusOr<uint64_t> TunableSize(std::string_view name);     // kSize, in bytes
StatusOr<int64_t> TunableMs(std::string_view name);        // kDuration, in milliseconds
StatusOr<std::string> TunableStr(std::string_view name);   // kEnum (validated) or kString

// Parsers (exposed for tests): "4096", "64K", "64M", "2G" (binary units); "250ms", "30s", "2m", "1500".
StatusOr<uint64_t> ParseSize(std::string_view text);
StatusOr<int64_t> ParseDurationMs(std::string_view text);
// Inverses: the largest unit that divides the value exactly ("64M", "1536K", "4097"; "30s", "2m",
// "250ms"), so that ParseSize(FormatSize(n)) == n and ParseDurationMs(FormatDurationMs(ms)) == ms.
std::string FormatSize(uint64_t bytes);
std::string FormatDurationMs(int64_t ms);

// Checks one value (as it would come from the environment) against the row `def`: what every
// getter and ValidateTunableEnv() apply. kInvalidArgument names the variable and what is accepted.
Status ValidateTunableValue(const TunableDef& def, std::string_view value);

// Validates every EPX_* variable set in the environment: unknown EPX_ names that look like tunables
// get a warning (typo guard), bad values an error.
Status ValidateTunableEnv();

// Human-readable table: NAME  VALUE  (default|env)  UNIT  DOC.
std::string FormatTunables();

}  // namespace epx
