#include "transport/placement.h"

#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <optional>
#include <string_view>

namespace epx {
namespace {

// One launcher convention: which variables carry what.
struct Convention {
  const char* launcher;
  const char* rank;
  const char* world;
  const char* local_rank;
  const char* local_size;
  const char* job_id;
};

constexpr Convention kConventions[] = {
    {"epx-run", "EPX_RANK", "EPX_WORLD_SIZE", "EPX_LOCAL_RANK", "EPX_LOCAL_SIZE", "EPX_JOB_ID"},
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID"},
    {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
     "OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_MCA_orte_ess_jobid"},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_ID"},
};

// Parses a non-negative int; kInvalidArgument naming the variable otherwise.
StatusOr<int> ParseInt(const char* var, std::string_view v, bool allow_paren_suffix = false) {
  int x = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
  bool tail_ok = p == v.data() + v.size() || (allow_paren_suffix && (*p == '(' || *p == ','));
  if (ec != std::errc() || p == v.data() || !tail_ok || x < 0)
    return EPX_ERROR(kInvalidArgument, "{}='{}': not a non-negative integer", var, v);
  return x;
}

// Reads an int variable: EPX override first (if given), then the convention's name.
StatusOr<std::optional<int>> ReadInt(const EnvFn& env, const char* override_var, const char* var) {
  for (const char* name : {override_var, var}) {
    if (name == nullptr) continue;
    if (const char* v = env(name)) {
      // SLURM_TASKS_PER_NODE looks like "4(x2)" or "4,3"; the leading count is what we need.
      EPX_ASSIGN_OR_RETURN(int x, ParseInt(name, v, std::string_view(name) == "SLURM_TASKS_PER_NODE"));
      return std::optional<int>(x);
    }
  }
  return std::optional<int>();
}

}  // namespace

EnvFn ProcessEnv() {
  return [](const char* name) -> const char* { return std::getenv(name); };
}

std::string Placement::ToString() const {
  return fmt::format("rank {}/{} (node {}/{}, local {}/{}) master {}:{} job '{}' via {}{}", rank, world_size,
                     node, num_nodes, local_rank, local_size, master_addr, master_port, job_id, launcher,
                     restart_count > 0 ? fmt::format(", restart {}", restart_count) : std::string());
}

StatusOr<Placement> PlacementFromEnv(const EnvFn& env) {
  Placement p;
  const Convention* conv = nullptr;
  for (const auto& c : kConventions) {
    if (env(c.rank) != nullptr || env(c.world) != nullptr) {
      conv = &c;
      break;
    }
  }
  p.launcher = conv ? conv->launcher : "single";
  const bool is_epx = conv == &kConventions[0];
  auto ovr = [&](const char* epx_name) { return is_epx ? nullptr : epx_name; };

  // Each value: EPX_* override if set, else the launcher's variable.
  const char* rank_var = conv ? conv->rank : nullptr;
  const char* world_var = conv ? conv->world : nullptr;
  EPX_ASSIGN_OR_RETURN(auto rank, ReadInt(env, ovr("EPX_RANK"), rank_var));
  EPX_ASSIGN_OR_RETURN(auto world, ReadInt(env, ovr("EPX_WORLD_SIZE"), world_var));
  EPX_ASSIGN_OR_RETURN(auto local_rank, ReadInt(env, ovr("EPX_LOCAL_RANK"), conv ? conv->local_rank : nullptr));
  const char* local_size_var = conv ? conv->local_size : nullptr;
  if (conv == &kConventions[3] && env("SLURM_NTASKS_PER_NODE") == nullptr) local_size_var = "SLURM_TASKS_PER_NODE";
  EPX_ASSIGN_OR_RETURN(auto local_size, ReadInt(env, ovr("EPX_LOCAL_SIZE"), local_size_var));
  // Ranks per host as the launcher sees it (before EPX_LOCAL_SIZE splits hosts into logical nodes).
  EPX_ASSIGN_OR_RETURN(auto host_size, ReadInt(env, nullptr, local_size_var));

  if (conv != nullptr && (!rank || !world))
    return EPX_ERROR(kInvalidArgument, "{} launch detected but {} or {} is missing", p.launcher, rank_var, world_var);
  p.rank = rank.value_or(0);
  p.world_size = world.value_or(1);
  p.local_size = local_size.value_or(p.world_size);
  if (p.world_size < 1) return EPX_ERROR(kInvalidArgument, "{}={}: world size must be >= 1", world_var, p.world_size);
  if (p.rank >= p.world_size)
    return EPX_ERROR(kInvalidArgument, "rank {} is not below world size {} ({} launch)", p.rank, p.world_size,
                     p.launcher);
  if (p.local_size < 1 || p.world_size % p.local_size != 0)
    return EPX_ERROR(kInvalidArgument, "world size {} is not divisible by local size {} ({} launch)",
                     p.world_size, p.local_size, p.launcher);
  p.node = p.rank / p.local_size;
  p.num_nodes = p.world_size / p.local_size;
  // rank = node*L + local is the model; a launcher that numbers ranks differently (e.g. cyclic
  // placement under Slurm --distribution=cyclic) would put "node-local" peers on other hosts.
  // A launcher's local rank counts ranks on the host; with EPX_LOCAL_SIZE splitting a host into
  // several logical nodes it is only equal to the node-local index modulo L.
  const int expected_local = p.rank % p.local_size;
  if (local_rank && *local_rank % p.local_size != expected_local)
    return EPX_ERROR(kInvalidArgument,
                     "local rank {} does not match rank {} with {} ranks per node (expected {}): epx needs block "
                     "placement, rank = node*L + local",
                     *local_rank, p.rank, p.local_size, expected_local);
  p.local_rank = expected_local;

  if (const char* a = env("EPX_MASTER_ADDR")) p.master_addr = a;
  else if (const char* a = env("MASTER_ADDR")) p.master_addr = a;
  // Several hosts and no address: guessing would hang on connect, so say what is missing.
  else if (conv != nullptr && conv != &kConventions[0] && host_size.value_or(p.world_size) < p.world_size)
    return EPX_ERROR(kInvalidArgument, "{} launch over {} nodes: set EPX_MASTER_ADDR (host of rank 0)", p.launcher,
                     p.num_nodes);
  if (p.master_addr.empty()) return EPX_ERROR(kInvalidArgument, "master address is empty");

  EPX_ASSIGN_OR_RETURN(auto port, ReadInt(env, "EPX_MASTER_PORT", "MASTER_PORT"));
  if (port) {
    p.master_port = *port;
  } else if (p.launcher == "slurm" && env("SLURM_JOB_ID")) {
    EPX_ASSIGN_OR_RETURN(int job, ParseInt("SLURM_JOB_ID", env("SLURM_JOB_ID")));
    p.master_port = 29500 + job % 1000;
  }
  if (p.master_port < 1 || p.master_port > 65535)
    return EPX_ERROR(kInvalidArgument, "master port {} is not in 1..65535", p.master_port);

  EPX_ASSIGN_OR_RETURN(auto restarts, ReadInt(env, "EPX_RESTART_COUNT", nullptr));
  p.restart_count = restarts.value_or(0);

  // An empty job id counts as unset (as in epx-run): it names the heap sockets and keys the bootstrap
  // hello, so '' would make every job that sets it empty the same job.
  auto nonempty = [&](const char* name) -> const char* {
    const char* v = name != nullptr ? env(name) : nullptr;
    return v != nullptr && *v != '\0' ? v : nullptr;
  };
  if (const char* j = nonempty("EPX_JOB_ID")) {
    p.job_id = j;
  } else if (const char* lj = nonempty(conv ? conv->job_id : nullptr)) {
    p.job_id = lj;
  } else if (p.world_size == 1) {
    p.job_id = fmt::format("single-{}", ::getpid());
  } else {
    p.job_id = fmt::format("{}-{}", p.master_addr, p.master_port);  // equal on all ranks of the job
  }
  return p;
}

}  // namespace epx
