// Fuzz target: PlacementFromEnv (transport/placement.h) over a fuzzed environment, through its lookup
// hook. The input is text, one NAME=VALUE per line (the last line of a name wins), so that seeds are
// readable launcher environments. A placement that is accepted must satisfy the rank model
// (rank = node*L + local, 0 <= rank < R, L divides R, port in 1..65535, non-empty address and job id)
// and every EPX_* override that is set must be what ends up in it.
#include <charconv>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "tests/fuzz/fuzz_util.h"
#include "transport/placement.h"

namespace epx {
namespace {

std::map<std::string, std::string> ParseEnv(std::string_view text) {
  std::map<std::string, std::string> env;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos) continue;
    // What a process environment can hold: nothing after a NUL.
    std::string value(line.substr(eq + 1));
    value.resize(std::char_traits<char>::length(value.c_str()));
    env[std::string(line.substr(0, eq))] = std::move(value);
  }
  return env;
}

std::optional<int> IntOf(const std::map<std::string, std::string>& env, const char* name) {
  auto it = env.find(name);
  if (it == env.end()) return std::nullopt;
  int v = 0;
  const std::string& s = it->second;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

void Check(const std::map<std::string, std::string>& env, const Placement& p) {
  const std::string where = p.ToString();
  FUZZ_CHECK(p.world_size >= 1 && p.rank >= 0 && p.rank < p.world_size, "{}", where);
  FUZZ_CHECK(p.local_size >= 1 && p.world_size % p.local_size == 0, "{}", where);
  FUZZ_CHECK(p.num_nodes * p.local_size == p.world_size, "{}", where);
  FUZZ_CHECK(p.node == p.rank / p.local_size && p.local_rank == p.rank % p.local_size, "{}", where);
  FUZZ_CHECK(p.RankOf(p.node, p.local_rank) == p.rank, "{}", where);
  FUZZ_CHECK(p.master_port >= 1 && p.master_port <= 65535, "{}", where);
  FUZZ_CHECK(!p.master_addr.empty(), "{}", where);
  // The job id names sockets and separates jobs: an empty one would make every such job the same.
  FUZZ_CHECK(!p.job_id.empty(), "{}", where);
  if (auto v = IntOf(env, "EPX_RANK")) FUZZ_CHECK(p.rank == *v, "EPX_RANK={} ignored: {}", *v, where);
  if (auto v = IntOf(env, "EPX_WORLD_SIZE"))
    FUZZ_CHECK(p.world_size == *v, "EPX_WORLD_SIZE={}: {}", *v, where);
  if (auto v = IntOf(env, "EPX_LOCAL_SIZE"))
    FUZZ_CHECK(p.local_size == *v, "EPX_LOCAL_SIZE={}: {}", *v, where);
  if (auto v = IntOf(env, "EPX_MASTER_PORT"))
    FUZZ_CHECK(p.master_port == *v, "EPX_MASTER_PORT={}: {}", *v, where);
  if (auto it = env.find("EPX_MASTER_ADDR"); it != env.end())
    FUZZ_CHECK(p.master_addr == it->second, "EPX_MASTER_ADDR='{}': {}", it->second, where);
  if (auto it = env.find("EPX_JOB_ID"); it != env.end() && !it->second.empty())
    FUZZ_CHECK(p.job_id == it->second, "EPX_JOB_ID='{}': {}", it->second, where);
}

}  // namespace
}  // namespace epx

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto env = epx::ParseEnv(std::string_view(reinterpret_cast<const char*>(data), size));
  auto lookup = [&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  auto p = epx::PlacementFromEnv(lookup);
  if (!p.ok()) {
    FUZZ_CHECK(p.status().code() == epx::Code::kInvalidArgument, "{}", p.status().ToString());
    return 0;
  }
  epx::Check(env, *p);
  // Deterministic: the same environment gives the same placement (ranks must all agree on it).
  auto again = epx::PlacementFromEnv(lookup);
  FUZZ_CHECK(again.ok() && again->ToString() == p->ToString(), "{}", p->ToString());
  return 0;
}
