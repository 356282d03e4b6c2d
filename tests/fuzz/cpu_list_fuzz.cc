// Fuzz target: ParseCpuList (transport/host_topology.h), the parser of cpu lists such as EPX_CPUS
// ("0,1,2,3,8") and sysfs/taskset ranges ("0-3,8"). An accepted list is ascending, unique and
// non-negative, and round-trips through FormatCpuList in both of its forms.
#include <string_view>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "transport/host_topology.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto cpus = epx::ParseCpuList(text);
  if (!cpus.ok()) {
    FUZZ_CHECK(cpus.status().code() == epx::Code::kInvalidArgument, "{}", cpus.status().ToString());
    return 0;
  }
  for (size_t i = 0; i < cpus->size(); ++i) {
    FUZZ_CHECK((*cpus)[i] >= 0, "cpu {} in '{}'", (*cpus)[i], text);
    if (i > 0) FUZZ_CHECK((*cpus)[i - 1] < (*cpus)[i], "not ascending and unique: '{}'", text);
  }
  FUZZ_CHECK(cpus->empty() || cpus->back() < (1 << 20), "cpu {} in '{}'", cpus->back(), text);
  // Round trips are O(cpus) formatting; a million cpus per input would slow the search down to a crawl.
  if (cpus->size() > (1u << 14)) return 0;
  for (bool ranges : {true, false}) {
    const std::string f = epx::FormatCpuList(*cpus, ranges);
    auto back = epx::ParseCpuList(f);
    FUZZ_CHECK(back.ok() && *back == *cpus, "'{}' -> '{}' does not parse back", text, f);
  }
  return 0;
}
